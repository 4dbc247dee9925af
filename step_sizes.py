"""How far does one step of each optimizer move the weights? Why RMSProp at lr 0.01 fails here.

    python step_sizes.py                        # writes runs/step_sizes/
    python step_sizes.py --steps 1000 --data-dir /path/to/mnist

Trains the first --steps steps (seed 0, batch 128, the mlp_mnist.py recipe, its DataLoader
and its jitted train_step; past the 469 steps of epoch 1 it goes on into epoch 2's batches) for
each setting and prints, for the hidden layer's weights w2 (512 x 512, initialised at
N(0, 0.01^2)):
  |g| step 1     the mean |gradient| over w2's entries at step 1
  zero g %       the share of w2's entries whose gradient at step 1 is exactly zero: entry
                 (i, j) gets none when no image of the batch switches on both hidden unit i
                 of layer 1 and unit j of layer 2 (one ReLU or the other is off)
  |step| 1 /lr   the mean |step| at step 1, in units of lr, over all of w2's entries, and over
                 those with a nonzero gradient ("g != 0")
  |step| 2-N     the mean |step| over the later steps ("-" with --steps 1)
  |w2| end       the mean |w2| at the end
  dead L1/L2 @N  the share of hidden units of layer 1 and of layer 2 (512 each) that are dead after
                 step N (1, 10 and the last): their ReLU outputs 0 for every one of the first
                 10,000 training images, so they get no gradient from them
The settings include RMSProp at lr 0.01 with Adam's bias correction and with a warm-up, run as
schedules of lr (and eps): mlp_mnist's train_step takes them as data, so the optimizer is unchanged.
SGD's step is lr * |g|, tiny here because the loss is divided by 10. RMSProp's and Adam's
steps do not scale with |g|: RMSProp's first step is lr / sqrt(1 - rho) = 3.16 lr for rho =
0.9 for every weight with a nonzero gradient well above eps (and no later step is longer);
the weights with a zero gradient do not move, which brings the mean over all of w2 down.
Adam's first step is lr. With lr = 0.01 that first RMSProp step is four times the weights'
initial size.
Writes table.txt (what it prints) and step_sizes.json into --out.
Exit status: 0 done, 2 bad input, 130 interrupted (the settings finished so far are written).
"""
import argparse
import itertools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

import mlp_mnist
import mnist_data
from plumbing import cli, exits, files, provenance
from optimized_sgd import hyperparameters, make_optimizer
from train_utils import batch_from_uint8, batched_layer_inputs, init_params, inputs_from_uint8, loss

# (label, optimizer, its hyperparameters, schedule). A schedule changes lr (and eps) from step to
# step; mlp_mnist's train_step takes them as data, so this needs no change to the optimizer:
#   "bias-corrected": lr_t = lr sqrt(1 - rho^t), eps_t = eps sqrt(1 - rho^t), which is exactly RMSProp with
#       Adam's bias correction, lr g / (sqrt(s / (1 - rho^t)) + eps): its first step is lr, not 3.16 lr
#   "warm-up": lr_t = lr min(1, t / WARM_UP): the first steps tiny, full size from step WARM_UP on
SETTINGS = [
    ("sgd lr=0.01", "sgd", dict(lr=0.01), None),
    ("momentum lr=0.01", "momentum", dict(lr=0.01), None),
    ("rmsprop lr=0.01", "rmsprop", dict(lr=0.01), None),
    ("rmsprop lr=0.01 bias-corrected", "rmsprop", dict(lr=0.01), "bias-corrected"),
    ("rmsprop lr=0.01 warm-up", "rmsprop", dict(lr=0.01), "warm-up"),
    ("rmsprop lr=0.0003", "rmsprop", dict(lr=0.0003), None),  # reaches 98% (docs/05-rmsprop-and-adam.md)
    ("adam lr=0.001", "adam", dict(lr=0.001), None),
    ("adam lr=0.001 eps=0.01", "adam", dict(lr=0.001, eps=0.01), None),  # eps above sqrt(v): small g, small steps
]
WARM_UP = 50  # steps of the "warm-up" schedule
LAYER = 1  # params[1] = (w2, b2): the 512 x 512 hidden layer
DEAD_IMAGES = 10_000  # a unit is dead when it outputs 0 for every one of the first 10,000 training images
CHECKPOINTS = (1, 10)  # dead units are also counted after these steps (and at the end)


