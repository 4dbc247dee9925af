"""How sharp is the loss? The top Hessian eigenvalue of the MLP, and gradient descent at the edge of stability.

    python sharpness.py                               # writes runs/sharpness/
    python sharpness.py --out results/sharpness       # the run docs/06-sharpness.md quotes

On a quadratic with largest curvature L, gradient descent is stable only when lr < 2 / L
(optimizer_paths.py). Here L is the sharpness of the MNIST MLP: lambda_max, the largest
eigenvalue of the Hessian of the whole-batch loss on the first --n-images training images.
The Hessian has 669,706^2 entries and is never formed: a Hessian-vector product is
forward-over-reverse differentiation, jax.jvp(jax.grad(f), (theta,), (v,)), and power
iteration on those products finds lambda_max. Writes, into --out (new or empty):
  sharpness.json  lambda_max at init for three set-ups (the recipe: raw 0-255 pixels and
                  cross-entropy / 10; pixels scaled to [0, 1]; true cross-entropy), the loss
                  and sharpness of full-batch gradient descent at each --lrs and of one
                  heavy-ball run, and the bisected learning rate at which GD blows up
  sharpness.png   training loss and sharpness against the step, each run's edge 2/lr
                  (heavy ball: (2 + 2 mu)/lr) dashed in the run's colour
  summary.md      the tables docs/06-sharpness.md shows
Exit status: 0 done, 2 bad input (arguments, data files, --out).
"""
import argparse
import functools
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import mlp_mnist
import reporting
from optimized_sgd import make_optimizer
from reporting import positive_float, positive_int, unit_interval
from train_utils import LAYER_SIZES, init_params, inputs_from_uint8, loss, make_step

# --- Defaults ------------------------------------------------------------------------------
N_IMAGES = 2000  # whole-batch loss on the first 2000 training images: one HVP ~0.08 s on 2 cores
SEED = 0  # the initial weights, as in mlp_mnist.py's seed 0
STEPS = 150  # long enough to see the sharpness reach the edge, hover there, then fall as the loss goes to 0
EVERY = 5  # sharpness every 5 steps: a warm-started power iteration costs a few HVPs each time
LRS = (0.01, 0.04, 0.08)  # 2/lr = 200, 50, 25: the recipe's lr far below the edge, two above it
MOMENTUM_LR, MU = 0.1, 0.9  # heavy ball: edge (2 + 2 * 0.9) / 0.1 = 38, below the initial sharpness
INIT_TOL, INIT_MAX_ITER = 1e-4, 500  # lambda_max at init: to 0.01% (the pixels' top eigenvalues lie close)
TRACE_TOL, TRACE_MAX_ITER = 1e-3, 50  # along the runs: warm-started, to 0.1%
BLOW_UP = 10.0  # a run diverges when some step's loss is above 10 x its initial loss (or not finite)
BISECT_RATIO = 1.05  # bisection stops when lr_diverges / lr_survives < 1.05
POWER_KEY = 1  # PRNG key of power iteration's random start vector

SETUPS = ("recipe", "pixels_0_1", "cross_entropy")


# --- Hessian-vector products and power iteration -------------------------------------------


def cross_entropy(params, batch):
    """True cross-entropy, the mean over the batch of -log p(correct class): 10 x train_utils.loss."""
    return 10.0 * loss(params, batch)


def hvp(loss_fn, params, batch, v):
    """H v, H the Hessian of loss_fn(., batch) at params; v shaped like params. Forward-over-reverse."""
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]


def hessian_matvec(loss_fn, params, batch):
    """-> the map v (n,) -> H v (n,) on flat vectors, n the number of parameters."""
    _, unravel = ravel_pytree(params)
    return lambda v: ravel_pytree(hvp(loss_fn, params, batch, unravel(v)))[0]


