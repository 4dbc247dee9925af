"""optimizer_paths.py: the optimizers on quadratics, measured against the theory of their rates."""
import json
import math

import numpy as np
import pytest

import optimizer_paths
from conftest import characteristic_polynomial
from optimizer_paths import KAPPAS, theory

RATE_TOLERANCE = 0.0025  # measured / theory - 1; the worst case, heavy ball at kappa = 10, is 0.0016


@pytest.fixture(scope="module")
def rate_rows():
    return {(row["kappa"], row["method"]): row for row in optimizer_paths.rates()}


@pytest.fixture(scope="module")
def panels():
    return optimizer_paths.run_panels()


def spectral_rate(name, settings, kappa):
    """The largest |root| over curvatures m = 1 .. L = kappa: the rate on the worst direction (NumPy's roots)."""
    return max(np.abs(np.roots(characteristic_polynomial(name, settings["lr"], settings.get("mu", 0.0), h))).max()
               for h in np.linspace(1.0, kappa, 201))


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("method", list(theory(10)))
def test_theory_is_the_largest_root_of_the_characteristic_polynomial(kappa, method):
    name, settings, rate = theory(kappa)[method]
    assert spectral_rate(name, settings, kappa) == pytest.approx(rate, rel=1e-6)


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("method", ["heavy ball", "nesterov, optimal"])
def test_the_optimal_settings_beat_their_neighbours(kappa, method):
    """No (lr, mu) within 10% of the optimal one has a smaller rate: a grid of 5 x 5 settings around it."""
    name, settings, rate = theory(kappa)[method]
    for lr_scale in np.linspace(0.9, 1.1, 5):
        for mu_scale in np.linspace(0.9, 1.1, 5):
            nearby = dict(lr=settings["lr"] * lr_scale, mu=min(settings["mu"] * mu_scale, 0.999))
            assert spectral_rate(name, nearby, kappa) >= rate * (1 - 1e-6), (lr_scale, mu_scale)


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("method", list(theory(10)))
def test_measured_rate_matches_theory(rate_rows, kappa, method):
    row = rate_rows[(kappa, method)]
    assert row["measured"] == pytest.approx(row["theory"], rel=RATE_TOLERANCE)


@pytest.mark.parametrize("kappa", KAPPAS)
def test_the_two_nesterov_settings_are_told_apart(rate_rows, kappa):
    """Their theories differ by more than twice the tolerance (0.5% at kappa = 1000), so a measured rate
    within the tolerance of one cannot be within it of the other, and the optimal one is faster."""
    textbook, optimal = (rate_rows[(kappa, f"nesterov, {s}")]["theory"] for s in ("textbook", "optimal"))
    assert textbook / optimal - 1 > 2 * RATE_TOLERANCE
    assert rate_rows[(kappa, "nesterov, optimal")]["measured"] < rate_rows[(kappa, "nesterov, textbook")]["measured"]


@pytest.mark.parametrize("kappa", KAPPAS)
def test_on_quadratics_the_best_heavy_ball_beats_the_best_nesterov(rate_rows, kappa):
    assert rate_rows[(kappa, "heavy ball")]["measured"] < rate_rows[(kappa, "nesterov, optimal")]["measured"]


@pytest.mark.parametrize("kappa", KAPPAS)
def test_momentum_needs_about_sqrt_kappa_times_fewer_steps(rate_rows, kappa):
    ratio = rate_rows[(kappa, "gradient descent")]["steps_to_1e_6"] / rate_rows[(kappa, "heavy ball")]["steps_to_1e_6"]
    assert 0.5 * math.sqrt(kappa) < ratio < 2 * math.sqrt(kappa)


def reference_path(update, kappa, steps=50):
    """theta_1 .. theta_steps (steps, 2) of update(theta, previous, gradient_at) -> (theta, previous),
    from theta_0 = (1, 1) on f = (x^2 + kappa y^2) / 2, in NumPy."""
    theta, previous, path = np.array([1.0, 1.0]), np.array([1.0, 1.0]), []
    for _ in range(steps):
        theta, previous = update(theta, previous, lambda point: np.array([1.0, kappa]) * point)
        path.append(theta)
    return np.array(path)


def repository_path(name, settings, kappa, steps=50):
    xs, ys, _ = optimizer_paths.run(name, settings, lambda p: 0.5 * (p["x"] ** 2 + kappa * p["y"] ** 2), (1.0, 1.0),
                                    steps)
    return np.stack([xs, ys], axis=1)[1:]


