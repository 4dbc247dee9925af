"""optimizer_paths.py: the optimizers on quadratics, measured against the theory of their rates."""
import json
import math

import numpy as np
import pytest

import optimizer_paths
from optimizer_paths import KAPPAS, theory


@pytest.fixture(scope="module")
def rate_rows():
    return {(row["kappa"], row["method"]): row for row in optimizer_paths.rates()}


@pytest.fixture(scope="module")
def panels():
    return optimizer_paths.run_panels()


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("method", ["gradient descent", "heavy ball", "nesterov"])
def test_measured_rate_matches_theory(rate_rows, kappa, method):
    """Within 1%: tight enough that Nesterov with its gradient taken at theta instead of the look-ahead
    (a heavy ball at Nesterov's settings: rate sqrt(mu), 3.5% off at kappa = 10) fails."""
    row = rate_rows[(kappa, method)]
    assert row["measured"] == pytest.approx(row["theory"], rel=0.01)


@pytest.mark.parametrize("kappa", KAPPAS)
def test_momentum_needs_about_sqrt_kappa_times_fewer_steps(rate_rows, kappa):
    ratio = rate_rows[(kappa, "gradient descent")]["steps_to_1e_6"] / rate_rows[(kappa, "heavy ball")]["steps_to_1e_6"]
    assert 0.5 * math.sqrt(kappa) < ratio < 2 * math.sqrt(kappa)


def test_repository_momentum_is_the_heavy_ball():
    """v <- mu v + lr g; theta <- theta - v  is  theta_t+1 = theta_t - lr g + mu (theta_t - theta_t-1)."""
    name, settings, _ = theory(100)["heavy ball"]
    xs, ys, _ = optimizer_paths.run(name, settings, lambda p: 0.5 * (p["x"] ** 2 + 100 * p["y"] ** 2), (1.0, 1.0), 50)
    lr, mu = settings["lr"], settings["mu"]
    theta, previous, expected = np.array([1.0, 1.0]), np.array([1.0, 1.0]), []
    for _ in range(50):
        gradient = np.array([1.0, 100.0]) * theta
        theta, previous = theta - lr * gradient + mu * (theta - previous), theta
        expected.append(theta)
    np.testing.assert_allclose(np.stack([xs, ys], axis=1)[1:], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("key", ["quadratic", "rotated"])
@pytest.mark.parametrize("name", sorted(optimizer_paths.QUADRATIC_SETTINGS))
def test_every_optimizer_decreases_f_on_the_quadratic(panels, key, name):
    values = panels[key]["runs"][name]["f"]
    assert values[-1] < 1e-2 * values[0] and values.min() < 1e-3


def test_rotation_costs_only_the_per_coordinate_methods(panels):
    """GD, momentum and Nesterov are rotation-invariant: the same f - f*, step for step. RMSProp and Adam
    scale each coordinate on its own, which helps while the valley lies along an axis."""
    for name in ("sgd", "momentum", "nesterov"):
        np.testing.assert_allclose(panels["rotated"]["runs"][name]["f"], panels["quadratic"]["runs"][name]["f"],
                                   rtol=1e-6, atol=1e-12)
    for name in ("rmsprop", "adam"):
        steps = [panels[key]["runs"][name]["steps_to_target"] for key in ("quadratic", "rotated")]
        assert steps[1] > 1.2 * steps[0], (name, steps)


def test_writes_the_figure_and_the_tables(tmp_path, capsys):
    out = tmp_path / "paths"
    optimizer_paths.main(["--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["paths.json", "paths.png", "rates.json", "summary.md"]
    rates = json.loads((out / "rates.json").read_text())["rates"]
    assert [(r["kappa"], r["method"]) for r in rates] == [(k, m) for k in KAPPAS for m in theory(k)]
    assert all({"settings", "theory", "measured"} <= set(r) for r in rates)
    paths = json.loads((out / "paths.json").read_text())
    assert paths["quadratic"]["optimizers"]["adam"]["steps_to_target"] > 0
    assert "| adam |" in (out / "summary.md").read_text() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # a folder that holds results is refused
        optimizer_paths.main(["--out", str(out)])
    assert exit_info.value.code == 2
