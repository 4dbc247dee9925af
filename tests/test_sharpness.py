"""sharpness.py: Hessian-vector products, power iteration and the edge of stability, against oracles.

Tiny MLPs and quadratics in float64: no MNIST needed, except for the command-line checks.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import sharpness
from optimized_sgd import make_optimizer
from train_utils import init_params, loss

TINY_SIZES = (6, 5, 4, 3)  # 74 parameters: the dense Hessian is 74 x 74
TIGHT = dict(tol=1e-13, max_iter=20_000)  # power iteration run to float64 precision


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def tiny_problem(seed, n=16):
    """A tiny MLP (6, 5, 4, 3) at init scale 0.5 and a random batch of n examples -> (params, batch)."""
    params_key, inputs_key, labels_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), init_params(params_key, TINY_SIZES, 0.5))
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
    v = jax.random.normal(jax.random.PRNGKey(100 + seed), flat.shape, jnp.float64)
    eps = 1e-6
    gradient = lambda theta: ravel_pytree(jax.grad(loss_fn)(unravel(theta), batch))[0]
    finite_difference = (gradient(flat + eps * v) - gradient(flat - eps * v)) / (2 * eps)
    exact = ravel_pytree(sharpness.hvp(loss_fn, params, batch, unravel(v)))[0]
    np.testing.assert_allclose(exact, finite_difference, rtol=1e-5, atol=1e-9 * np.abs(finite_difference).max())


@pytest.mark.parametrize("loss_fn", [loss, sharpness.cross_entropy])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_finds_the_top_eigenvalue_of_the_dense_hessian(loss_fn, seed):
    params, batch = tiny_problem(seed)
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda theta: loss_fn(unravel(theta), batch))(flat)  # (74, 74)
    top = np.linalg.eigvalsh(np.asarray(dense))[-1]
    found, vector, _ = sharpness.sharpness(loss_fn, params, batch, sharpness.random_start(params), **TIGHT)
    assert float(found) == pytest.approx(top, rel=1e-6)
    np.testing.assert_allclose(dense @ vector, top * vector, atol=1e-4 * abs(top))


@pytest.mark.parametrize("eigenvalues", [
    [4.0, 1.0, 0.25, 0.01],  # positive definite
    [3.0, 1.0, 0.5, -5.0],  # the largest in size is negative: pass 1 alone would return -5
    [2.0, 1.0, -1.0, -2.0],  # +2 and -2 alike in size
    [-0.5, -1.0, -2.0, -3.0],  # all negative: lambda_max is -0.5
])
def test_lambda_max_of_a_quadratic_is_its_top_eigenvalue(eigenvalues):
    matrix = symmetric_matrix(eigenvalues)
    v0 = jnp.ones(len(eigenvalues))
    found, _, _ = sharpness.lambda_max(lambda v: matrix @ v, v0, **TIGHT)
    assert float(found) == pytest.approx(max(eigenvalues), rel=1e-7)


def test_a_rayleigh_quotient_never_exceeds_lambda_max():
    matrix = symmetric_matrix([4.0, 3.9, 1.0, -4.5])
    for max_iter in (1, 2, 5, 20):
        found, _, _ = sharpness.lambda_max(lambda v: matrix @ v, jnp.ones(4), tol=0.0, max_iter=max_iter)
        assert float(found) <= 4.0 + 1e-12


@pytest.mark.parametrize("name, mu", [("sgd", 0.0), ("momentum", 0.5), ("momentum", 0.9)])
@pytest.mark.parametrize("fraction, blows_up", [(0.99, False), (1.01, True)])
def test_the_edge_of_a_quadratic_is_two_plus_two_mu_over_lambda(name, mu, fraction, blows_up):
    matrix = symmetric_matrix([4.0, 1.0, 0.25])
    theta = jnp.array([1.0, -2.0, 0.5])
    top, _, _ = sharpness.sharpness(quadratic, theta, matrix, jnp.ones(3), **TIGHT)
    assert float(top) == pytest.approx(4.0, rel=1e-9)
    lr = fraction * sharpness.edge(1.0, mu) / float(top)
    state = make_optimizer(name, lr, mu=mu).init(theta)
    _, _, losses = sharpness.train_steps(quadratic, name, lr, mu, theta, state, matrix, 3000)
    assert sharpness.diverged(losses) == blows_up
    if not blows_up:
        assert losses[-1] < 1e-12 * losses[0]


def test_bisection_brackets_the_edge_of_a_quadratic():
    matrix = symmetric_matrix([4.0, 1.0, 0.25])
    theta = jnp.array([1.0, -2.0, 0.5])
    lr_diverges, lr_survives, probes = sharpness.find_divergence(
        lambda lr: sharpness.gd_blows_up(quadratic, lr, theta, matrix, 2000), start=0.01)
    assert lr_survives < 2 / 4.0 * 1.001 and lr_diverges > 2 / 4.0
    assert lr_diverges / lr_survives < sharpness.BISECT_RATIO
    assert all(blew_up == (lr >= lr_diverges) for lr, blew_up in probes)


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


@pytest.mark.parametrize("argv", [["--n-images", "0"], ["--lrs", "-0.1"], ["--mu", "1"], ["--every", "x"]])
def test_bad_arguments_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sharpness.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_more_images_than_mnist_has_is_refused(mnist_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sharpness.main(["--n-images", "60001", "--data-dir", mnist_dir, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "60000 training images" in capsys.readouterr().err
