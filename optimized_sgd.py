"""Momentum, Nesterov, RMSProp and Adam, written from scratch, and the registry of every optimizer (OPTIMIZERS).

Each factory returns an Optimizer (see train_utils.py): pure functions
init(params) -> state, update(grads, state, params) -> (new_params, new_state) and
grad_point(params, state), over any params pytree. State is a small NamedTuple whose
fields are pytrees shaped like params; all the math runs through jax.tree.map. The
hyperparameters may be Python floats or arrays (mlp_mnist.py passes float32 arrays, so that
they are data to the compiled step, not constants baked into it).
Every rule is tested step by step against optax in tests/test_optimizers.py.

OPTIMIZERS holds one Entry per optimizer (plain SGD's factory is in train_utils.py): its factory, its
recipe learning rate, its hyperparameters, its optax reference, its test grid, its 2-D paths' settings.
Every script and test reads the optimizers from there.
"""
import inspect
from typing import Callable, NamedTuple

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


# --- The registry: one entry per optimizer, and everything else derives from it -----------------


class Hyperparameter(NamedTuple):
    """A setting an optimizer takes besides lr; its default is the factory's keyword default."""
    values: str  # "positive" (> 0) or "in [0, 1)": the command line refuses anything else (plumbing/cli.py)
    help: str  # what it is, for --help


class Entry(NamedTuple):
    """One optimizer, whole. The scripts' --optimizer choices and flags, tune_optimizers.py's notion of "the same
    run", the optax references and the training grid of the tests, and the 2-D paths all read it from here:
    adding an optimizer is adding an entry (and its test; docs/02-optimizers.md shows how)."""
    factory: Callable  # (lr, **hyperparameters) -> Optimizer
    recipe_lr: float  # the learning rate the recipe trains it with (the original README's; docs/04)
    hyperparameters: dict  # {key: Hyperparameter} for each keyword of factory besides lr; lr and these are
    #                        what make two runs of it different runs
    optax: Callable  # (optax, lr, **hyperparameters) -> the optax transformation whose points are its gradient
    #                  points, step for step: the tests' reference (optax is passed in: only the tests need it)
    test_grid: dict  # hyperparameters away from the defaults, for the tests' grids of many models
    paths: dict = None  # {"quadratic": settings, "rosenbrock": settings}: optimizer_paths.py draws it when given
    style: dict = None  # its line in those plots (color, linestyle, marker)
    loss_note: str = ""  # where its reported training loss is measured, when that is not at its params


MU = Hyperparameter("in [0, 1)", "how much of the velocity is kept")
EPS = Hyperparameter("positive", "added to sqrt(mean of g^2)")

OPTIMIZERS = {
    "sgd": Entry(
        sgd, 0.01, {},
        optax=lambda optax, lr: optax.sgd(lr),
        test_grid={},
        paths=dict(quadratic=dict(lr=0.4),  # 1 - 0.4 * 4 = -0.6: each step overshoots across the valley and back
                   rosenbrock=dict(lr=0.001)),  # about 2 / (the curvature across the valley)
        style=dict(color="tab:blue", linestyle="-", marker="o")),
    "momentum": Entry(
        momentum, 0.01, {"mu": MU},
        optax=lambda optax, lr, mu: optax.sgd(lr, momentum=mu),
        test_grid=dict(mu=0.8),
        paths=dict(quadratic=dict(lr=0.4, mu=0.5),  # the same lr: faster along the valley (0.77 per step, not
                   #                                  0.92), slower to settle across it (|z| = 0.71, not 0.6): docs/02
                   rosenbrock=dict(lr=0.001, mu=0.9)),
        style=dict(color="tab:orange", linestyle="--", marker="s")),
    "nesterov": Entry(
        nesterov, 0.01, {"mu": MU},
        optax=lambda optax, lr, mu: optax.sgd(lr, momentum=mu, nesterov=True),  # its params are our look-ahead
        test_grid=dict(mu=0.8),
        paths=dict(quadratic=dict(lr=0.3, mu=0.5),  # at lr 0.4 it diverges here: a root -1.16 across the valley
                   rosenbrock=dict(lr=0.001, mu=0.9)),
        style=dict(color="tab:green", linestyle="-.", marker="^"),
        loss_note="at the look-ahead theta - mu v"),
    "rmsprop": Entry(
        rmsprop, 0.01, {"rho": Hyperparameter("in [0, 1)", "decay of the mean of g^2"), "eps": EPS},
        optax=lambda optax, lr, rho, eps: optax.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=False),
        test_grid=dict(rho=0.95, eps=1e-3),
        paths=dict(quadratic=dict(lr=0.1, rho=0.9),  # steps ~lr long whatever the curvature
                   rosenbrock=dict(lr=0.003, rho=0.9)),
        style=dict(color="tab:red", linestyle=":", marker="D")),
    "adam": Entry(
        adam, 0.001, {"beta1": Hyperparameter("in [0, 1)", "decay of the mean of g"),
                      "beta2": Hyperparameter("in [0, 1)", "decay of the mean of g^2"), "eps": EPS},
        optax=lambda optax, lr, beta1, beta2, eps: optax.adam(lr, b1=beta1, b2=beta2, eps=eps),
        test_grid=dict(beta1=0.8, eps=1e-4),
        paths=dict(quadratic=dict(lr=0.1), rosenbrock=dict(lr=0.05)),
        style=dict(color="tab:purple", linestyle=(0, (6, 2, 1, 2, 1, 2)), marker="v")),
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
    entry = OPTIMIZERS[name]
    defaults = {key: p.default for key, p in inspect.signature(entry.factory).parameters.items()}
    defaults["lr"] = entry.recipe_lr
    for key, value in given.items():
        if key not in defaults and value is not None:
            raise UnknownHyperparameter(name, key, defaults)
    return {key: given[key] if given.get(key) is not None else default for key, default in defaults.items()}


def make_optimizer(name, lr, **hyperparams):
    """Optimizer `name` with learning rate lr and the hyperparameters it takes (any other key is an error)."""
    return OPTIMIZERS[name].factory(lr, **hyperparams)
