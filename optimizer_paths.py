"""See the five optimizers move: their paths on 2-D functions, and their rates against theory.

    python optimizer_paths.py                      # writes results/paths/
    python optimizer_paths.py --out runs/paths

The optimizers are the ones MNIST trains with (train_utils.py, optimized_sgd.py), unchanged,
on params that are a pytree of two scalars, {"x": x, "y": y}; each step takes the gradient at
optimizer.grad_point, as mlp_mnist's training step does. Everything runs in float64, so the
rates below are measured far above rounding. Writes, into --out (new or empty):
  paths.png    each optimizer's path over the contour lines of three functions, and
               f(theta_t) - f* against t on a log scale
  paths.json   the settings of every path, and the steps each optimizer needs to bring
               f - f* under 1e-3 on the quadratic and on the same quadratic rotated by 45 degrees
  rates.json   on quadratics of condition number kappa = L / m: the rate per step at which
               gradient descent, heavy-ball momentum and Nesterov shrink the error
               ||theta_t - theta*||, measured and from theory
  summary.md   both tables, as the README shows them
Exit status: 0 done, 2 bad --out.
"""
import argparse
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

import reporting
from optimized_sgd import make_optimizer


# --- The functions -----------------------------------------------------------------------


def quadratic(p):
    """f = 0.1 x^2 + 2 y^2: curvatures 0.2 and 4 (condition number 20) along the axes; f* = 0 at (0, 0)."""
    return 0.1 * p["x"] ** 2 + 2 * p["y"] ** 2


def rotated_quadratic(p):
    """The same quadratic turned by 45 degrees: its valley runs along the diagonal y = x."""
    along, across = (p["x"] + p["y"]) / math.sqrt(2), (p["y"] - p["x"]) / math.sqrt(2)
    return 0.1 * along ** 2 + 2 * across ** 2


