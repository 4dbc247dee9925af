"""The model, its loss and plain SGD: pure functions over a params pytree.

params is a list of (w, b) pairs, one per layer: w: (n_in, n_out), b: (n_out,).
A batch is a pair (inputs, targets): inputs (B, 784) float32 raw pixel values 0-255,
targets (B, 10) one-hot.
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
    """logits: (B, C) -> log-probabilities (B, C), computed as logits - logsumexp(logits)."""
    return logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)


def init_params(key, sizes=LAYER_SIZES, scale=INIT_SCALE):
    """One PRNG key per layer -> [(w (n_in, n_out), b (n_out,)), ...], all ~ N(0, scale^2)."""
    layer_keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for layer_key, n_in, n_out in zip(layer_keys, sizes[:-1], sizes[1:]):
        w_key, b_key = jax.random.split(layer_key)
        params.append((scale * jax.random.normal(w_key, (n_in, n_out)),
                       scale * jax.random.normal(b_key, (n_out,))))
    return params


def layer_inputs(params, inputs):
    """inputs: (B, 784) -> what each layer receives: [inputs (B, 784), h1 (B, 512), h2 (B, 512)].

    h1 and h2 are the ReLU outputs of the hidden layers.
    """
    received = [inputs]
    for w, b in params[:-1]:
        received.append(relu(received[-1] @ w + b))  # (B, n_out)
    return received


def predict(params, inputs):
    """inputs: (B, 784) -> log-probabilities (B, 10). ReLU between layers, log-softmax on top."""
    w, b = params[-1]
    return log_softmax(layer_inputs(params, inputs)[-1] @ w + b)  # (B, 10)


def loss(params, batch):
    """Mean over the batch AND the 10 classes of -onehot * log p: cross-entropy / 10.

    This is the loss of JAX's "training a simple neural network, with PyTorch data
    loading" tutorial. The extra 1/10 shrinks every gradient tenfold, which is why the
    learning rates in this repository look ten times larger than usual for SGD.
    """
    inputs, targets = batch
    return -jnp.mean(predict(params, inputs) * targets)


def predicted_class(params, inputs):
    """inputs: (B, 784) -> the most likely digit (B,) int32."""
    return jnp.argmax(predict(params, inputs), axis=1)


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
# Plain SGD lives here; momentum, Nesterov, RMSProp and Adam live in optimized_sgd.py.


class Optimizer(NamedTuple):
    init: Callable
    update: Callable
    grad_point: Callable


def make_step(optimizer, loss_fn):
    """One step of any optimizer on loss_fn(params, batch), as a pure function (callers jit or scan it).

    (params, state, batch) -> (params, state, loss). The gradient is taken at
    optimizer.grad_point(params, state): the params themselves, or Nesterov's look-ahead.
    The loss comes free with that gradient, so it is the loss at that same point, before
    the update. mlp_mnist.py, optimizer_paths.py and sharpness.py all step through this.
    """

    def step(params, state, batch):
        value, grads = jax.value_and_grad(loss_fn)(optimizer.grad_point(params, state), batch)
        params, state = optimizer.update(grads, state, params)
        return params, state, value

    return step


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
        new_params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return new_params, state

    return Optimizer(init, update, at_params)
