"""The whole idea in about 30 lines: an MLP learns MNIST in plain JAX (python docs/minimal_loop.py).

Deliberately self-contained: the repository's own model is train_utils.py, and mlp_mnist.py adds
the rest (docs/01-model-and-loss.md says what, and why). tests/test_minimal_loop.py runs this file.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import mnist_data  # noqa: E402  the IDX reader: ./data, or $MNIST_DATA_DIR (a first run downloads MNIST)

LR, EPOCHS, BATCH = 0.1, 3, 128  # plain SGD at the learning rate chapter 6 chose on validation data


def init(key, sizes=(784, 512, 512, 10)):
    keys = jax.random.split(key, 2 * (len(sizes) - 1))  # a fresh key for every draw: never reuse one
    return [(0.01 * jax.random.normal(kw, (m, n)), 0.01 * jax.random.normal(kb, (n,)))
            for kw, kb, m, n in zip(keys[::2], keys[1::2], sizes[:-1], sizes[1:])]


def predict(params, image):  # ONE image (784,) -> log-probabilities (10,)
    for w, b in params[:-1]:
        image = jnp.maximum(image @ w + b, 0.0)
    logits = image @ params[-1][0] + params[-1][1]
    return logits - jax.nn.logsumexp(logits)


batched_predict = jax.vmap(predict, in_axes=(None, 0))  # params shared (None), images mapped over axis 0


def loss(params, images, labels):  # cross-entropy / 10, the recipe's loss
    return -jnp.mean(batched_predict(params, images) * jax.nn.one_hot(labels, 10))


@jax.jit
def update(params, images, labels):
    grads = jax.grad(loss)(params, images, labels)
    return jax.tree.map(lambda p, g: p - LR * g, params, grads)


if __name__ == "__main__":
    train, _, test = mnist_data.load_mnist(mnist_data.default_data_dir())
    images, labels = train.data.numpy().reshape(-1, 784).astype(np.float32), train.targets.numpy()
    init_key, key = jax.random.split(jax.random.key(0))
    params = init(init_key)
    for epoch in range(EPOCHS):
        key, shuffle_key = jax.random.split(key)
        order = np.asarray(jax.random.permutation(shuffle_key, len(images)))
        for i in range(0, len(order), BATCH):
            params = update(params, images[order[i:i + BATCH]], labels[order[i:i + BATCH]])
        guess = jnp.argmax(batched_predict(params, test.data.numpy().reshape(-1, 784).astype(np.float32)), axis=1)
        print(f"epoch {epoch + 1}: test accuracy {np.mean(np.asarray(guess) == test.targets.numpy()):.4f}")
