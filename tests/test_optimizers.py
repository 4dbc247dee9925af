"""Each hand-written optimizer against optax, step by step, on a random pytree.

Both sides start from the same point and, at every step, take the gradient of the same
function at their own gradient point (Nesterov: the look-ahead point theta - mu * v, which
is what optax's Nesterov keeps as its parameters); ours steps through mlp_mnist.step, the
step mlp_mnist.py trains with. The points must agree at every step.
One leaf's gradients are ~1e-8, where eps placement and Adam's bias correction decide the
step size, so getting either wrong fails the comparison (test_the_comparison_catches_a_wrong_rule
proves it, with each mistake written as an optax transformation).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (HYPER, LR, assert_same_trajectory, make_loss, optax_reference, optax_trajectory,
                      our_trajectory, random_params, takes)
from optimized_sgd import OPTIMIZERS, UnknownHyperparameter, hyperparameters, make_optimizer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_matches_optax_step_by_step(name):
    params = random_params()
    loss = make_loss(params)
    assert_same_trajectory(our_trajectory(name, params, loss), optax_trajectory(optax_reference(name), params, loss))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_hyperparameters_as_float32_arrays_follow_the_same_trajectory(name):
    """As data (float32 arrays into a jitted step, as mlp_mnist passes them), the hyperparameters give optax's
    trajectory at the same float32 values: 1 - 0.999 is 0.00099998713 in float32, which Adam shows."""
    params = random_params()
    loss = make_loss(params)
    as_float32 = {key: float(np.float32(value)) for key, value in takes(name).items()}
    reference = optax_trajectory(optax_reference(name, float(np.float32(LR)), dict(HYPER, **as_float32)), params, loss)
    assert_same_trajectory(our_trajectory(name, params, loss, hyper_as=jnp.float32), reference)


def test_hyperparameters_fill_in_defaults_and_refuse_what_an_optimizer_does_not_take():
    assert hyperparameters("sgd") == dict(lr=0.01)
    assert hyperparameters("momentum", lr=0.1, rho=None) == dict(lr=0.1, mu=0.9)  # None: not given
    assert hyperparameters("adam", eps=0.01) == dict(lr=0.001, beta1=0.9, beta2=0.999, eps=0.01)
    for name, key in (("adam", "mu"), ("sgd", "mu"), ("momentum", "eps"), ("rmsprop", "beta1")):
        with pytest.raises(UnknownHyperparameter, match=f"{name} takes no {key} \\(it takes lr"):
            hyperparameters(name, **{key: 0.5})
    with pytest.raises(TypeError):
        make_optimizer("sgd", 0.1, mu=0.9)  # the factory itself refuses, too


# Our state, as optax keeps it: (our leaves, optax's leaves) that must be equal, for the same gradients fed to both.
# optax's momentum trace is v / lr (ours has lr inside the velocity, docs/02); RMSProp's nu and Adam's count,
# mu, nu are ours as they are.
STATE_AS_OPTAX = {
    "sgd": lambda ours, theirs: [],  # no state on either side
    "momentum": lambda ours, theirs: [(ours.velocity, jax.tree.map(lambda t: LR * t, theirs[0].trace))],
    "nesterov": lambda ours, theirs: [(ours.velocity, jax.tree.map(lambda t: LR * t, theirs[0].trace))],
    "rmsprop": lambda ours, theirs: [(ours.mean_square, theirs[0].nu)],
    "adam": lambda ours, theirs: [(ours.step, theirs[0].count), (ours.mean, theirs[0].mu),
                                  (ours.mean_square, theirs[0].nu)],
}


@pytest.mark.parametrize("name", sorted(STATE_AS_OPTAX))
def test_jitted_update_keeps_structure_and_its_state_is_optax_state(name):
    """Three jitted updates with the same gradients fed to ours and to optax: the same structure, and the state's
    values are optax's state (so a wrong v, s, m or step count fails here, not only somewhere down a trajectory).
    An optimizer of the registry without an entry in STATE_AS_OPTAX is checked by its trajectories only."""
    assert set(STATE_AS_OPTAX) <= set(OPTIMIZERS)
    params = random_params()
    opt, tx = make_optimizer(name, LR, **takes(name)), optax_reference(name)
    state, reference_state, update = opt.init(params), tx.init(params), jax.jit(opt.update)
    for grads in [jax.tree.map(lambda p: jnp.sin(3 * p + t), params) for t in range(3)]:  # no zeros, differ per step
        new_params, state = update(grads, state, params)
        _, reference_state = tx.update(grads, reference_state, params)
        assert jax.tree.structure(new_params) == jax.tree.structure(params)
        for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)):
            assert p.shape == q.shape and p.dtype == q.dtype
        params = new_params
    assert jax.tree.structure(state) == jax.tree.structure(opt.init(params))
    pairs = STATE_AS_OPTAX[name](state, reference_state)
    assert len(jax.tree.leaves(pairs)) == len(jax.tree.leaves(state)) * 2  # every leaf of our state is compared
    for ours, theirs in pairs:
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def adam_without_bias_correction(lr, b1, b2, eps):
    """Adam with m and v used as they are, not divided by (1 - b^t): an optax transformation (optax has no flag)."""

    def init(params):
        return (jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state[0], grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state[1], grads)
        return jax.tree.map(lambda m, v: -lr * m / (jnp.sqrt(v) + eps), m, v), (m, v)

    return optax.GradientTransformation(init, update)


# Plausible mistakes, each written as the optax transformation that makes it. The test
# data must tell each of them apart from the right rule, or the comparison above proves little.
WRONG_REFERENCES = {
    "momentum": {"nesterov instead of heavy ball":
                 lambda: optax.sgd(LR, momentum=HYPER["mu"], nesterov=True)},
    "nesterov": {"heavy ball instead of look-ahead": lambda: optax.sgd(LR, momentum=HYPER["mu"])},
    "rmsprop": {"eps inside the square root":
                lambda: optax.rmsprop(LR, decay=HYPER["rho"], eps=HYPER["eps"], eps_in_sqrt=True),
                "with bias correction":
                lambda: optax.rmsprop(LR, decay=HYPER["rho"], eps=HYPER["eps"], eps_in_sqrt=False,
                                      bias_correction=True)},
    "adam": {"eps inside the square root":
             lambda: optax.adam(LR, b1=HYPER["beta1"], b2=HYPER["beta2"], eps=0.0, eps_root=HYPER["eps"]),
             "no bias correction": lambda: adam_without_bias_correction(LR, HYPER["beta1"], HYPER["beta2"],
                                                                        HYPER["eps"])},
}


@pytest.mark.parametrize("name,mistake", [(n, m) for n, ms in WRONG_REFERENCES.items() for m in ms])
def test_the_comparison_catches_a_wrong_rule(name, mistake):
    params = random_params()
    loss = make_loss(params)
    wrong = optax_trajectory(WRONG_REFERENCES[name][mistake](), params, loss)
    with pytest.raises(AssertionError):
        assert_same_trajectory(our_trajectory(name, params, loss), wrong)


def test_adam_bias_correction_starts_at_t_equals_1():
    """After one step from zero state, m_hat = g and v_hat = g^2, so each weight moves by ~lr."""
    params = random_params()
    grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
    opt = make_optimizer("adam", LR, **takes("adam"))
    new_params, state = opt.update(grads, opt.init(params), params)
    assert int(state.step) == 1
    for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)):
        np.testing.assert_allclose(p - q, LR * 1e-3 / (1e-3 + HYPER["eps"]), rtol=0, atol=1e-6)


def random_gradients(steps=50, seed=3):
    """A sequence of gradient pytrees (one (4, 3) leaf) whose signs and sizes vary from step to step.

    Two draws per step, so two keys per step: a key is split, never used twice."""
    sign_keys, size_keys = jax.random.split(jax.random.key(seed), (2, steps))
    return [{"w": jax.random.normal(a, (4, 3)) * jnp.exp(jax.random.normal(b, (4, 3)))}
            for a, b in zip(sign_keys, size_keys)]


def moves(name, grads, **hyper):
    """-> the per-step moves |theta_t+1 - theta_t| (steps, 4, 3) of optimizer `name` fed `grads`."""
    opt = make_optimizer(name, LR, **takes(name, dict(HYPER, **hyper)))
    params = {"w": jnp.zeros((4, 3))}
    state, steps = opt.init(params), []
    for g in grads:
        new_params, state = opt.update(g, state, params)
        steps.append(jnp.abs(new_params["w"] - params["w"]))
        params = new_params
    return np.array(steps)


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_step_size_does_not_depend_on_the_gradient_scale(name):
    """Dividing by the root mean square of g: the same steps for g and for 1000 g (eps = 0 makes it exact)."""
    grads = random_gradients()
    scaled = [jax.tree.map(lambda g: 1000 * g, g) for g in grads]
    np.testing.assert_allclose(moves(name, grads, eps=0.0), moves(name, scaled, eps=0.0), rtol=1e-4)
    assert moves("sgd", scaled).sum() > 900 * moves("sgd", grads).sum()  # while SGD's scale with g


def test_rmsprop_steps_are_at_most_lr_over_sqrt_one_minus_rho():
    """s >= (1 - rho) g^2, so |step| = lr |g| / sqrt(s) <= lr / sqrt(1 - rho); the first step (s = (1 - rho) g^2)
    reaches the bound, and later ones are shorter."""
    bound = LR / np.sqrt(1 - HYPER["rho"])
    steps = moves("rmsprop", random_gradients(), eps=0.0)
    np.testing.assert_allclose(steps[0], bound, rtol=1e-5)
    assert steps.max() <= bound * (1 + 1e-5) and np.median(steps[1:]) < 0.5 * bound


def test_adam_in_float64_is_float64_throughout():
    """float64 params (optimizer_paths.py's runs): Adam's steps match a NumPy float64 Adam to 1e-12.

    Bias corrections computed in float32 (1 - 0.999 is 0.00099998713 there) put the steps ~1e-5 off."""
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(20, 3)) * np.exp(rng.normal(size=(20, 3)))
    b1, b2, eps = HYPER["beta1"], HYPER["beta2"], HYPER["eps"]
    theta, m, v, expected = np.zeros(3), np.zeros(3), np.zeros(3), []
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        theta = theta - LR * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        expected.append(theta)
    with jax.enable_x64(True):
        opt = make_optimizer("adam", LR, **takes("adam"))
        params = {"w": jnp.zeros(3, jnp.float64)}
        state, ours = opt.init(params), []
        for g in grads:
            params, state = opt.update({"w": jnp.asarray(g)}, state, params)
            ours.append(np.asarray(params["w"]))
    assert ours[-1].dtype == np.float64
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0)
