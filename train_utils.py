"""The model, its loss and plain SGD: pure functions over a params pytree.

params is a list of (w, b) pairs, one per layer: w: (n_in, n_out), b: (n_out,).
The model is written for ONE image, and jax.vmap makes it work on a batch: that is the JAX way
(docs/01-model-and-loss.md). A batch is a pair (inputs, targets): inputs (B, 784) float32 raw
pixel values 0-255, targets (B, 10) one-hot.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

LAYER_SIZES = (784, 512, 512, 10)  # 28*28 pixels -> two hidden layers -> 10 digit classes
INIT_SCALE = 0.01  # weights and biases ~ N(0, 0.01^2), as in JAX's MNIST tutorial


def relu(x):
    """Elementwise max(x, 0); any shape."""
    return jnp.maximum(x, 0.0)


def log_softmax(logits):
    """logits (C,) -> log-probabilities (C,), computed as logits - logsumexp(logits) (any leading axes too)."""
    return logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)


def init_params(key, sizes=LAYER_SIZES, scale=INIT_SCALE):
    """A PRNG key -> [(w (n_in, n_out), b (n_out,)), ...], all ~ N(0, scale^2).

    The key is split, never reused: one new key per layer, then one for w and one for b.
    """
    layer_keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for layer_key, n_in, n_out in zip(layer_keys, sizes[:-1], sizes[1:]):
        w_key, b_key = jax.random.split(layer_key)
        params.append((scale * jax.random.normal(w_key, (n_in, n_out)),
                       scale * jax.random.normal(b_key, (n_out,))))
    return params


def layer_inputs(params, image):
    """One image (784,) -> what each layer receives: [image (784,), h1 (512,), h2 (512,)], h1 and h2 the
    ReLU outputs of the hidden layers."""
    received = [image]
    for w, b in params[:-1]:
        received.append(relu(received[-1] @ w + b))  # (n_out,)
    return received


def predict(params, image):
    """One image (784,) -> its log-probabilities (10,). ReLU between the layers, log-softmax on top."""
    w, b = params[-1]
    return log_softmax(layer_inputs(params, image)[-1] @ w + b)


# The same functions for a batch: jax.vmap maps them over axis 0 of the images; in_axes=None means the
# params are not mapped over but shared by every image. Written for one, mapped for many.
batched_layer_inputs = jax.vmap(layer_inputs, in_axes=(None, 0))  # inputs (B, 784) -> [(B, 784), (B, 512), (B, 512)]
batched_predict = jax.vmap(predict, in_axes=(None, 0))  # inputs (B, 784) -> log-probabilities (B, 10)


def loss(params, batch):
    """Mean over the batch AND the 10 classes of -onehot * log p: cross-entropy / 10.

    This is the loss of JAX's "training a simple neural network, with PyTorch data
    loading" tutorial. The extra 1/10 shrinks every gradient tenfold, which is why the
    learning rates in this repository look ten times larger than usual for SGD.
    """
    inputs, targets = batch
    return -jnp.mean(batched_predict(params, inputs) * targets)


def predicted_class(params, inputs):
    """inputs (B, 784) -> the most likely digit (B,) int32."""
    return jnp.argmax(batched_predict(params, inputs), axis=1)


def inputs_from_uint8(images):
    """uint8 images (B, 28, 28) -> inputs (B, 784) float32, the raw pixel values 0-255 (no normalisation)."""
    return images.reshape(images.shape[0], -1).astype(jnp.float32)


def batch_from_uint8(images, labels):
    """uint8 images (B, 28, 28), int labels (B,) -> batch (inputs (B, 784) float32 0-255, one-hot (B, 10))."""
    return inputs_from_uint8(images), jax.nn.one_hot(labels, LAYER_SIZES[-1], dtype=jnp.float32)


# --- Optimizers -------------------------------------------------------------------------
# An optimizer is a NamedTuple of three pure functions over params pytrees:
#   init(params) -> state
#   update(grads, state, params) -> (new_params, new_state)
#   grad_point(params, state) -> the point at which the training step evaluates the
#                                gradient (params itself, except for Nesterov's look-ahead)
# Its hyperparameters (lr, mu, ...) are the factory's arguments: Python floats, or arrays,
# which is how mlp_mnist.py passes them, so that one compiled program serves every value.
# Plain SGD lives here; momentum, Nesterov, RMSProp and Adam live in optimized_sgd.py.


class Optimizer(NamedTuple):
    init: Callable
    update: Callable
    grad_point: Callable


def at_params(params, state):
    """The usual gradient point: the current parameters themselves."""
    return params


class SGDState(NamedTuple):
    """Plain SGD keeps no state."""


def sgd(lr):
    """Plain gradient descent: theta <- theta - lr * g."""

    def init(params):
        return SGDState()

    def update(grads, state, params):
        new_params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        return new_params, state

    return Optimizer(init, update, at_params)