def schedule(kind, t, hyper):
    """The hyperparameters of step t (1, 2, ...) under schedule `kind` -> {key: float32 array}."""
    factor, hyper = 1.0, dict(hyper)
    if kind == "bias-corrected":
        factor = math.sqrt(1 - hyper["rho"] ** t)
        hyper["eps"] *= factor
    elif kind == "warm-up":
        factor = min(1.0, t / WARM_UP)
    hyper["lr"] *= factor
    return {key: jnp.float32(value) for key, value in hyper.items()}


def dead_fractions(params, images):
    """Share of dead ReLUs in hidden layers 1 and 2 (512 each): those that output 0 for every one of
    `images` (uint8 (N, 28, 28)) -> (layer 1, layer 2)."""
    dead = [np.zeros(512, bool) | True, np.zeros(512, bool) | True]
    for start in range(0, len(images), mlp_mnist.EVAL_CHUNK):  # in chunks: the activations stay small
        hidden = batched_layer_inputs(params, inputs_from_uint8(images[start:start + mlp_mnist.EVAL_CHUNK]))[1:]
        dead = [d & np.asarray(jnp.all(h == 0, axis=0)) for d, h in zip(dead, hidden)]
    return tuple(float(np.mean(d)) for d in dead)


def batches(train_set, seed):
    """mlp_mnist.py's batches, epoch after epoch: uint8 images (B, 28, 28) and labels (B,) as NumPy arrays."""
    loader = mnist_data.train_loader(train_set, cli.SHARED_FLAGS["--batch-size"]["default"], seed)
    for images, labels in itertools.chain.from_iterable(itertools.repeat(loader)):  # a fresh order each epoch
        yield images.numpy(), labels.numpy()


def step_statistics(name, hyper, kind, train_set, steps, seed=0):
    """-> dict for w2 (512, 512): grad (mean |g| at step 1), zero_grad (share of entries with g = 0 at step 1),
    step (mean |step| per step, a list of `steps`), step1_nonzero (mean |step 1| over entries with g != 0),
    weight (mean |w2| at the end), dead {step: (layer 1, layer 2)} at CHECKPOINTS and at the end.

    The steps are mlp_mnist's own jitted train_step, on the DataLoader's batches.
    """
    hyper = hyperparameters(name, **hyper)
    params = init_params(jax.random.key(seed))
    state = make_optimizer(name, **hyper).init(params)
    dead_images = train_set.data[:DEAD_IMAGES].numpy()
    step_sizes, stats, dead = [], {}, {}
    for t, (images, labels) in enumerate(itertools.islice(batches(train_set, seed), steps), start=1):
        step_hyper = schedule(kind, t, hyper)
        if not stats:  # measured apart: the step returns no gradient
            grads = jax.grad(loss)(make_optimizer(name, **step_hyper).grad_point(params, state),
                                   batch_from_uint8(images, labels))
            first_grad = np.asarray(grads[LAYER][0])
            stats = dict(grad=float(np.mean(np.abs(first_grad))), zero_grad=float(np.mean(first_grad == 0)))
        w2_before = np.array(params[LAYER][0])  # a copy: the step reuses (donates) the buffers it is given
        params, state, _ = mlp_mnist.train_step(params, state, step_hyper, images, labels, name=name)
        moved = np.abs(np.asarray(params[LAYER][0]) - w2_before)
        if not step_sizes:
            stats["step1_nonzero"] = float(np.mean(moved[first_grad != 0]))
        step_sizes.append(float(np.mean(moved)))
        if t in CHECKPOINTS or t == steps:
            dead[t] = dead_fractions(params, dead_images)
    return dict(stats, step=step_sizes, weight=float(jnp.mean(jnp.abs(params[LAYER][0]))), dead=dead)


