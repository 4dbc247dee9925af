"""See the optimizers move: their paths on 2-D functions, and their rates against theory.

    python optimizer_paths.py                      # writes runs/paths/ (runs/paths-2/, ... when taken)
    python optimizer_paths.py --out results/paths  # the folder docs/03-paths-and-theory.md quotes

The optimizers are the ones MNIST trains with (train_utils.py, optimized_sgd.py), unchanged,
on params that are a pytree of two scalars, {"x": x, "y": y}; each step is mlp_mnist.step, the
step mlp_mnist.py trains with. Everything runs in float64, so the rates below are measured far
above rounding. docs/explorer.html runs the same rules in a browser, with sliders.
Writes, into --out (new or empty):
  paths.png    each optimizer's path over the contour lines of three functions (with a zoom
               on the quadratics' minimum), and f(theta_t) - f* against t on a log scale
  paths.json   the settings of every path, and the steps each optimizer needs to bring
               f - f* under 1e-3 (the first time, and for good: from then on it stays below)
               on the quadratic and on the same quadratic rotated by 45 degrees
  rates.json   on quadratics of condition number kappa = L / m: the rate per step at which
               gradient descent, heavy-ball momentum and Nesterov (at two settings: the
               textbook one and the best one) shrink the error ||theta_t - theta*||,
               measured and from theory
  summary.md   both tables, as docs/03-paths-and-theory.md shows them
Exit status: 0 done, 2 bad --out or a disk error, 130 interrupted.
"""
import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from plumbing import cli, exits, files, plots, provenance
from mlp_mnist import step
from optimized_sgd import OPTIMIZERS, make_optimizer


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


# Each panel: the function, where the paths start, how many steps, and the settings of every optimizer
# whose registry entry has paths (optimized_sgd.OPTIMIZERS), chosen so that each path shows its character
# (see docs/03-paths-and-theory.md): the quadratics share one set, Rosenbrock has its own.
def path_settings(function):
    """{name: settings on `function` ("quadratic" or "rosenbrock")} of every optimizer that draws paths (read once,
    when PANELS is made: an entry must be in the registry when this module is imported)."""
    return {name: entry.paths[function] for name, entry in OPTIMIZERS.items() if entry.paths}


ROTATED_START = ((-5.0 + 2.0) / math.sqrt(2), (-5.0 - 2.0) / math.sqrt(2))  # (-5, -2), turned with the function
PANELS = {
    "quadratic": dict(f=quadratic, title="f = 0.1 x² + 2 y²", start=(-5.0, -2.0), steps=300,
                      minimum=(0.0, 0.0), box=((-5.5, 1.5), (-3, 3)), settings=path_settings("quadratic")),
    "rotated": dict(f=rotated_quadratic, title="the same, rotated by 45°", start=ROTATED_START, steps=300,
                    minimum=(0.0, 0.0), box=((-4.5, 2.5), (-5.5, 1.5)), settings=path_settings("quadratic")),
    "rosenbrock": dict(f=rosenbrock, title="Rosenbrock (1 - x)² + 100 (y - x²)²", start=(-1.5, 2.0), steps=2000,
                       minimum=(1.0, 1.0), box=((-2, 2), (-1, 3)), settings=path_settings("rosenbrock")),
}
TARGET = 1e-3  # the rotation lesson: steps until f - f* < TARGET
KAPPAS = (10, 100, 1000)
RATE_STEPS = 20_000  # gradient descent at kappa = 1000 gets to ~1e-17 in these
RATE_FLOOR = 1e-250  # float64 goes down to 1e-308: the runs stop counting here, far above it
STEPS_TO = 1e-6  # how many steps each method needs to bring ||e_t|| under this


# --- Running an optimizer ---------------------------------------------------------------


def trajectory(optimizer, f, start, steps):
    """theta_0 = start, then `steps` steps of `optimizer` on f -> {"x": (steps + 1,), "y": (steps + 1,)}.

    One step is mlp_mnist.step, the one mlp_mnist.py trains with: the gradient at
    optimizer.grad_point (theta itself, or Nesterov's look-ahead), then optimizer.update.
    Here there is no batch: the loss is f(params). The path records theta.
    """
    def scan_step(carry, _):
        params, state, _loss = step(optimizer, lambda params, _batch: f(params), *carry, None)
        return (params, state), params

    _, path = jax.lax.scan(scan_step, (start, optimizer.init(start)), None, length=steps)
    return jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), start, path)


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


