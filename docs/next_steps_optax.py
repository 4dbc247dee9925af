"""The minimal loop with its optimizer from optax, Adam here (python docs/next_steps_optax.py).

The model, the loss and the data are docs/minimal_loop.py's, imported; only the update changes.
docs/10-next-steps.md reads it; tests/test_next_steps.py checks one step against optimized_sgd.adam.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from minimal_loop import BATCH, batched_predict, init, load, loss  # docs/, this file's folder, is on sys.path

LR, EPOCHS = 0.001, 1  # Adam at its usual learning rate, one epoch
optimizer = optax.adam(LR)  # a GradientTransformation: a pair of pure functions, init and update


@jax.jit
def update(params, opt_state, images, labels):
    grads = jax.grad(loss)(params, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)  # Adam's moments live in opt_state
    return optax.apply_updates(params, updates), opt_state  # params + updates, leaf by leaf


if __name__ == "__main__":
    (images, labels), (test_images, test_labels) = load("train"), load("t10k")
    init_key, key = jax.random.split(jax.random.key(0))
    params = init(init_key)
    opt_state = optimizer.init(params)
    for epoch in range(EPOCHS):
        key, shuffle_key = jax.random.split(key)
        order = np.asarray(jax.random.permutation(shuffle_key, len(images)))
        for i in range(0, len(order), BATCH):
            params, opt_state = update(params, opt_state, images[order[i:i + BATCH]], labels[order[i:i + BATCH]])
        guess = jnp.argmax(batched_predict(params, test_images), axis=1)
        print(f"epoch {epoch + 1}: test accuracy {np.mean(np.asarray(guess) == test_labels):.4f}")