def rosenbrock(p):
    """(1 - x)^2 + 100 (y - x^2)^2: a curved, narrow valley; f* = 0 at (1, 1)."""
    return (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2


# Each panel: the function, where the paths start, how many steps, and every optimizer's
# settings, chosen so that each path shows its character (see the README).
QUADRATIC_SETTINGS = {
    "sgd": dict(lr=0.4),  # 1 - 0.4 * 4 = -0.6: each step overshoots across the valley and back
    "momentum": dict(lr=0.4, mu=0.5),  # the same lr: the velocity cancels the zig-zag, keeps the descent
    "nesterov": dict(lr=0.3, mu=0.5),  # its look-ahead makes it unstable sooner: at lr 0.4 it diverges here
    "rmsprop": dict(lr=0.1, rho=0.9),  # steps ~lr long whatever the curvature
    "adam": dict(lr=0.1),
}
ROTATED_START = ((-5.0 + 2.0) / math.sqrt(2), (-5.0 - 2.0) / math.sqrt(2))  # (-5, -2), turned with the function
PANELS = {
    "quadratic": dict(f=quadratic, title="f = 0.1 x² + 2 y²", start=(-5.0, -2.0), steps=300,
                      minimum=(0.0, 0.0), box=((-5.5, 1.5), (-3, 3)), settings=QUADRATIC_SETTINGS),
    "rotated": dict(f=rotated_quadratic, title="the same, rotated by 45°", start=ROTATED_START, steps=300,
                    minimum=(0.0, 0.0), box=((-4.5, 2.5), (-5.5, 1.5)), settings=QUADRATIC_SETTINGS),
    "rosenbrock": dict(f=rosenbrock, title="Rosenbrock (1 - x)² + 100 (y - x²)²", start=(-1.5, 2.0), steps=2000,
                       minimum=(1.0, 1.0), box=((-2, 2), (-1, 3)), settings={
                           "sgd": dict(lr=0.001),  # about 2 / (the curvature across the valley)
                           "momentum": dict(lr=0.001, mu=0.9),
                           "nesterov": dict(lr=0.001, mu=0.9),
                           "rmsprop": dict(lr=0.003, rho=0.9),
                           "adam": dict(lr=0.05)}),
}
TARGET = 1e-3  # the rotation lesson: steps until f - f* < TARGET
KAPPAS = (10, 100, 1000)
RATE_STEPS = 20_000  # gradient descent at kappa = 1000 gets to ~1e-17 in these
RATE_FLOOR = 1e-250  # float64 goes down to 1e-308: the runs stop counting here, far above it
STEPS_TO = 1e-6  # how many steps each method needs to bring ||e_t|| under this


# --- Running an optimizer ---------------------------------------------------------------


def trajectory(optimizer, f, start, steps):
    """theta_0 = start, then `steps` steps of `optimizer` on f -> {"x": (steps + 1,), "y": (steps + 1,)}.

    One step is what mlp_mnist's training step does: the gradient at optimizer.grad_point
    (theta itself, or Nesterov's look-ahead), then optimizer.update. The path records theta.
    """

    def step(carry, _):
        params, state = carry
        grads = jax.grad(f)(optimizer.grad_point(params, state))
        params, state = optimizer.update(grads, state, params)
        return (params, state), params

    (_, _), path = jax.lax.scan(step, (start, optimizer.init(start)), None, length=steps)
    return jax.tree_util.tree_map(lambda first, rest: jnp.concatenate([first[None], rest]), start, path)


def run(name, settings, f, start, steps):
    """-> (xs, ys, f(theta_t)) numpy arrays (steps + 1,), in float64."""
    with jax.enable_x64(True):
        point = {"x": jnp.float64(start[0]), "y": jnp.float64(start[1])}
        optimizer = make_optimizer(name, **settings)
        path = jax.jit(lambda p: trajectory(optimizer, f, p, steps))(point)
        values = jax.vmap(f)(path)
        return np.asarray(path["x"]), np.asarray(path["y"]), np.asarray(values)


def steps_until(values, target):
    """The first t with values[t] < target, or None when it never gets there."""
    below = np.flatnonzero(np.asarray(values) < target)
    return int(below[0]) if below.size else None


# --- Rates against theory ---------------------------------------------------------------


def theory(kappa, m=1.0):
    """-> {method: (optimizer name, settings, rate per step)} for a quadratic with curvatures m and L = kappa m."""
    L = kappa * m
    root = math.sqrt(kappa)
    return {
        "gradient descent": ("sgd", dict(lr=2 / (L + m)), (kappa - 1) / (kappa + 1)),
        "heavy ball": ("momentum", dict(lr=4 / (math.sqrt(L) + math.sqrt(m)) ** 2,
                                        mu=((root - 1) / (root + 1)) ** 2), (root - 1) / (root + 1)),
        "nesterov": ("nesterov", dict(lr=1 / L, mu=(root - 1) / (root + 1)), 1 - 1 / root),
    }


def error_norms(name, settings, kappa, steps=RATE_STEPS):
    """||theta_t - theta*|| for t = 0..steps on f = (x^2 + kappa y^2) / 2 (m = 1, L = kappa), from (1, 1)."""
    xs, ys, _ = run(name, settings, lambda p: 0.5 * (p["x"] ** 2 + kappa * p["y"] ** 2), (1.0, 1.0), steps)
    return np.hypot(xs, ys)


def measured_rate(errors, floor=RATE_FLOOR):
    """The geometric mean of ||e_t+1|| / ||e_t|| over the late steps: the second half of the run,
    which ends where ||e_t|| falls under `floor` (or at the last step).

    Late, because the optimal heavy ball and Nesterov have a double root: their error falls as
    t rho^t, not rho^t, and the factor t fades from the ratio only as t grows (by ln 2 / (end / 2)).
    """
    end = steps_until(errors, floor) or len(errors) - 1
    start = end // 2
    return (errors[end] / errors[start]) ** (1 / (end - start))


def rates():
    """-> a list of {kappa, method, optimizer, settings, theory, measured, steps_to_1e-6} rows."""
    rows = []
    for kappa in KAPPAS:
        for method, (name, settings, rate) in theory(kappa).items():
            errors = error_norms(name, settings, kappa)
            rows.append(dict(kappa=kappa, method=method, optimizer=name, settings=settings, theory=rate,
                             measured=measured_rate(errors), steps_to_1e_6=steps_until(errors, STEPS_TO)))
    return rows


# --- The figure and the files ------------------------------------------------------------


def settings_text(settings):
    return ", ".join(f"{k} {v:g}" for k, v in settings.items())


def plot_paths(panels, path):
    """Top row: contours and paths; bottom row: f(theta_t) - f* against t (log scale)."""
    plt = reporting.plt
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 10.5))
    colors = dict(zip(QUADRATIC_SETTINGS, plt.cm.tab10.colors))
    for column, (key, panel) in enumerate(panels.items()):
        ax_path, ax_error = axes[0, column], axes[1, column]
        (x0, x1), (y0, y1) = panel["box"]
        grid_x, grid_y = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
        grid_f = np.asarray(panel["f"]({"x": grid_x, "y": grid_y}))
        levels = np.geomspace(max(grid_f.min(), 1e-3), grid_f.max(), 14)
        ax_path.contour(grid_x, grid_y, grid_f, levels=levels, colors="0.75", linewidths=0.7)
        for name, result in panel["runs"].items():
            label = f"{name} ({settings_text(panel['settings'][name])})"
            ax_path.plot(result["x"], result["y"], "-o", color=colors[name], markersize=2.5, linewidth=1,
                         markevery=range(0, 60), label=label)  # a dot for each of the first 60 steps
            ax_error.plot(np.maximum(result["f"], 1e-300), color=colors[name], label=label)
        ax_path.plot(*panel["start"], "ks", markersize=5)
        ax_path.plot(*panel["minimum"], "k*", markersize=10)
        ax_path.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y", aspect="equal",
                    title=f"{panel['title']}\nstart ({panel['start'][0]:.2f}, {panel['start'][1]:.2f}), "
                          f"{panel['steps']} steps")
        ax_path.legend(fontsize=7, loc="lower right" if key != "rosenbrock" else "upper right")
        ax_error.set(yscale="log", ylim=(1e-16, None), xlabel="step t", ylabel="f(θ_t) - f*")
        ax_error.axhline(TARGET, color="0.5", linestyle=":", linewidth=1)
    fig.tight_layout()
    reporting.save_figure(fig, path)