def steps_until_it_stays(values, target):
    """The first t from which values stay below target (all of values[t:] < target), or None when they never do
    within the run. Not the same as steps_until: RMSProp, say, dips under and bounces back above."""
    above = np.flatnonzero(~(np.asarray(values) < target))  # NaN counts as above
    if not above.size:
        return 0
    return int(above[-1]) + 1 if above[-1] + 1 < len(values) else None


# --- Rates against theory ---------------------------------------------------------------


# How theory() chooses each method's settings, in words (summary.md and rates.json repeat them).
SETTING_RULES = {
    "gradient descent": "lr 2/(L+m): rate (κ-1)/(κ+1)",
    "heavy ball": "lr 4/(√L+√m)², mu ((√κ-1)/(√κ+1))²: rate (√κ-1)/(√κ+1), the best on quadratics (Polyak 1964)",
    "nesterov, textbook": "lr 1/L, mu (√κ-1)/(√κ+1), the textbook setting (Nesterov, Introductory Lectures "
                          "on Convex Optimization, 2004): rate 1-1/√κ",
    "nesterov, optimal": "lr 4/(3L+m), mu (√(3κ+1)-2)/(√(3κ+1)+2): rate 1-2/√(3κ+1), "
                         "the best on quadratics (Lessard, Recht & Packard 2016)",
}


def theory(kappa, m=1.0):
    """-> {method: (optimizer name, settings, rate per step)} for a quadratic with curvatures m and L = kappa m.

    Each rate is the largest |root| of the method's characteristic polynomial at its settings
    (docs/02-optimizers.md derives them). Nesterov twice: the textbook setting, and the best
    one on quadratics (Lessard, Recht & Packard 2016, https://arxiv.org/abs/1408.3595).
    """
    L = kappa * m
    root = math.sqrt(kappa)
    root3 = math.sqrt(3 * kappa + 1)
    return {
        "gradient descent": ("sgd", dict(lr=2 / (L + m)), (kappa - 1) / (kappa + 1)),
        "heavy ball": ("momentum", dict(lr=4 / (math.sqrt(L) + math.sqrt(m)) ** 2,
                                        mu=((root - 1) / (root + 1)) ** 2), (root - 1) / (root + 1)),
        "nesterov, textbook": ("nesterov", dict(lr=1 / L, mu=(root - 1) / (root + 1)), 1 - 1 / root),
        "nesterov, optimal": ("nesterov", dict(lr=4 / (3 * L + m), mu=(root3 - 2) / (root3 + 2)), 1 - 2 / root3),
    }


def error_norms(name, settings, kappa, steps=RATE_STEPS):
    """||theta_t - theta*|| for t = 0..steps on f = (x^2 + kappa y^2) / 2 (m = 1, L = kappa), from (1, 1)."""
    xs, ys, _ = run(name, settings, lambda p: 0.5 * (p["x"] ** 2 + kappa * p["y"] ** 2), (1.0, 1.0), steps)
    return np.hypot(xs, ys)


