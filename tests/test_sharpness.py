"""sharpness.py: Hessian-vector products, Lanczos and the edge of stability, against oracles.

Tiny MLPs and quadratics in float64: no MNIST needed, except for the command-line checks.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import sharpness
from optimized_sgd import make_optimizer
from train_utils import init_params, loss

TINY_SIZES = (6, 5, 4, 3)  # 74 parameters: the dense Hessian is 74 x 74
TIGHT = dict(tol=1e-10, max_iter=200)  # Lanczos run to far below the tests' tolerances


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def tiny_problem(seed, n=16):
    """A tiny MLP (6, 5, 4, 3) at init scale 0.5 and a random batch of n examples -> (params, batch)."""
    params_key, inputs_key, labels_key = jax.random.split(jax.random.key(seed), 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), init_params(params_key, TINY_SIZES, 0.5))
    inputs = jax.random.normal(inputs_key, (n, TINY_SIZES[0]), jnp.float64)
    targets = jax.nn.one_hot(jax.random.randint(labels_key, (n,), 0, TINY_SIZES[-1]), TINY_SIZES[-1], dtype=jnp.float64)
    return params, (inputs, targets)


def quadratic(theta, matrix):
    """1/2 theta^T A theta: its Hessian is A."""
    return 0.5 * theta @ matrix @ theta


def symmetric_matrix(eigenvalues, seed=0):
    """A = Q diag(eigenvalues) Q^T, Q a random rotation -> (n, n) float64."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return jnp.asarray(q @ np.diag(eigenvalues) @ q.T)


@pytest.mark.parametrize("loss_fn", [loss, sharpness.cross_entropy])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hvp_equals_a_finite_difference_of_gradients(loss_fn, seed):
    params, batch = tiny_problem(seed)
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(100 + seed), flat.shape, jnp.float64)
    eps = 1e-6
    gradient = lambda theta: ravel_pytree(jax.grad(loss_fn)(unravel(theta), batch))[0]
    finite_difference = (gradient(flat + eps * v) - gradient(flat - eps * v)) / (2 * eps)
    exact = ravel_pytree(sharpness.hvp(loss_fn, params, batch, unravel(v)))[0]
    np.testing.assert_allclose(exact, finite_difference, rtol=1e-5, atol=1e-9 * np.abs(finite_difference).max())


@pytest.mark.parametrize("loss_fn", [loss, sharpness.cross_entropy])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_finds_the_top_eigenvalue_of_the_dense_hessian(loss_fn, seed):
    params, batch = tiny_problem(seed)
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda theta: loss_fn(unravel(theta), batch))(flat)  # (74, 74)
    top = np.linalg.eigvalsh(np.asarray(dense))[-1]
    found, vector, used, residual = sharpness.sharpness(loss_fn, params, batch, sharpness.random_start(params), **TIGHT)
    assert float(found) == pytest.approx(top, rel=1e-8)
    np.testing.assert_allclose(dense @ vector, top * vector, atol=1e-6 * abs(top))
    assert residual <= 1e-10 * abs(found) and used <= 74  # a Krylov space never needs more than n vectors


@pytest.mark.parametrize("eigenvalues", [
    [4.0, 1.0, 0.25, 0.01],  # positive definite
    [3.0, 1.0, 0.5, -5.0],  # the largest in size is negative: power iteration alone would return -5
    [2.0, 1.0, -1.0, -2.0],  # +2 and -2 alike in size
    [-0.5, -1.0, -2.0, -3.0],  # all negative: lambda_max is -0.5
    [5.0, 4.999, 1.0, -5.0],  # a tiny gap at the top: power iteration would crawl
])
def test_lambda_max_of_a_quadratic_is_its_top_eigenvalue(eigenvalues):
    matrix = np.asarray(symmetric_matrix(eigenvalues))
    found, vector, _, residual = sharpness.lanczos(lambda v: matrix @ v, np.ones(len(eigenvalues)), **TIGHT)
    assert float(found) == pytest.approx(max(eigenvalues), rel=1e-9)
    assert residual == pytest.approx(np.linalg.norm(matrix @ vector - found * vector), abs=1e-9)