def power_iteration(matvec, v0, shift, tol, max_iter):
    """Power iteration on M + shift I, M symmetric (n, n) given as matvec (n,) -> (n,).

    -> (v (n,) unit, v . M v at the last v multiplied, growth ||(M + shift I) v||, iterations).
    Growth tends to the largest |eigenvalue| of M + shift I. Stopping rule: the relative
    change of growth between two iterations is below tol, or max_iter iterations are done.
    """

    def multiply(carry):
        v, _, growth, _, i = carry
        w = matvec(v)
        rayleigh = jnp.vdot(v, w)
        w = w + shift * v
        new_growth = jnp.linalg.norm(w)
        return w / new_growth, rayleigh, new_growth, growth, i + 1

    def keep_going(carry):
        _, _, growth, previous, i = carry
        return (i < max_iter) & (jnp.abs(growth - previous) > tol * growth)

    zero = jnp.zeros((), v0.dtype)
    start = (v0 / jnp.linalg.norm(v0), zero, zero, jnp.full((), jnp.inf, v0.dtype), 0)
    v, rayleigh, growth, _, iterations = jax.lax.while_loop(keep_going, multiply, start)
    return v, rayleigh, growth, iterations


def lambda_max(matvec, v0, tol, max_iter):
    """The largest eigenvalue of symmetric M (most positive, not largest in size) -> (lambda, v (n,), matvecs).

    Pass 1, power iteration on M, finds the largest |eigenvalue|, rho. Pass 2 iterates on
    M + rho I, whose eigenvalues are all >= 0 (about): its largest is lambda_max + rho. Pass 2
    starts from pass 1's vector, warm, unless pass 1 ended on a negative eigenvector, which
    M + rho I maps to (almost) 0; then it starts from v0 again. lambda is a Rayleigh quotient
    v . M v, so it never exceeds the true lambda_max.
    """
    v, rayleigh, radius, first = power_iteration(matvec, v0, 0.0, tol, max_iter)
    v = jnp.where(rayleigh < 0, v0, v)
    v, rayleigh, _, second = power_iteration(matvec, v, radius, tol, max_iter)
    return rayleigh, v, first + second


@functools.partial(jax.jit, static_argnames=("loss_fn", "max_iter"))
def sharpness(loss_fn, params, batch, v0, tol, max_iter):
    """lambda_max of the Hessian of loss_fn(., batch) at params -> (lambda, eigenvector (n,), HVPs used)."""
    return lambda_max(hessian_matvec(loss_fn, params, batch), v0, tol, max_iter)


def random_start(params, key=POWER_KEY):
    """A random flat vector (n,), n the number of parameters: power iteration's first start."""
    flat, _ = ravel_pytree(params)
    return jax.random.normal(jax.random.PRNGKey(key), flat.shape, flat.dtype)


# --- Full-batch training -------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("loss_fn", "name", "length"))
def train_steps(loss_fn, name, lr, mu, params, state, batch, length):
    """`length` full-batch steps of optimizer `name` -> (params, state, losses (length,) before each step)."""
    step = make_step(make_optimizer(name, lr, mu=mu), loss_fn)

    def one_step(carry, _):
        params, state, value = step(*carry, batch)
        return (params, state), value

    (params, state), losses = jax.lax.scan(one_step, (params, state), None, length=length)
    return params, state, losses


def edge(lr, mu=0.0):
    """The largest curvature a quadratic may have for GD (mu = 0) or heavy ball to stay stable: (2 + 2 mu) / lr."""
    return (2 + 2 * mu) / lr


def diverged(losses, blow_up=BLOW_UP):
    """True when a loss is not finite or rises above blow_up x the first one. losses: (steps,)."""
    losses = np.asarray(losses)
    return bool(not np.all(np.isfinite(losses)) or np.max(losses) > blow_up * losses[0])


def gd_blows_up(loss_fn, lr, params, batch, steps, chunk=25):
    """Does full-batch GD at lr blow up within `steps` steps? Runs `chunk` steps at a time and stops early."""
    state, losses = make_optimizer("sgd", lr).init(params), []
    for length in block_lengths(steps, chunk):
        params, state, block = train_steps(loss_fn, "sgd", lr, 0.0, params, state, batch, length)
        losses.extend(np.asarray(block).tolist())
        if diverged(losses):
            return True
    return False


