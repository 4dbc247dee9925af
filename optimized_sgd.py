"""Momentum, Nesterov, RMSProp and Adam, written from scratch.

Each factory returns an Optimizer (see train_utils.py): pure functions
init(params) -> state, update(grads, state, params) -> (new_params, new_state) and
grad_point(params, state), over any params pytree. State is a small NamedTuple whose
fields are pytrees shaped like params; all the math runs through jax.tree.map. The
hyperparameters may be Python floats or arrays (mlp_mnist.py passes float32 arrays, so that
they are data to the compiled step, not constants baked into it).
Every rule is tested step by step against optax in tests/test_optimizers.py.
"""
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp

from train_utils import Optimizer, at_params, sgd

tree_map = jax.tree.map


def zeros_like_tree(params):
    return tree_map(jnp.zeros_like, params)


class MomentumState(NamedTuple):
    velocity: object  # v, shaped like params


def momentum(lr, mu=0.9):
    """Heavy-ball momentum, with lr inside the velocity:

        v <- mu * v + lr * g;   theta <- theta - v          (v starts at 0)

    The same trajectory as optax.sgd(lr, momentum=mu), which keeps v/lr instead.
    """

    def init(params):
        return MomentumState(zeros_like_tree(params))

    def update(grads, state, params):
        velocity = tree_map(lambda v, g: mu * v + lr * g, state.velocity, grads)
        new_params = tree_map(lambda p, v: p - v, params, velocity)
        return new_params, MomentumState(velocity)

    return Optimizer(init, update, at_params)


def nesterov(lr, mu=0.9):
    """Nesterov momentum, look-ahead form (Sutskever et al., 2013):

        g = grad J(theta - mu * v);   v <- mu * v + lr * g;   theta <- theta - v

    Momentum's init and update, unchanged; only the point where the gradient is taken differs:
    the look-ahead point theta - mu * v (grad_point below), not theta. Writing
    phi = theta - mu * v turns this into optax's form,
    optax.sgd(lr, momentum=mu, nesterov=True), whose parameters are phi.

    Two points, then: mlp_mnist.py reports a Nesterov run's training loss at phi (it comes
    with the gradient), and its train and test accuracies at theta (the params it keeps).
    """

    def grad_point(params, state):
        return tree_map(lambda p, v: p - mu * v, params, state.velocity)

    return momentum(lr, mu)._replace(grad_point=grad_point)


class RMSPropState(NamedTuple):
    mean_square: object  # s, a moving average of g^2, shaped like params


def rmsprop(lr, rho=0.9, eps=1e-8):
    """RMSProp, eps outside the square root, no bias correction:

        s <- rho * s + (1 - rho) * g^2;   theta <- theta - lr * g / (sqrt(s) + eps)

    (s starts at 0.) Equals optax.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=False).
    No bias correction: s is used as it is, not divided by (1 - rho^t) as Adam divides its v,
    so early on s is smaller than the mean of g^2 (after step 1, a tenth of g^2 for rho = 0.9).
    A step does not depend on the scale of the gradient (g and 1000 g give the same steps),
    and since s >= (1 - rho) g^2, no step is longer than lr / sqrt(1 - rho): the first one,
    with s = (1 - rho) g^2, is exactly that long (3.16 lr for rho = 0.9) for every weight
    whose gradient is not zero (a zero gradient moves nothing) and well above eps.
    """

    def init(params):
        return RMSPropState(zeros_like_tree(params))

    def update(grads, state, params):
        mean_square = tree_map(lambda s, g: rho * s + (1 - rho) * g * g, state.mean_square, grads)
        new_params = tree_map(lambda p, g, s: p - lr * g / (jnp.sqrt(s) + eps),
                              params, grads, mean_square)
        return new_params, RMSPropState(mean_square)

    return Optimizer(init, update, at_params)


class AdamState(NamedTuple):
    step: jnp.ndarray  # t, the number of updates made so far (int32 scalar)
    mean: object  # m, moving average of g
    mean_square: object  # v, moving average of g^2


def adam(lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam (Kingma & Ba, 2015), eps outside the square root:

        t <- t + 1   (so the first update has t = 1)
        m <- beta1 * m + (1 - beta1) * g;      m_hat = m / (1 - beta1^t)
        v <- beta2 * v + (1 - beta2) * g^2;    v_hat = v / (1 - beta2^t)
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    (m, v start at 0.) Equals optax.adam(lr, b1=beta1, b2=beta2, eps=eps).
    """

    def init(params):
        return AdamState(jnp.zeros([], jnp.int32), zeros_like_tree(params), zeros_like_tree(params))

    def update(grads, state, params):
        step = state.step + 1
        mean = tree_map(lambda m, g: beta1 * m + (1 - beta1) * g, state.mean, grads)
        mean_square = tree_map(lambda v, g: beta2 * v + (1 - beta2) * g * g, state.mean_square, grads)

        def step_one(p, m, v):
            t = step.astype(p.dtype)  # the corrections in the params' precision (float64 in optimizer_paths.py)
            m_hat = m / (1 - beta1 ** t)
            v_hat = v / (1 - beta2 ** t)
            return p - lr * m_hat / (jnp.sqrt(v_hat) + eps)

        new_params = tree_map(step_one, params, mean, mean_square)
        return new_params, AdamState(step, mean, mean_square)

    return Optimizer(init, update, at_params)


# name -> (factory, the recipe's learning rate for it: the rate of the original README, docs/04)
OPTIMIZERS = {
    "sgd": (sgd, 0.01),
    "momentum": (momentum, 0.01),
    "nesterov": (nesterov, 0.01),
    "rmsprop": (rmsprop, 0.01),
    "adam": (adam, 0.001),
}


class UnknownHyperparameter(ValueError):
    """A setting the optimizer does not take; the message names the optimizer, the key and what it takes."""

    def __init__(self, name, key, takes):
        super().__init__(f"{name} takes no {key} (it takes {', '.join(takes)})")
        self.key = key


def hyperparameters(name, **given):
    """Optimizer `name`'s hyperparameters -> {key: value}: the recipe's lr and the factory's defaults,
    overridden by `given` (None counts as not given).

    hyperparameters("momentum", lr=0.1) -> {"lr": 0.1, "mu": 0.9}. A key the optimizer does not
    take (hyperparameters("adam", mu=0.5)) raises UnknownHyperparameter instead of being ignored.
    """
    factory, recipe_lr = OPTIMIZERS[name]
    defaults = {key: p.default for key, p in inspect.signature(factory).parameters.items()}
    defaults["lr"] = recipe_lr
    for key, value in given.items():
        if key not in defaults and value is not None:
            raise UnknownHyperparameter(name, key, defaults)
    return {key: given[key] if given.get(key) is not None else default for key, default in defaults.items()}


def make_optimizer(name, lr, **hyperparams):
    """Optimizer `name` with learning rate lr and the hyperparameters it takes (any other key is an error)."""
    return OPTIMIZERS[name][0](lr, **hyperparams)