def test_lanczos_stops_on_the_residual():
    """The stopping rule is ||M y - lambda y|| <= tol |lambda|: looser tol, fewer products, and the true residual
    of what comes back obeys it (it is not a stall in lambda)."""
    eigenvalues = np.linspace(1.0, 10.0, 40)
    matrix = np.asarray(symmetric_matrix(list(eigenvalues), seed=3))
    start = np.random.default_rng(1).normal(size=40)
    counts = []
    for tol in (1e-2, 1e-4, 1e-8):
        found, vector, used, _ = sharpness.lanczos(lambda v: matrix @ v, start, tol=tol, max_iter=200)
        assert np.linalg.norm(matrix @ vector - found * vector) <= tol * found * (1 + 1e-6)
        counts.append(used)
    assert counts[0] < counts[1] < counts[2]


def test_a_ritz_value_never_exceeds_lambda_max():
    matrix = np.asarray(symmetric_matrix([4.0, 3.9, 1.0, -4.5]))
    for max_iter in (1, 2, 3):
        found, _, _, _ = sharpness.lanczos(lambda v: matrix @ v, np.ones(4), tol=0.0, max_iter=max_iter)
        assert float(found) <= 4.0 + 1e-12


def test_warm_started_traces_equal_cold_starts():
    """Along a run, each measurement starts from the last eigenvector. At a few trace points, a cold start from
    a fresh random vector finds the same lambda_max, to the tolerance: warm starts do not stay on an old vector."""
    params, batch = tiny_problem(0)
    run = sharpness.trace(loss, "sgd", dict(lr=0.5), params, batch, steps=30, every=10,
                          v0=sharpness.random_start(params))
    state = make_optimizer("sgd", lr=0.5).init(params)
    for length, expected in zip((10, 10, 10), run["sharpness"][1:]):
        params, state, _ = sharpness.train_steps(loss, "sgd", dict(lr=jnp.float64(0.5)), params, state, batch, length)
        cold, _, _, _ = sharpness.sharpness(loss, params, batch, sharpness.random_start(params, key=7), **TIGHT)
        assert expected == pytest.approx(float(cold), rel=2 * sharpness.TRACE_TOL)
    assert len(set(np.round(run["sharpness"], 6))) > 2  # the sharpness moved: the check is not vacuous


def test_adams_preconditioned_sharpness_is_that_of_p_inverse_h():
    """After a few Adam steps, lambda_max(P^-1/2 H P^-1/2) equals the top eigenvalue of the dense P^-1 H."""
    params, batch = tiny_problem(1)
    hyper = dict(lr=jnp.float64(0.01), beta1=0.9, beta2=0.999, eps=jnp.float64(1e-3))
    state = make_optimizer("adam", **hyper).init(params)
    params, state, _ = sharpness.train_steps(loss, "adam", hyper, params, state, batch, 5)
    scale = sharpness.adam_preconditioner(state, hyper)
    found, _, _, _ = sharpness.sharpness(loss, params, batch, sharpness.random_start(params), scale=scale, **TIGHT)
    flat, unravel = ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda theta: loss(unravel(theta), batch))(flat))
    p_inverse = np.asarray(scale) ** 2  # 1 / (sqrt(v_hat) + eps)
    top = np.max(np.linalg.eigvals(p_inverse[:, None] * dense).real)
    assert float(found) == pytest.approx(top, rel=1e-8)
    plain, _, _, _ = sharpness.sharpness(loss, params, batch, sharpness.random_start(params), **TIGHT)
    assert abs(float(found) / float(plain)) > 10  # the preconditioner matters: the check is not vacuous


@pytest.mark.parametrize("name, mu", [("sgd", 0.0), ("momentum", 0.5), ("momentum", 0.9)])
@pytest.mark.parametrize("fraction, blows_up", [(0.99, False), (1.01, True)])
def test_the_edge_of_a_quadratic_is_two_plus_two_mu_over_lambda(name, mu, fraction, blows_up):
    matrix = symmetric_matrix([4.0, 1.0, 0.25])
    theta = jnp.array([1.0, -2.0, 0.5])
    top, _, _, _ = sharpness.sharpness(quadratic, theta, matrix, jnp.ones(3), **TIGHT)
    assert float(top) == pytest.approx(4.0, rel=1e-9)
    settings = dict(lr=1.0, mu=mu) if name == "momentum" else dict(lr=1.0)
    lr = fraction * sharpness.edge(name, settings) / float(top)
    hyper = dict(settings, lr=jnp.float64(lr))
    state = make_optimizer(name, **hyper).init(theta)
    _, _, losses = sharpness.train_steps(quadratic, name, hyper, theta, state, matrix, 3000)
    assert sharpness.diverged(losses) == blows_up
    if not blows_up:
        assert losses[-1] < 1e-12 * losses[0]