def block_lengths(steps, every):
    """[every, every, ..., rest]: the blocks between two sharpness measurements, summing to steps."""
    return [every] * (steps // every) + ([steps % every] if steps % every else [])


def trace(loss_fn, name, lr, mu, params, batch, steps, every, v0):
    """Train full-batch for `steps` steps, measuring the sharpness every `every` steps (warm-started).

    -> dict(optimizer, lr, mu, edge, steps, loss (steps,), sharpness_steps, sharpness, diverged, hvps).
    loss[t] is the loss before step t; sharpness[k] is lambda_max at step sharpness_steps[k].
    Measuring stops once the loss is no longer finite.
    """
    state = make_optimizer(name, lr, mu=mu).init(params)
    value, v0, used = sharpness(loss_fn, params, batch, v0, TRACE_TOL, TRACE_MAX_ITER)
    losses, at, values, hvps = [], [0], [float(value)], int(used)
    for length in block_lengths(steps, every):
        params, state, block = train_steps(loss_fn, name, lr, mu, params, state, batch, length)
        losses.extend(np.asarray(block).tolist())
        if not np.all(np.isfinite(losses)):
            break
        value, v0, used = sharpness(loss_fn, params, batch, v0, TRACE_TOL, TRACE_MAX_ITER)
        at.append(len(losses))
        values.append(float(value))
        hvps += int(used)
    return dict(optimizer=name, lr=lr, mu=mu, edge=edge(lr, mu), steps=steps, loss=finite_or_none(losses),
                sharpness_steps=at, sharpness=finite_or_none(values), diverged=diverged(losses), hvps=hvps)


def shown(value, digits=4):
    """A number for the log and the tables, in `digits` significant digits; None (diverged) -> "-"."""
    return "-" if value is None else f"{value:.{digits}g}"


def finite_or_none(values):
    """JSON has no NaN or infinity: those become None (null)."""
    return [v if math.isfinite(v) else None for v in values]


def find_divergence(blows_up, start, ratio=BISECT_RATIO, max_doublings=20):
    """Bracket, then bisect (geometrically) the smallest lr at which blows_up(lr) is True.

    -> (lr_diverges, lr_survives, probes [(lr, blew up)]), lr_diverges / lr_survives < ratio;
    None for a side never found within max_doublings doublings or halvings of start.
    """
    probes = []

    def probe(lr):
        probes.append((lr, blows_up(lr)))
        return probes[-1][1]

    lr_diverges, lr_survives = (start, None) if probe(start) else (None, start)
    factor = 0.5 if lr_diverges else 2.0  # walk down from a start that blows up, up from one that survives
    lr = start
    for _ in range(max_doublings):
        if lr_diverges and lr_survives:
            break
        lr *= factor
        if probe(lr):
            lr_diverges = lr
        else:
            lr_survives = lr
    if not (lr_diverges and lr_survives):
        return lr_diverges, lr_survives, probes
    while lr_diverges / lr_survives >= ratio:
        middle = math.sqrt(lr_diverges * lr_survives)
        if probe(middle):
            lr_diverges = middle
        else:
            lr_survives = middle
    return lr_diverges, lr_survives, probes


# --- The experiment --------------------------------------------------------------------------


def setup_batches(images, labels):
    """uint8 images (N, 28, 28), labels (N,) -> {setup: (loss_fn, (inputs (N, 784), one-hot (N, 10)))}."""
    inputs = inputs_from_uint8(jnp.asarray(images))
    targets = jax.nn.one_hot(jnp.asarray(labels), LAYER_SIZES[-1], dtype=jnp.float32)
    return {"recipe": (loss, (inputs, targets)),
            "pixels_0_1": (loss, (inputs / 255.0, targets)),
            "cross_entropy": (cross_entropy, (inputs, targets))}


def measure(images, labels, seed, steps, every, lrs, momentum_lr, mu, log=print):
    """The whole experiment on one set of images -> the dict sharpness.json holds."""
    params = init_params(jax.random.PRNGKey(seed))
    v0 = random_start(params)
    batches = setup_batches(images, labels)
    init, top_vector = {}, {}
    for setup in SETUPS:
        loss_fn, batch = batches[setup]
        value, top_vector[setup], used = sharpness(loss_fn, params, batch, v0, INIT_TOL, INIT_MAX_ITER)
        init[setup] = dict(lambda_max=float(value), two_over_lambda=2 / float(value), hvps=int(used))
        log(f"{setup:>14}: lambda_max {float(value):.4g}, 2/lambda {2 / float(value):.4g} ({int(used)} HVPs)")

    loss_fn, batch = batches["recipe"]
    runs = []
    for name, lr, run_mu in [("sgd", lr, 0.0) for lr in lrs] + [("momentum", momentum_lr, mu)]:
        started = time.perf_counter()
        run = trace(loss_fn, name, lr, run_mu, params, batch, steps, every, top_vector["recipe"])
        runs.append(run)
        values = [v for v in run["sharpness"] if v is not None]
        log(f"{name} lr {lr:g} mu {run_mu:g}: edge {shown(run['edge'])}, sharpness {shown(values[0])} -> "
            f"max {shown(max(values))}, last {shown(values[-1])}; loss {shown(run['loss'][0])} -> "
            f"{shown(run['loss'][-1])}{', DIVERGED' if run['diverged'] else ''} "
            f"({run['hvps']} HVPs, {time.perf_counter() - started:.0f} s)")

    # Bisection starts at the largest GD learning rate that survived its trace: fewer runs.
    survived = [run["lr"] for run in runs if run["optimizer"] == "sgd" and not run["diverged"]]
    start = max(survived + [init["recipe"]["two_over_lambda"]])
    started = time.perf_counter()
    lr_diverges, lr_survives, probes = find_divergence(lambda lr: gd_blows_up(loss_fn, lr, params, batch, steps),
                                                       start)
    log(f"full-batch GD, {steps} steps: blows up at lr {shown(lr_diverges)}, survives at lr {shown(lr_survives)} "
        f"(2/lambda_init = {init['recipe']['two_over_lambda']:.4g}; {len(probes)} runs, "
        f"{time.perf_counter() - started:.0f} s)")
    return dict(n_images=len(images), seed=seed, init=init, runs=runs,
                divergence=dict(lr_diverges=lr_diverges, lr_survives=lr_survives, steps=steps, blow_up=BLOW_UP,
                                probes=[dict(lr=lr, diverged=d) for lr, d in probes]),
                settings=dict(every=every, init_tol=INIT_TOL, init_max_iter=INIT_MAX_ITER, trace_tol=TRACE_TOL,
                              trace_max_iter=TRACE_MAX_ITER, bisect_ratio=BISECT_RATIO))


# --- The figure and the summary ---------------------------------------------------------------


def run_label(run):
    mu = f", μ {run['mu']:g}" if run["optimizer"] == "momentum" else ""
    name = "GD" if run["optimizer"] == "sgd" else "heavy ball"
    return f"{name}, lr {run['lr']:g}{mu}: edge {run['edge']:.3g}"


def plot_traces(result, path):
    """Left: full-batch training loss (log) against the step; right: sharpness, each run's edge dashed."""
    plt = reporting.plt
    fig, (ax_loss, ax_sharp) = plt.subplots(1, 2, figsize=(12, 4.8))
    for run, color in zip(result["runs"], plt.cm.tab10.colors):
        losses = np.array([np.nan if v is None else v for v in run["loss"]])
        ax_loss.plot(np.arange(len(losses)), losses, color=color, linewidth=1.3, label=run_label(run))
        values = np.array([np.nan if v is None else v for v in run["sharpness"]])
        ax_sharp.plot(run["sharpness_steps"], values, color=color, marker="o", markersize=2.5, linewidth=1.3)
        ax_sharp.axhline(run["edge"], color=color, linestyle="--", linewidth=1.2)
    top = max([r["edge"] for r in result["runs"]] + [v for r in result["runs"] for v in r["sharpness"] if v])
    ax_loss.set(xlabel="step", ylabel="training loss (cross-entropy / 10), whole batch", yscale="log",
                title=f"full-batch training on the first {result['n_images']} images")
    ax_sharp.set(xlabel="step", ylabel="sharpness λ_max of the Hessian", ylim=(0, 1.08 * top),
                 title="sharpness; dashed: each run's edge (2 + 2μ) / lr")
    fig.legend(*ax_loss.get_legend_handles_labels(), loc="lower center", ncol=len(result["runs"]), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    reporting.save_figure(fig, path)


def steps_of(result):
    return result["runs"][0]["steps"]


def markdown(result, command):
    """The tables of docs/06-sharpness.md, from one result."""
    init = result["init"]
    lines = [f"`{command}`: first {result['n_images']} training images, seed {result['seed']}.", "",
             "| set-up | λ_max at init | 2 / λ_max | lr 0.01 as a fraction of 2 / λ_max |",
             "| --- | ---: | ---: | ---: |"]
    names = {"recipe": "the recipe: raw pixels 0-255, cross-entropy / 10", "pixels_0_1": "pixels scaled to [0, 1]",
             "cross_entropy": "true cross-entropy (x 10)"}
    for setup in SETUPS:
        row = init[setup]
        lines.append(f"| {names[setup]} | {row['lambda_max']:.4g} | {row['two_over_lambda']:.4g} | "
                     f"{0.01 / row['two_over_lambda']:.3g} |")
    marks = sorted({0, steps_of(result) // 3, 2 * steps_of(result) // 3, steps_of(result)})
    lines += ["", "| run | edge (2 + 2μ) / lr | " + " | ".join(f"sharpness at step {t}" for t in marks)
              + f" | highest | loss at step 0 | loss at step {steps_of(result) - 1} |", "| --- |" + " ---: |" * (len(marks) + 4)]
    for run in result["runs"]:
        at = dict(zip(run["sharpness_steps"], run["sharpness"]))
        values = [v for v in run["sharpness"] if v is not None]
        lines.append(f"| {run_label(run).split(':')[0]} | {shown(run['edge'], 3)} | "
                     + " | ".join(shown(at.get(t), 3) for t in marks)
                     + f" | {shown(max(values), 3)} | {shown(run['loss'][0], 3)} | {shown(run['loss'][-1], 3)} |")
    d = result["divergence"]
    ratio = d["lr_survives"] / init["recipe"]["two_over_lambda"] if d["lr_survives"] else None
    lines += ["", f"Full-batch GD, {d['steps']} steps, blows up (a loss above {d['blow_up']:g} x the first, or not "
                  f"finite) at lr {shown(d['lr_diverges'])} and survives at lr {shown(d['lr_survives'])}: "
                  f"{shown(ratio, 3)} x 2 / λ_init."]
    return "\n".join(lines) + "\n"


# --- Command line ------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        description="Sharpness (top Hessian eigenvalue) of the MNIST MLP, and full-batch GD at the edge of stability.",
        epilog="Exit status: 0 done, 2 bad input.")
    p.add_argument("--n-images", type=positive_int, default=N_IMAGES,
                   help="the loss is the whole-batch loss on the first N training images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="seeds the initial weights (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=STEPS,
                   help="full-batch steps of each run and of each bisection run (default: %(default)s)")
    p.add_argument("--every", type=positive_int, default=EVERY,
                   help="measure the sharpness every K steps (default: %(default)s)")
    p.add_argument("--lrs", type=positive_float, nargs="+", default=list(LRS), metavar="LR",
                   help="learning rates of the gradient-descent runs (default: %(default)s)")
    p.add_argument("--momentum-lr", type=positive_float, default=MOMENTUM_LR,
                   help="learning rate of the heavy-ball run (default: %(default)s)")
    p.add_argument("--mu", type=unit_interval, default=MU, help="momentum of the heavy-ball run (default: %(default)s)")
    mlp_mnist.add_data_dir_argument(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write sharpness.json, sharpness.png and summary.md here; DIR must be new or empty "
                        "(default: runs/sharpness, or runs/sharpness-2, -3, ... when that one holds files)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out = args.out or reporting.default_out_dir("sharpness")
    train_set, _ = mlp_mnist.load_data_or_exit(parser, args.data_dir, args.n_images, out=args.out)
    if len(train_set) < args.n_images:
        parser.error(f"argument --n-images: {args.n_images} is more than the {len(train_set)} training images")
    start = time.perf_counter()
    result = measure(train_set.data.numpy(), train_set.targets.numpy(), args.seed, args.steps, args.every,
                     args.lrs, args.momentum_lr, args.mu)
    result["seconds"] = time.perf_counter() - start
    result["machine"] = reporting.machine()
    command = "python sharpness.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    result["command"] = command
    reporting.write_json(f"{args.out}/sharpness.json", result)
    plot_traces(result, f"{args.out}/sharpness.png")
    reporting.write_text(f"{args.out}/summary.md", markdown(result, command))
    print(f"{result['seconds']:.0f} s; wrote {args.out}/sharpness.json, sharpness.png, summary.md")


if __name__ == "__main__":
    main()