@pytest.mark.parametrize("kappa", KAPPAS)
def test_repository_momentum_is_the_heavy_ball(kappa):
    """v <- mu v + lr g; theta <- theta - v  is  theta_t+1 = theta_t - lr g(theta_t) + mu (theta_t - theta_t-1)."""
    name, settings, _ = theory(kappa)["heavy ball"]
    lr, mu = settings["lr"], settings["mu"]
    expected = reference_path(lambda theta, previous, grad: (theta - lr * grad(theta) + mu * (theta - previous), theta),
                              kappa)
    np.testing.assert_allclose(repository_path(name, settings, kappa), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("setting", ["textbook", "optimal"])
def test_repository_nesterov_is_nesterovs_method(kappa, setting):
    """Nesterov's own form: y_t = theta_t + mu (theta_t - theta_t-1);  theta_t+1 = y_t - lr g(y_t).
    The gradient at the look-ahead y_t, not at theta_t: taking it at theta_t fails here at every kappa,
    though at kappa = 100 and 1000 it changes the rate by less than the tolerance above."""
    name, settings, _ = theory(kappa)[f"nesterov, {setting}"]
    lr, mu = settings["lr"], settings["mu"]

    def nesterov(theta, previous, grad):
        look_ahead = theta + mu * (theta - previous)
        return look_ahead - lr * grad(look_ahead), theta

    np.testing.assert_allclose(repository_path(name, settings, kappa), reference_path(nesterov, kappa),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("key", ["quadratic", "rotated"])
@pytest.mark.parametrize("name", sorted(optimizer_paths.PANELS["quadratic"]["settings"]))
def test_every_optimizer_decreases_f_on_the_quadratic(panels, key, name):
    values = panels[key]["runs"][name]["f"]
    assert values[-1] < 1e-2 * values[0] and values.min() < 1e-3


def test_rmsprop_ends_bouncing_across_the_minimum(panels):
    """With |g| the same at both points, s -> g^2 and each step is lr long per coordinate: RMSProp (lr 0.1)
    ends jumping between (0.05, 0.05) and (-0.05, -0.05), and f - f* stays at 0.1 * 0.05^2 + 2 * 0.05^2."""
    run = panels["quadratic"]["runs"]["rmsprop"]
    last = np.stack([run["x"][-2:], run["y"][-2:]], axis=1)
    np.testing.assert_allclose(np.abs(last), 0.05, rtol=1e-2)
    np.testing.assert_allclose(last[0], -last[1], rtol=1e-2)
    assert run["f"][-1] == pytest.approx(2.1 * 0.05 ** 2, rel=2e-2)


def test_rotation_costs_only_the_per_coordinate_methods(panels):
    """GD, momentum and Nesterov are rotation-invariant: the same f - f*, step for step. RMSProp and Adam
    scale each coordinate on its own, which helps while the valley lies along an axis."""
    for name in ("sgd", "momentum", "nesterov"):
        np.testing.assert_allclose(panels["rotated"]["runs"][name]["f"], panels["quadratic"]["runs"][name]["f"],
                                   rtol=1e-6, atol=1e-12)
    for name in ("rmsprop", "adam"):
        steps = [panels[key]["runs"][name]["steps_to_target"] for key in ("quadratic", "rotated")]
        assert steps[1] > 1.2 * steps[0], (name, steps)


@pytest.mark.parametrize("values, first, stays", [
    ([5, 4, 0.5, 2, 0.1, 0.05], 2, 4),  # dips under 1 at step 2, bounces back, under for good from step 4
    ([0.5, 0.4], 0, 0),
    ([5, 0.5, 2], 1, None),  # ends above: never for good
    ([5, float("nan"), 0.5], 2, 2),  # NaN is not below
    ([5, 4], None, None)])
def test_steps_until_the_first_time_and_for_good(values, first, stays):
    assert optimizer_paths.steps_until(values, 1) == first
    assert optimizer_paths.steps_until_it_stays(values, 1) == stays


def test_rmsprop_touches_the_target_but_never_stays_below_it(panels):
    run = panels["quadratic"]["runs"]["rmsprop"]
    assert run["steps_to_target"] is not None and run["steps_to_stay"] is None
    assert panels["quadratic"]["runs"]["adam"]["steps_to_stay"] == panels["quadratic"]["runs"]["adam"]["steps_to_target"]


def test_writes_the_figure_and_the_tables(tmp_path, capsys, monkeypatch, panels, rate_rows):
    """The script's own main, on the paths and rates the fixtures computed already (not a second time)."""
    monkeypatch.setattr(optimizer_paths, "run_panels", lambda: panels)
    monkeypatch.setattr(optimizer_paths, "rates", lambda: list(rate_rows.values()))
    out = tmp_path / "paths"
    optimizer_paths.main(["--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["paths.json", "paths.png", "rates.json", "summary.md"]
    rates = json.loads((out / "rates.json").read_text())["rates"]
    assert [(r["kappa"], r["method"]) for r in rates] == [(k, m) for k in KAPPAS for m in theory(k)]
    assert all({"settings", "theory", "measured"} <= set(r) for r in rates)
    paths = json.loads((out / "paths.json").read_text())
    assert paths["quadratic"]["optimizers"]["adam"]["steps_to_target"] > 0
    summary = (out / "summary.md").read_text()
    assert "| adam |" in summary and "| nesterov, textbook |" in summary and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # a folder that holds results is refused
        optimizer_paths.main(["--out", str(out)])
    assert exit_info.value.code == 2