def test_bisection_brackets_the_edge_of_a_quadratic():
    matrix = symmetric_matrix([4.0, 1.0, 0.25])
    theta = jnp.array([1.0, -2.0, 0.5])
    lr_diverges, lr_survives, probes = sharpness.find_divergence(
        lambda lr: sharpness.gd_probe(quadratic, lr, theta, matrix, 2000)["diverged"], start=0.01)
    assert lr_survives < 2 / 4.0 * 1.001 and lr_diverges > 2 / 4.0
    assert lr_diverges / lr_survives < sharpness.BISECT_RATIO
    assert all(blew_up == (lr >= lr_diverges) for lr, blew_up in probes)


@pytest.mark.parametrize("fraction", [0.5, 0.99, 1.01, 3.0])
def test_a_probe_keeps_its_final_loss_and_accuracy(fraction):
    """gd_probe's record against train_steps' own losses: the loss before step 0, the loss after the last step
    run (steps_run: all of them, or up to the 25-step chunk in which it blew up), and accuracy_fn's value
    at those params; None for both when the loss is not finite."""
    matrix = symmetric_matrix([4.0, 1.0, 0.25])
    theta = jnp.array([1.0, -2.0, 0.5])
    lr = fraction * 2 / 4.0
    steps = 2000 if fraction < 2 else 1000  # at 3 x the edge the loss overflows to inf within 1000 steps
    probe = sharpness.gd_probe(quadratic, lr, theta, matrix, steps, accuracy_fn=lambda p: jnp.sum(p ** 2))
    hyper = dict(lr=jnp.float32(lr))  # as gd_probe holds it
    params, state, losses = theta, make_optimizer("sgd", **hyper).init(theta), []
    for length in sharpness.block_lengths(probe["steps_run"], 25):  # the probe's own chunks: the same programs
        params, state, block = sharpness.train_steps(quadratic, "sgd", hyper, params, state, matrix, length)
        losses.extend(np.asarray(block).tolist())
    assert probe["diverged"] == (fraction > 1)
    assert probe["steps_run"] == (steps if fraction < 1 else 25 * math.ceil(probe["steps_run"] / 25))
    assert probe["initial_loss"] == float(losses[0]) == float(quadratic(theta, matrix))
    final = float(quadratic(params, matrix))
    if math.isfinite(final):
        assert probe["final_loss"] == final and probe["final_accuracy"] == float(jnp.sum(params ** 2))
    else:
        assert probe["final_loss"] is None and probe["final_accuracy"] is None


@pytest.mark.parametrize("losses, expected", [
    ([0.25, 0.1, 0.01], False),
    ([0.25, 2.4, 0.2], False),  # up, but less than 10 x the first
    ([0.25, 2.6, 0.2], True),  # more than 10 x: blown up, even though it came back down
    ([0.25, float("nan")], True),
    ([0.25, float("inf")], True),
])
def test_diverged(losses, expected):
    assert sharpness.diverged(losses) == expected


@pytest.mark.parametrize("steps, every, expected", [(10, 5, [5, 5]), (12, 5, [5, 5, 2]), (3, 5, [3])])
def test_block_lengths(steps, every, expected):
    assert sharpness.block_lengths(steps, every) == expected


@pytest.mark.parametrize("argv, flag", [(["--train-subset", "0"], "--train-subset"), (["--gd-lrs", "-0.1"], "--gd-lrs"),
                                        (["--momentum-mu", "1"], "--momentum-mu"), (["--every", "x"], "--every"),
                                        (["--full-batch-steps", "0"], "--full-batch-steps")])
def test_bad_arguments_exit_with_status_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sharpness.main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_more_images_than_mnist_has_is_refused(mnist_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sharpness.main(["--train-subset", "60001", "--data-dir", mnist_dir, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "60000 training images" in capsys.readouterr().err


@pytest.mark.parametrize("name, settings, expected", [("sgd", dict(lr=0.1), 20.0), ("momentum", dict(lr=0.1, mu=0.9), 38.0),
                                                      ("adam", dict(lr=0.1, beta1=0.9), 380.0),
                                                      ("adam", dict(lr=1.0, beta1=0.5), 6.0)])
def test_the_edges(name, settings, expected):
    """2/lr; (2 + 2 mu)/lr; Adam's (2 + 2 beta1)/((1 - beta1) lr), 38/lr at beta1 = 0.9 (Cohen et al. 2022)."""
    assert sharpness.edge(name, settings) == pytest.approx(expected)
    with pytest.raises(ValueError, match="nesterov"):
        sharpness.edge("nesterov", dict(lr=0.1, mu=0.9))
