"""The minimal loop written with flax.nnx: the model as a Module, its optimizer from optax (python
docs/next_steps_flax.py). The data is docs/minimal_loop.py's, imported. docs/10-next-steps.md reads it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from minimal_loop import BATCH, load  # docs/, this file's folder, is on sys.path

LR, EPOCHS = 0.001, 1  # Adam at its usual learning rate, one epoch


class MLP(nnx.Module):  # the recipe's network: 784-512-512-10, ReLU, every weight and bias ~ N(0, 0.01²)
    def __init__(self, rngs, sizes=(784, 512, 512, 10)):
        normal = nnx.initializers.normal(0.01)
        self.layers = nnx.List([nnx.Linear(m, n, kernel_init=normal, bias_init=normal, rngs=rngs)
                                for m, n in zip(sizes[:-1], sizes[1:])])

    def __call__(self, images):  # a batch (B, 784) -> logits (B, 10): nnx.Linear works on batches as they are
        for layer in self.layers[:-1]:
            images = jax.nn.relu(layer(images))
        return self.layers[-1](images)


def loss(model, images, labels):  # optax's cross-entropy (from logits), / 10 as in the recipe
    return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean() / 10


@nnx.jit
def update(model, optimizer, images, labels):
    grads = nnx.grad(loss)(model, images, labels)  # a State shaped like the model's parameters
    optimizer.update(model, grads)  # changes the model in place: nnx objects are mutable


if __name__ == "__main__":
    (images, labels), (test_images, test_labels) = load("train"), load("t10k")
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
    order_key = jax.random.key(1)
    for epoch in range(EPOCHS):
        order_key, shuffle_key = jax.random.split(order_key)
        order = np.asarray(jax.random.permutation(shuffle_key, len(images)))
        for i in range(0, len(order), BATCH):
            update(model, optimizer, images[order[i:i + BATCH]], labels[order[i:i + BATCH]])
        guess = jnp.argmax(model(test_images), axis=1)
        print(f"epoch {epoch + 1}: test accuracy {np.mean(np.asarray(guess) == test_labels):.4f}")
