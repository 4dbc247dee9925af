"""How sharp is the loss? The top Hessian eigenvalue of the MLP, and training at the edge of stability.

    python sharpness.py                               # writes runs/sharpness/ (about 8 minutes on 2 cores)
    python sharpness.py --gd-lrs 0.02 0.03 --out runs/sharpness-lrs

On a quadratic with largest curvature L, gradient descent is stable only when lr < 2 / L
(optimizer_paths.py). Here L is the sharpness of the MNIST MLP: lambda_max, the largest
eigenvalue of the Hessian of the whole-batch loss on the first --train-subset training images.
The Hessian has 669,706^2 entries and is never formed: a Hessian-vector product is
forward-over-reverse differentiation, jax.jvp(jax.grad(f), (theta,), (v,)), and Lanczos
iteration on those products finds lambda_max (it stops on the residual ||H y - lambda y||).
Writes, into --out (new or empty):
  sharpness.json  lambda_max at init for three set-ups (the recipe: raw 0-255 pixels and
                  cross-entropy / 10; pixels scaled to [0, 1]; true cross-entropy); the loss and
                  sharpness along full-batch runs: GD at --gd-lrs and heavy ball (from above the
                  edge), GD from below the edge (the recipe, and pixels in [0, 1]), and Adam's
                  preconditioned sharpness at the settings chapter 6 selected; the bisected learning rate at
                  which GD blows up
  sharpness.png   the loss, the sharpness against each run's edge
  summary.md      the tables docs/07-sharpness.md shows
Exit status: 0 done, 2 bad input or a disk error, 130 interrupted (what is finished is written,
marked partial).
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

from plumbing import cli, exits, files, plots, provenance
from mlp_mnist import step
from optimized_sgd import make_optimizer
from plumbing.cli import positive_float, positive_int, unit_interval
from train_utils import LAYER_SIZES, init_params, inputs_from_uint8, loss, predicted_class

# --- Defaults ------------------------------------------------------------------------------
N_IMAGES = 2000  # whole-batch loss on the first 2000 training images: one HVP ~0.08 s on 2 cores
STEPS = 150  # long enough to see the sharpness reach the edge, hover there, then fall as the loss goes to 0
EVERY = 5  # sharpness every 5 steps: a warm-started Lanczos costs a few HVPs each time
LRS = (0.01, 0.04, 0.08)  # 2/lr = 200, 50, 25: the recipe's lr far below the edge, two above it
MOMENTUM_LR, MU = 0.1, 0.9  # heavy ball: edge (2 + 2 * 0.9) / 0.1 = 38, below the initial sharpness
BELOW_LR = 0.025  # 2/lr = 80, a little above lambda at init (74.5): can progressive sharpening reach it?
PIXELS_LR, PIXELS_STEPS, PIXELS_EVERY = 2.0, 600, 20  # pixels in [0, 1]: lambda at init 0.018, 2/lr = 1
ADAM_SETTINGS = (dict(lr=0.001, eps=0.01), dict(lr=3.16228e-05, eps=1e-8))  # chapter 6 selected these two
ADAM_EVERY = 10  # Adam's preconditioned sharpness every 10 steps (from step 10: at step 0 Adam has no P)
INIT_TOL, INIT_MAX_ITER = 1e-4, 300  # lambda_max at init: residual ||H y - lambda y|| <= 1e-4 lambda
TRACE_TOL, TRACE_MAX_ITER = 1e-3, 100  # along the runs: residual <= 1e-3 lambda
BLOW_UP = 10.0  # a run diverges when some step's loss is above 10 x its initial loss (or not finite)
BISECT_RATIO = 1.05  # bisection stops when lr_diverges / lr_survives < 1.05
START_KEY = 1  # PRNG key of Lanczos's random start vector at init

SETUPS = ("recipe", "pixels_0_1", "cross_entropy")


# --- Hessian-vector products and Lanczos ------------------------------------------------------


def cross_entropy(params, batch):
    """True cross-entropy, the mean over the batch of -log p(correct class): 10 x train_utils.loss."""
    return 10.0 * loss(params, batch)


def hvp(loss_fn, params, batch, v):
    """H v, H the Hessian of loss_fn(., batch) at params; v shaped like params. Forward-over-reverse."""
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]


@functools.partial(jax.jit, static_argnames="loss_fn")
def flat_hvp(loss_fn, params, batch, v, scale):
    """S H S v on flat vectors (n,), S = diag(scale) (ones: H v itself); n the number of parameters."""
    flat, unravel = ravel_pytree(params)
    return scale * ravel_pytree(hvp(loss_fn, params, batch, unravel((scale * v).astype(flat.dtype))))[0]


def lanczos(matvec, v0, tol, max_iter):
    """The largest eigenvalue of a symmetric M (the most positive, not the largest in size), by Lanczos.

    matvec: v (n,) -> M v (n,). -> (lambda, Ritz vector y (n,) unit, matvec calls, residual ||M y - lambda y||).
    Builds an orthonormal basis q_1, q_2, ... of the Krylov space {v0, M v0, M^2 v0, ...} (reorthogonalised
    against every earlier q, in float64 on the host), in which M is the tridiagonal T; the top eigenpair
    (theta, s) of T gives lambda = theta and y = Q s. Stops when the residual, which Lanczos gives for free
    as |beta_k s_k|, is at most tol * |lambda| (or after max_iter products). A Ritz value never exceeds
    the true lambda_max (Cauchy's interlacing theorem).
    """
    v0 = np.asarray(v0, np.float64)
    basis = np.empty((min(max_iter, 32), v0.size))  # rows q_1, q_2, ...; grown when full (n = 669,706 here)
    basis[0] = v0 / np.linalg.norm(v0)
    alphas, betas = [], []
    while True:
        k = len(alphas)
        q = basis[:k + 1]  # a view: the vectors so far
        w = np.array(matvec(q[k]), np.float64)  # a copy: changed in place below
        alphas.append(q[k] @ w)
        w -= q.T @ (q @ w)  # full reorthogonalisation, twice: float rounding would otherwise
        w -= q.T @ (q @ w)  # let copies of the top eigenvector creep back in
        beta = np.linalg.norm(w)
        values, vectors = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        theta, s = values[-1], vectors[:, -1]
        residual = beta * abs(s[-1])
        if residual <= tol * abs(theta) or k + 1 >= max_iter or beta == 0:
            y = q.T @ s
            return theta, y / np.linalg.norm(y), k + 1, residual
        if k + 1 == len(basis):
            basis = np.concatenate([basis, np.empty_like(basis)])[:max_iter]
        betas.append(beta)
        basis[k + 1] = w / beta


def sharpness(loss_fn, params, batch, v0, tol, max_iter, scale=None):
    """lambda_max of the Hessian H of loss_fn(., batch) at params (or of S H S, S = diag(scale))
    -> (lambda, its eigenvector (n,), HVPs used, residual)."""
    flat, _ = ravel_pytree(params)
    scale = jnp.ones_like(flat) if scale is None else scale
    return lanczos(lambda v: flat_hvp(loss_fn, params, batch, jnp.asarray(v, flat.dtype), scale), v0, tol, max_iter)


def random_start(params, key=START_KEY):
    """A random flat vector (n,), n the number of parameters: where Lanczos starts at init."""
    flat, _ = ravel_pytree(params)
    return jax.random.normal(jax.random.key(key), flat.shape, flat.dtype)


def adam_preconditioner(state, hyper):
    """Adam's P = sqrt(v_hat) + eps, flat (n,): its step is lr P^-1 m_hat. The stability of Adam is set by
    P^-1 H, whose eigenvalues are those of the symmetric P^-1/2 H P^-1/2 (Cohen et al. 2022): scale = P^-1/2."""
    v_hat = jax.tree.map(lambda v: v / (1 - hyper["beta2"] ** state.step.astype(v.dtype)), state.mean_square)
    return 1 / jnp.sqrt(jnp.sqrt(ravel_pytree(v_hat)[0]) + hyper["eps"])


# --- Full-batch training -------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("loss_fn", "name", "length"))
def train_steps(loss_fn, name, hyper, params, state, batch, length):
    """`length` full-batch steps of optimizer `name` (mlp_mnist.step) -> (params, state, losses (length,)), each
    loss taken before its step."""
    optimizer = make_optimizer(name, **hyper)

    def one_step(carry, _):
        params, state, value = step(optimizer, loss_fn, *carry, batch)
        return (params, state), value

    (params, state), losses = jax.lax.scan(one_step, (params, state), None, length=length)
    return params, state, losses


def edge(name, hyper):
    """The largest curvature a quadratic may have for the optimizer to stay stable: 2 / lr for GD,
    (2 + 2 mu) / lr for heavy ball, and for Adam the edge of its preconditioned sharpness,
    (2 + 2 beta1) / ((1 - beta1) lr) (Cohen et al. 2022: 38 / lr for beta1 = 0.9)."""
    if name == "sgd":
        return 2 / hyper["lr"]
    if name == "momentum":
        return (2 + 2 * hyper["mu"]) / hyper["lr"]
    if name == "adam":
        return (2 + 2 * hyper["beta1"]) / ((1 - hyper["beta1"]) * hyper["lr"])
    raise ValueError(f"no edge for {name} here (sgd, momentum, adam)")


def diverged(losses, blow_up=BLOW_UP):
    """True when a loss is not finite or rises above blow_up x the first one. losses: (steps,)."""
    losses = np.asarray(losses)
    return bool(not np.all(np.isfinite(losses)) or np.max(losses) > blow_up * losses[0])


def gd_probe(loss_fn, lr, params, batch, steps, accuracy_fn=None, chunk=25):
    """Full-batch GD at lr for `steps` steps, `chunk` at a time, stopping early once it diverges ->
    {diverged, steps_run, initial_loss, final_loss, final_accuracy}: the loss before the first step, and the
    loss and accuracy_fn(params) after the last step run (None when not finite, or without accuracy_fn). A run that collapses to
    chance without blowing up (a loss near ln 10 / 10 = 0.23, below the initial one) counts as not diverged:
    final_accuracy tells the two apart."""
    hyper = dict(lr=jnp.float32(lr))
    state, losses = make_optimizer("sgd", **hyper).init(params), []
    for length in block_lengths(steps, chunk):
        params, state, block = train_steps(loss_fn, "sgd", hyper, params, state, batch, length)
        losses.extend(np.asarray(block).tolist())
        if diverged(losses):
            break
    final_loss = float(loss_fn(params, batch))
    finite = math.isfinite(final_loss)
    return dict(diverged=diverged(losses), steps_run=len(losses), initial_loss=losses[0],
                final_loss=final_loss if finite else None,
                final_accuracy=float(accuracy_fn(params)) if finite and accuracy_fn else None)


def batch_accuracy(params, batch):
    """The fraction of the batch's images (inputs (N, 784), one-hot (N, 10)) that the model classifies right."""
    inputs, targets = batch
    return jnp.mean(predicted_class(params, inputs) == jnp.argmax(targets, axis=1))


def block_lengths(steps, every):
    """[every, every, ..., rest]: the blocks between two sharpness measurements, summing to steps."""
    return [every] * (steps // every) + ([steps % every] if steps % every else [])


def trace(loss_fn, name, settings, params, batch, steps, every, v0):
    """Train full-batch for `steps` steps, measuring the sharpness every `every` steps (Lanczos, warm-started
    from the last eigenvector). For Adam the sharpness is the preconditioned one, of P^-1 H, from step
    `every` on (at step 0 Adam has no P yet).

    -> dict(optimizer, settings, edge, steps, loss (steps,), sharpness_steps, sharpness, lanczos_iterations,
    residuals, diverged, hvps). loss[t] is the loss before step t; sharpness[k] is measured at step
    sharpness_steps[k]. Measuring stops once the loss is no longer finite.
    """
    hyper = {key: jnp.float32(value) for key, value in settings.items()}
    state = make_optimizer(name, **hyper).init(params)
    run = dict(optimizer=name, settings=settings, edge=edge(name, settings), steps=steps, loss=[], sharpness_steps=[],
               sharpness=[], lanczos_iterations=[], residuals=[], diverged=False, hvps=0)

    def measure_here():
        scale = adam_preconditioner(state, hyper) if name == "adam" else None
        value, vector, used, residual = sharpness(loss_fn, params, batch, v0, TRACE_TOL, TRACE_MAX_ITER, scale)
        for key, item in (("sharpness_steps", len(run["loss"])), ("sharpness", float(value)),
                          ("lanczos_iterations", used), ("residuals", float(residual))):
            run[key].append(item)
        run["hvps"] += used
        return vector

    if name != "adam":
        v0 = measure_here()
    for length in block_lengths(steps, every):
        params, state, block = train_steps(loss_fn, name, hyper, params, state, batch, length)
        run["loss"].extend(np.asarray(block).tolist())
        if not np.all(np.isfinite(run["loss"])):
            break
        v0 = measure_here()
    run["diverged"] = diverged(run["loss"])
    run["loss"] = finite_or_none(run["loss"])
    run["sharpness"] = finite_or_none(run["sharpness"])
    return run


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


def run_plan(args):
    """The traces of the experiment, in order: (group, set-up, optimizer, settings, steps, every) each.

    group "above": the recipe, GD at --gd-lrs and heavy ball: the sharpness at init above or below the edge.
    group "below": progressive sharpening, from below the edge: GD on the recipe at BELOW_LR, whose 2 / lr
    lies a little above lambda at init, and GD on pixels scaled to [0, 1] at PIXELS_LR.
    group "adam": Adam's preconditioned sharpness at the two settings chapter 6 selected (ADAM_SETTINGS).
    """
    plan = [("above", "recipe", "sgd", dict(lr=lr), args.full_batch_steps, args.every) for lr in args.gd_lrs]
    plan.append(("above", "recipe", "momentum", dict(lr=args.momentum_lr, mu=args.momentum_mu), args.full_batch_steps,
                 args.every))
    plan.append(("below", "recipe", "sgd", dict(lr=BELOW_LR), args.full_batch_steps, args.every))
    plan.append(("below", "pixels_0_1", "sgd", dict(lr=PIXELS_LR), PIXELS_STEPS, PIXELS_EVERY))
    plan += [("adam", "recipe", "adam", dict(beta1=0.9, beta2=0.999, **settings), args.full_batch_steps, ADAM_EVERY)
             for settings in ADAM_SETTINGS]
    return plan


def measure(args, images, labels, result, log=print):
    """The whole experiment on one set of images, into `result` as it goes (a Ctrl-C keeps what is done)."""
    params = init_params(jax.random.key(args.seed))
    v0 = random_start(params)
    batches = setup_batches(images, labels)
    result.update(init={}, runs=[], divergence=None)
    top_vector = {}
    for setup in SETUPS:
        loss_fn, batch = batches[setup]
        value, top_vector[setup], used, residual = sharpness(loss_fn, params, batch, v0, INIT_TOL, INIT_MAX_ITER)
        result["init"][setup] = dict(lambda_max=float(value), two_over_lambda=2 / float(value), hvps=used,
                                     residual=float(residual))
        log(f"{setup:>14}: lambda_max {value:.4g}, 2/lambda {2 / value:.4g} ({used} HVPs)")

    for group, setup, name, settings, steps, every in run_plan(args):
        started = time.perf_counter()
        loss_fn, batch = batches[setup]
        run = trace(loss_fn, name, settings, params, batch, steps, every, top_vector[setup])
        run.update(group=group, setup=setup, seconds=time.perf_counter() - started)
        result["runs"].append(run)
        values = [v for v in run["sharpness"] if v is not None] or [None]
        log(f"{run_label(run)}: sharpness {shown(values[0])} -> max {shown(max(values, key=lambda v: v or 0))}, last "
            f"{shown(values[-1])}; "
            f"loss {shown(run['loss'][0])} -> {shown(run['loss'][-1])}{', DIVERGED' if run['diverged'] else ''} "
            f"({run['hvps']} HVPs, {run['seconds']:.0f} s)")

    # Bisection starts at the largest GD learning rate that survived its trace on the recipe: fewer runs.
    loss_fn, batch = batches["recipe"]
    survived = [r["settings"]["lr"] for r in result["runs"] if r["group"] == "above" and r["optimizer"] == "sgd"
                and not r["diverged"]]
    start = max(survived + [result["init"]["recipe"]["two_over_lambda"]])
    started = time.perf_counter()
    outcomes = {}  # lr -> gd_probe's outcome: each probe's final loss and accuracy are kept, not only "blew up"

    def blows_up(lr):
        outcomes[lr] = gd_probe(loss_fn, lr, params, batch, args.full_batch_steps,
                                accuracy_fn=lambda p: batch_accuracy(p, batch))
        return outcomes[lr]["diverged"]

    lr_diverges, lr_survives, probes = find_divergence(blows_up, start)
    result["divergence"] = dict(lr_diverges=lr_diverges, lr_survives=lr_survives, steps=args.full_batch_steps,
                                blow_up=BLOW_UP, probes=[dict(lr=lr, **outcomes[lr]) for lr, _ in probes])
    kept = outcomes.get(lr_survives) or {}
    log(f"full-batch GD, {args.full_batch_steps} steps: blows up at lr {shown(lr_diverges)}; at lr {shown(lr_survives)} "
        f"the loss stays below {BLOW_UP:g} x its initial value (final loss {shown(kept.get('final_loss'))}, batch "
        f"accuracy {shown(kept.get('final_accuracy'))}) (2/lambda_init = "
        f"{result['init']['recipe']['two_over_lambda']:.4g}; {len(probes)} runs, {time.perf_counter() - started:.0f} s)")


# --- The figure and the summary ---------------------------------------------------------------


def run_label(run):
    """'GD, lr 0.08' / 'heavy ball, lr 0.1, mu 0.9' / 'Adam, lr 0.001, eps 0.01' (+ 'pixels in [0, 1]')."""
    settings = run["settings"]
    text = {"sgd": "GD", "momentum": "heavy ball", "adam": "Adam"}[run["optimizer"]] + f", lr {settings['lr']:g}"
    text += f", μ {settings['mu']:g}" if "mu" in settings else ""
    text += f", eps {settings['eps']:g}" if "eps" in settings else ""
    return text + (", pixels in [0, 1]" if run["setup"] == "pixels_0_1" else "")


def loss_rises(run):
    """-> (how many steps raise the loss, the last step that does, or None)."""
    losses = [v for v in run["loss"] if v is not None]
    rises = [t for t in range(1, len(losses)) if losses[t] > losses[t - 1]]
    return len(rises), (rises[-1] if rises else None)


def plot_traces(result, path):
    """Four panels: the loss of every run; the recipe's runs' sharpness with their edges; sharpness / edge of the
    runs from below; Adam's preconditioned sharpness / its edge."""
    plt = plots.plt
    fig, axes = plt.subplots(2, 2, figsize=(9, 7.4))
    (ax_loss, ax_above), (ax_below, ax_adam) = axes
    styles = ["-", "--", "-.", ":"]
    for i, (run, color) in enumerate(zip(result["runs"], plt.cm.tab10.colors)):
        style = dict(color=color, linestyle=styles[i % 4], linewidth=1.3, label=run_label(run))
        losses = np.array([np.nan if v is None else v for v in run["loss"]])
        ax_loss.plot(np.arange(1, len(losses) + 1), losses, **style)  # step + 1: a log axis has no 0
        values = np.array([np.nan if v is None else v for v in run["sharpness"]])
        if run["group"] == "above":
            ax_above.plot(run["sharpness_steps"], values, marker="o", markersize=2, **style)
            ax_above.axhline(run["edge"], color=color, linestyle=(0, (4, 3)), linewidth=1)
        else:
            (ax_below if run["group"] == "below" else ax_adam).plot(run["sharpness_steps"], values / run["edge"],
                                                                    marker="o", markersize=2, **style)
    for ax in (ax_below, ax_adam):
        ax.axhline(1.0, color="0.3", linestyle=(0, (4, 3)), linewidth=1)
    ax_loss.set(xlabel="step + 1 (log scale)", ylabel="whole-batch loss (cross-entropy / 10)", yscale="log",
                xscale="log", title="training loss")
    top = max([r["edge"] for r in result["runs"] if r["group"] == "above"]
              + [v for r in result["runs"] if r["group"] == "above" for v in r["sharpness"] if v])
    ax_above.set(xlabel="step", ylabel="λ_max of the Hessian", ylim=(0, 1.08 * top),
                 title="from above: λ_max; dashed: each run's edge (2 + 2μ) / lr")
    ax_below.set(xlabel="step", ylabel="λ_max / (2 / lr)", ylim=(0, None),
                 title="from below: λ_max / edge (1 = the edge)")
    ax_adam.set(xlabel="step", ylabel="λ_max(P⁻¹H) / (38 / lr)", yscale="log",
                title="Adam: preconditioned sharpness / its edge 38 / lr")
    for ax in axes.flat[1:]:
        ax.title.set_fontsize(9)
    ax_loss.title.set_fontsize(9)
    fig.legend(*ax_loss.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"full-batch training on the first {result['n_images']:,} images, seed {result['seed']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    plots.save_figure(fig, path)


def markdown(result):
    """The tables of docs/07-sharpness.md, from one result (a partial one too)."""
    init = result.get("init", {})
    lines = [f"First {result['n_images']:,} training images, seed {result['seed']}; Lanczos stops when "
             f"||H y - λ y|| <= {INIT_TOL:g} λ at init, {TRACE_TOL:g} λ along the runs.", "",
             "| set-up | λ_max at init | 2 / λ_max | lr 0.01 as a fraction of 2 / λ_max | Lanczos HVPs |",
             "| --- | ---: | ---: | ---: | ---: |"]
    names = {"recipe": "the recipe: raw pixels 0-255, cross-entropy / 10", "pixels_0_1": "pixels scaled to [0, 1]",
             "cross_entropy": "true cross-entropy (x 10)"}
    for setup, row in init.items():
        lines.append(f"| {names[setup]} | {row['lambda_max']:.4g} | {row['two_over_lambda']:.4g} | "
                     f"{0.01 / row['two_over_lambda']:.3g} | {row['hvps']} |")
    lines += ["", "| run | steps | edge | sharpness: at the first measure, highest, last | highest / edge | "
                  "steps that raise the loss (the last one) | loss: first, last | Lanczos HVPs per measure |",
              "| --- | ---: | ---: | --- | ---: | --- | --- | ---: |"]
    for run in result.get("runs", []):
        values = [v for v in run["sharpness"] if v is not None]
        if not values:
            continue  # it blew up before its first measure
        count, last = loss_rises(run)
        preconditioned = " (of P⁻¹H)" if run["optimizer"] == "adam" else ""
        lines.append(f"| {run_label(run)} | {run['steps']} | {shown(run['edge'], 4)}{preconditioned} | "
                     f"{shown(values[0], 3)} (step {run['sharpness_steps'][0]}), {shown(max(values), 3)}, "
                     f"{shown(values[-1], 3)} | {max(values) / run['edge']:.2f} | {count} ({shown(last)}) | "
                     f"{shown(run['loss'][0], 3)}, {shown(run['loss'][-1], 3)} | "
                     f"{run['hvps'] / len(run['sharpness']):.1f} |")
    d = result.get("divergence")
    if d:
        ratio = d["lr_survives"] / init["recipe"]["two_over_lambda"] if d["lr_survives"] else None
        lines += ["", f"Full-batch GD, {d['steps']} steps, blows up (a loss above {d['blow_up']:g} x the first, or not "
                      f"finite) at lr {shown(d['lr_diverges'])}; at lr {shown(d['lr_survives'])} the loss stays below "
                      f"{d['blow_up']:g} x the first: {shown(ratio, 3)} x 2 / λ_init. Staying below is not learning: "
                      f"a run can collapse to chance (loss ln 10 / 10 = 0.23, accuracy about 10%) without blowing up.",
                  "", "| lr | blew up | steps run | loss at step 0 | final loss | final accuracy on the batch |",
                  "| ---: | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {p['lr']:.3g} | {'yes' if p['diverged'] else 'no'} | {p['steps_run']} | "
                  f"{shown(p['initial_loss'], 3)} | {shown(p['final_loss'], 3)} | "
                  f"{'-' if p['final_accuracy'] is None else format(100 * p['final_accuracy'], '.1f') + '%'} |"
                  for p in d["probes"]]
    return "\n".join(lines) + "\n"


# --- Command line ------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        description="Sharpness (top Hessian eigenvalue) of the MNIST MLP, and full-batch training at the edge of "
                    "stability.", epilog="Exit status: 0 done, 2 bad input or a disk error, 130 interrupted (the "
                                         "runs finished so far are written, marked partial).")
    p.add_argument("--full-batch-steps", type=positive_int, default=STEPS,
                   help="full-batch steps of each run on the recipe and of each bisection run (default: %(default)s)")
    p.add_argument("--every", type=positive_int, default=EVERY,
                   help="measure the sharpness every K steps of the GD and heavy-ball runs (default: %(default)s)")
    p.add_argument("--gd-lrs", type=positive_float, nargs="+", default=list(LRS), metavar="LR",
                   help="learning rates of the gradient-descent runs on the recipe (default: 0.01 0.04 0.08)")
    p.add_argument("--momentum-lr", type=positive_float, default=MOMENTUM_LR,
                   help="learning rate of the heavy-ball run (default: %(default)s)")
    p.add_argument("--momentum-mu", type=unit_interval, default=MU,
                   help="momentum mu of the heavy-ball run (default: %(default)s)")
    cli.add_flags(p, "--seed", "--data-dir", "--out")
    p.add_argument("--train-subset", type=positive_int, default=N_IMAGES, metavar="N",  # shared flag, own default:
                   help="use only the first N training images (default: %(default)s; "  # cli.OWN_DEFAULTS
                        + cli.OWN_DEFAULTS[("sharpness.py", "--train-subset")] + ")")
    return p


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out = args.out or files.default_out_dir("sharpness")
    train_set, _, _ = exits.load_data_or_exit(parser, args)
    if len(train_set) < args.train_subset:
        parser.error(f"argument --train-subset: {args.train_subset} is more than the {len(train_set)} training images")
    result = dict(status="partial", n_images=args.train_subset, seed=args.seed,
                  settings=dict(every=args.every, init_tol=INIT_TOL, init_max_iter=INIT_MAX_ITER, trace_tol=TRACE_TOL,
                                trace_max_iter=TRACE_MAX_ITER, bisect_ratio=BISECT_RATIO))
    start = time.perf_counter()
    try:
        measure(args, train_set.data.numpy(), train_set.targets.numpy(), result)
        result["status"] = "completed"
    except KeyboardInterrupt:
        pass
    result["seconds"] = time.perf_counter() - start

    def write(out):
        files.write_json(f"{out}/sharpness.json", result)
        files.write_markdown(f"{out}/summary.md", markdown(result))
        if result.get("runs"):
            plot_traces(result, f"{out}/sharpness.png")

    exits.write_or_fail(args.out, write, "the files written before it are complete")
    if result["status"] != "completed":
        print(f"interrupted: {args.out} holds the {len(result.get('runs', []))} runs finished, marked partial",
              file=sys.stderr)
        sys.exit(exits.EXIT_INTERRUPTED)
    print(f"{result['seconds']:.0f} s; wrote {args.out}/sharpness.json, sharpness.png, summary.md")


if __name__ == "__main__":
    exits.run_script(main)
