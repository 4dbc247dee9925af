"""The whole idea in about 30 lines of JAX, and a 10-line IDX reader: an MLP learns MNIST (python docs/minimal_loop.py).

Self-contained: JAX, NumPy and the standard library, nothing else. It reads the four gzipped IDX files from
$MNIST_DATA_DIR, else ./data, or from MNIST/raw/ inside it, where the first run of mlp_mnist.py downloads them.
The repository's own model is train_utils.py, and mlp_mnist.py adds the rest (docs/01-model-and-loss.md
says what, and why). tests/test_minimal_loop.py runs this file.
"""
import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np

LR, EPOCHS, BATCH = 0.1, 3, 128  # plain SGD at the learning rate chapter 6 chose on validation data
DATA = os.environ.get("MNIST_DATA_DIR") or "data"  # the folder mlp_mnist.py reads, as it finds it


def read_idx(name):  # an IDX file: a 4-byte magic number, one 4-byte size per axis (big-endian), the bytes
    paths = [os.path.join(DATA, name + ".gz"), os.path.join(DATA, "MNIST", "raw", name + ".gz")]
    with gzip.open(next(filter(os.path.exists, paths), paths[0])) as f:  # neither there: the error names the first
        raw = f.read()
    ndim = raw[3]  # the magic's last byte is the number of axes: 3 for images (N, 28, 28), 1 for labels (N,)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(np.frombuffer(raw, ">u4", ndim, offset=4))


def load(split):  # "train" or "t10k" -> images (N, 784) float32, raw pixels 0-255 (no normalisation), labels (N,)
    images = read_idx(f"{split}-images-idx3-ubyte").reshape(-1, 784).astype(np.float32)
    return images, read_idx(f"{split}-labels-idx1-ubyte")


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
    # LR = 0.1 is right for this scale only: without the /10, at this LR on raw 0-255 pixels, the loss passes 1000
    # within 5 steps and is NaN within 100, long before the epoch's end (then every guess is 0: test accuracy 9.8%).
    return -jnp.mean(jnp.sum(batched_predict(params, images) * jax.nn.one_hot(labels, 10), axis=1)) / 10


@jax.jit
def update(params, images, labels):
    grads = jax.grad(loss)(params, images, labels)
    return jax.tree.map(lambda p, g: p - LR * g, params, grads)


if __name__ == "__main__":
    (images, labels), (test_images, test_labels) = load("train"), load("t10k")
    init_key, key = jax.random.split(jax.random.key(0))
    params = init(init_key)
    for epoch in range(EPOCHS):
        key, shuffle_key = jax.random.split(key)
        order = np.asarray(jax.random.permutation(shuffle_key, len(images)))
        for i in range(0, len(order), BATCH):
            params = update(params, images[order[i:i + BATCH]], labels[order[i:i + BATCH]])
        guess = jnp.argmax(batched_predict(params, test_images), axis=1)
        print(f"epoch {epoch + 1}: test accuracy {np.mean(np.asarray(guess) == test_labels):.4f}")