def measured_rate(errors, floor=RATE_FLOOR):
    """The geometric mean of ||e_t+1|| / ||e_t|| over the late steps: the second half of the run,
    which ends where ||e_t|| falls under `floor` (or at the last step).

    Late, because the heavy ball and Nesterov at these settings have a double root: their error falls as
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
                             measured=measured_rate(errors), steps_to_1e_6=steps_until_it_stays(errors, STEPS_TO)))
    return rows


# --- The figure and the files ------------------------------------------------------------


def settings_text(settings):
    return ", ".join(f"{k} {v:g}" for k, v in settings.items())


# Where each path panel puts its legend and its zoom on the minimum (axes fractions), both
# in corners that the paths leave empty; Rosenbrock has no zoom.
LAYOUT = {
    "quadratic": dict(name="the quadratic", legend="lower right", zoom=(0.66, 0.56, 0.33, 0.36), zoom_box=0.12),
    "rotated": dict(name="the rotated quadratic", legend="lower right", zoom=(0.1, 0.56, 0.33, 0.36), zoom_box=0.12),
    "rosenbrock": dict(name="Rosenbrock", legend="upper right", zoom=None),
}
# The steps that get a marker: every step of the quadratics' first 20 (the zig-zag, step by
# step); on Rosenbrock, where each path is at steps 10, 30, 100, ... (how far each got by when).
TARGET_STYLE = dict(color="0.3", linestyle=(0, (1, 3)), linewidth=1)
MARKED_STEPS = {"quadratic": list(range(1, 21)), "rotated": list(range(1, 21)),
                "rosenbrock": [10, 30, 100, 300, 1000, 2000]}


def marked_text(steps):
    """[1, 2, ..., 20] -> "1, 2, ... 20"; [10, 30, 100] -> "10, 30, 100"."""
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}, {steps[1]}, ... {steps[-1]}"
    return ", ".join(map(str, steps))


def draw_contours(ax, panel, box):
    (x0, x1), (y0, y1) = box
    grid_x, grid_y = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    grid_f = np.asarray(panel["f"]({"x": grid_x, "y": grid_y}))
    levels = np.geomspace(max(grid_f.min(), 1e-4), grid_f.max(), 14)
    ax.contour(grid_x, grid_y, grid_f, levels=levels, colors="0.8", linewidths=0.7)
    ax.set(xlim=(x0, x1), ylim=(y0, y1), aspect="equal")


def draw_zoom(ax_path, panel, layout):
    """An inset on the minimum: the last 30 steps of every path, a marker at each."""
    half = layout["zoom_box"]
    inset = ax_path.inset_axes(layout["zoom"])
    draw_contours(inset, panel, ((-half, half), (-half, half)))
    for name, result in panel["runs"].items():
        inset.plot(result["x"][-31:], result["y"][-31:], linewidth=1, markersize=4, **OPTIMIZERS[name].style)
    inset.plot(*panel["minimum"], "k*", markersize=9, zorder=10)
    inset.set_title(f"zoom ±{half:g}: the last 30 steps", fontsize=8, pad=3)
    inset.tick_params(labelsize=7)
    ax_path.indicate_inset_zoom(inset, edgecolor="0.4")


def plot_paths(panels, path):
    """One row per function: left, contours and paths, with a zoom on the minimum; right, f(theta_t) - f*
    against t (log). 900 pixels wide: a documentation column's width."""
    plt = plots.plt
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, 4.3 * len(panels)), gridspec_kw=dict(width_ratios=[1.15, 1]))
    for row, (key, panel) in enumerate(panels.items()):
        ax_path, ax_error = axes[row, 0], axes[row, 1]
        draw_contours(ax_path, panel, panel["box"])
        for name, result in panel["runs"].items():
            ax_path.plot(result["x"], result["y"], linewidth=1.2, markevery=MARKED_STEPS[key],
                         markersize=3.5 if len(MARKED_STEPS[key]) > 10 else 7, markeredgecolor="k", markeredgewidth=0.3,
                         label=f"{name} ({settings_text(panel['settings'][name])})", **OPTIMIZERS[name].style)
            ax_error.plot(np.maximum(result["f"], 1e-300), linewidth=1.5,
                          **{k: v for k, v in OPTIMIZERS[name].style.items() if k != "marker"})
        ax_path.plot(*panel["start"], "s", color="k", markerfacecolor="white", markeredgewidth=1.5,
                     markersize=8, zorder=10, label="start")  # on top of every path's markers
        ax_path.plot(*panel["minimum"], "k*", markersize=11, zorder=10, label="minimum")
        ax_path.set(xlabel="x", ylabel="y",
                    title=f"{panel['title']}: start ({panel['start'][0]:.2f}, {panel['start'][1]:.2f}), "
                          f"{panel['steps']} steps\na marker at steps {marked_text(MARKED_STEPS[key])}")
        ax_path.title.set_fontsize(9)
        ax_path.legend(fontsize=7, loc=LAYOUT[key]["legend"], framealpha=0.9)
        if LAYOUT[key]["zoom"]:
            draw_zoom(ax_path, panel, LAYOUT[key])
        ax_error.axhline(TARGET, **TARGET_STYLE)
        ax_error.set(yscale="log", ylim=(1e-16, 1e3), xlabel="step t", ylabel="f(θ_t) - f*  (log scale)",
                     title=f"f(θ_t) - f* on {LAYOUT[key]['name']}")
        ax_error.title.set_fontsize(9)
    drawn = list(PANELS["quadratic"]["settings"])
    handles = [plt.Line2D([], [], linewidth=1.5, **{k: v for k, v in OPTIMIZERS[name].style.items() if k != "marker"})
               for name in drawn] + [plt.Line2D([], [], **TARGET_STYLE)]
    fig.legend(handles, drawn + [f"f - f* = {TARGET:g}"], loc="lower center", ncol=len(handles), fontsize=8,
               title="right column (settings in the legends on the left)", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    plots.save_figure(fig, path)


def markdown(panels, rate_rows):
    lines = [f"Steps until f - f* < {TARGET:g}: the first time, and for good (from then on it stays below; "
             f"\"never\": not within {panels['quadratic']['steps']} steps), from (-5, -2) and from that point rotated "
             "with the function:", "",
             "| optimizer | settings | f = 0.1 x² + 2 y²: first | for good | rotated by 45°: first | for good |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, settings in PANELS["quadratic"]["settings"].items():
        counts = [panels[key]["runs"][name][which] for key in ("quadratic", "rotated")
                  for which in ("steps_to_target", "steps_to_stay")]
        lines.append(f"| {name} | {settings_text(settings)} | "
                     + " | ".join("never" if c is None else str(c) for c in counts) + " |")
    lines += ["", "How each method's settings are chosen, on a quadratic with curvatures m to L (κ = L / m):", ""]
    lines += [f"- {method}: {rule}" for method, rule in SETTING_RULES.items()]
    lines += ["", "Rate per step at which ||θ_t - θ*|| shrinks on f = (m x² + L y²) / 2, m = 1, L = κ:", "",
              "| κ | method | settings | theory | measured | measured / theory | steps to 1e-6 for good |",
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
            panel["runs"][name] = dict(x=xs, y=ys, f=values, steps_to_target=steps_until(values, TARGET),
                                       steps_to_stay=steps_until_it_stays(values, TARGET))
    return panels


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    p = argparse.ArgumentParser(description="The optimizers on 2-D functions, and their rates against theory.",
                                epilog="Exit status: 0 done, 2 bad --out or a disk error, 130 interrupted.")
    cli.add_flags(p, "--out")
    args = p.parse_args(argv)
    args.out = args.out or files.default_out_dir("paths")
    exits.claim_out_dir_or_exit(args.out)

    panels = run_panels()
    rate_rows = rates()
    files.write_json(f"{args.out}/paths.json", {key: dict(
        function=panel["title"], start=panel["start"], steps=panel["steps"], minimum=panel["minimum"],
        optimizers={name: dict(settings=panel["settings"][name], final_f=float(run["f"][-1]),
                               last_two_points=[[float(run["x"][t]), float(run["y"][t])] for t in (-2, -1)],
                               steps_to_target=run["steps_to_target"], steps_to_stay=run["steps_to_stay"])
                    for name, run in panel["runs"].items()})
        for key, panel in panels.items()} | {"target": TARGET})
    files.write_json(f"{args.out}/rates.json", dict(
        function="f = (m x^2 + L y^2) / 2, m = 1, L = kappa, from (1, 1), float64",
        measured=f"geometric mean of ||e_t+1|| / ||e_t|| over the second half of the run, which ends at "
                 f"{RATE_STEPS} steps or where ||e_t|| < {RATE_FLOOR:g}", setting_rules=SETTING_RULES, rates=rate_rows))
    summary = markdown(panels, rate_rows)
    files.write_markdown(f"{args.out}/summary.md", summary)
    plot_paths(panels, f"{args.out}/paths.png")
    print(summary)
    print(f"wrote {args.out}/paths.png, paths.json, rates.json, summary.md")


if __name__ == "__main__":
    exits.run_script(main)