def markdown(panels, rate_rows):
    lines = [f"Steps until f - f* < {TARGET:g} (\"never\": not within {panels['quadratic']['steps']} steps), "
             "from (-5, -2) and from that point rotated with the function:", "",
             "| optimizer | settings | f = 0.1 x² + 2 y² | rotated by 45° |", "| --- | --- | --- | --- |"]
    for name, settings in QUADRATIC_SETTINGS.items():
        counts = [panels[key]["runs"][name]["steps_to_target"] for key in ("quadratic", "rotated")]
        lines.append(f"| {name} | {settings_text(settings)} | "
                     + " | ".join("never" if c is None else str(c) for c in counts) + " |")
    lines += ["", "Rate per step at which ||θ_t - θ*|| shrinks on f = (m x² + L y²) / 2, m = 1, L = κ:", "",
              "| κ | method | settings | theory | measured | measured / theory | steps to 1e-6 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rate_rows:
        lines.append(f"| {row['kappa']} | {row['method']} | {settings_text(row['settings'])} | {row['theory']:.5f} | "
                     f"{row['measured']:.5f} | {row['measured'] / row['theory']:.4f} | {row['steps_to_1e_6']} |")
    return "\n".join(lines) + "\n"


def run_panels():
    """Every optimizer on every panel -> PANELS with a "runs" entry: {name: {x, y, f, steps_to_target}}."""
    panels = {key: dict(panel) for key, panel in PANELS.items()}
    for panel in panels.values():
        panel["runs"] = {}
        for name, settings in panel["settings"].items():
            xs, ys, values = run(name, settings, panel["f"], panel["start"], panel["steps"])
            panel["runs"][name] = dict(x=xs, y=ys, f=values, steps_to_target=steps_until(values, TARGET))
    return panels


def main(argv=None):
    p = argparse.ArgumentParser(description="The five optimizers on 2-D functions, and their rates against theory.",
                                epilog="Exit status: 0 done, 2 bad --out.")
    p.add_argument("--out", default="results/paths", metavar="DIR",
                   help="new or empty folder for paths.png, paths.json, rates.json, summary.md (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        reporting.claim_out_dir(args.out)
    except reporting.OutDirError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

    panels = run_panels()
    rate_rows = rates()
    reporting.write_json(f"{args.out}/paths.json", {key: dict(
        function=panel["title"], start=panel["start"], steps=panel["steps"], minimum=panel["minimum"],
        optimizers={name: dict(settings=panel["settings"][name], final_f=float(run["f"][-1]),
                               steps_to_target=run["steps_to_target"]) for name, run in panel["runs"].items()})
        for key, panel in panels.items()} | {"target": TARGET})
    reporting.write_json(f"{args.out}/rates.json", dict(
        function="f = (m x^2 + L y^2) / 2, m = 1, L = kappa, from (1, 1), float64",
        measured=f"geometric mean of ||e_t+1|| / ||e_t|| over the second half of the run, which ends at "
                 f"{RATE_STEPS} steps or where ||e_t|| < {RATE_FLOOR:g}", rates=rate_rows))
    summary = markdown(panels, rate_rows)
    reporting.write_text(f"{args.out}/summary.md", summary)
    plot_paths(panels, f"{args.out}/paths.png")
    print(summary)
    print(f"wrote {args.out}/paths.png, paths.json, rates.json, summary.md")


if __name__ == "__main__":
    main()