def percent_pair(pair):
    return f"{100 * pair[0]:.1f}% / {100 * pair[1]:.1f}%"


def table(steps, results):
    """The printed table: a header line, then one line per setting."""
    marks = sorted(set(CHECKPOINTS) & set(range(1, steps)) | {steps})
    later = f"|step| 2-{steps}" if steps > 1 else "|step| 2-"
    dead = "  ".join(f"{f'dead L1/L2 @{t}':>15}" for t in marks)
    lines = [f"{'setting':<31} {'|g| step 1':>10} {'zero g %':>8} {'|step| 1 /lr':>12} {'(g != 0)':>8} {later:>11} "
             f"{'|w2| end':>9}  {dead}"]
    for (label, _, hyper, _), stats in zip(SETTINGS, results):
        lr = hyper["lr"]
        later_mean = f"{np.mean(stats['step'][1:]):11.2e}" if steps > 1 else f"{'-':>11}"
        dead = "  ".join(f"{percent_pair(stats['dead'][t]):>15}" for t in marks)
        lines.append(f"{label:<31} {stats['grad']:10.2e} {100 * stats['zero_grad']:7.2f}% "
                     f"{stats['step'][0] / lr:12.3f} "
                     f"{stats['step1_nonzero'] / lr:8.3f} {later_mean} {stats['weight']:9.4f}  {dead}")
    return lines


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    p = argparse.ArgumentParser(description="Mean step size of each optimizer on the hidden layer's weights w2, "
                                            "and how many hidden units die: why RMSProp at lr 0.01 fails here.",
                                epilog="Exit status: 0 done, 2 bad input, 130 interrupted.")
    p.add_argument("--steps", type=cli.positive_int, default=100,
                   help="training steps to follow; past epoch 1's 469 they go on into epoch 2 (default: %(default)s)")
    cli.add_flags(p, "--seed", "--data-dir", "--out")
    args = p.parse_args(argv)
    args.out = args.out or files.default_out_dir("step_sizes")
    torch.set_num_threads(1)
    train_set, _, _ = exits.load_data_or_exit(p, args)
    header = (f"hidden-layer weights w2 (512 x 512, initial mean |w2| = 0.0080, i.e. N(0, 0.01^2)); first {args.steps} "
              f"training steps, seed {args.seed}; means over w2's entries; dead: hidden units of layer 1 / layer 2 "
              f"that output 0 for all of the first {min(DEAD_IMAGES, len(train_set)):,} training images, after "
              f"step @N")
    print(header)
    results = []
    try:
        for label, name, hyper, kind in SETTINGS:
            results.append(step_statistics(name, hyper, kind, train_set, args.steps, args.seed))
            print("\n".join(table(args.steps, results)[0 if len(results) == 1 else -1:]), flush=True)
    except KeyboardInterrupt:
        pass
    lines = [header] + table(args.steps, results)
    finished = [dict(setting=s[0], optimizer=s[1], hyperparameters=s[2], schedule=s[3], **r)
                for s, r in zip(SETTINGS, results)]
    files.write_text(f"{args.out}/table.txt", "\n".join(lines))
    files.write_json(f"{args.out}/step_sizes.json", dict(
        steps=args.steps, seed=args.seed, warm_up=WARM_UP, dead_images=DEAD_IMAGES, layer="w2",
        status="completed" if len(results) == len(SETTINGS) else "interrupted", settings=finished))
    if len(results) < len(SETTINGS):
        print(f"interrupted: {args.out} holds the {len(results)} settings finished", file=sys.stderr)
        sys.exit(exits.EXIT_INTERRUPTED)
    print(f"wrote {args.out}/table.txt, step_sizes.json")


if __name__ == "__main__":
    exits.run_script(main)
