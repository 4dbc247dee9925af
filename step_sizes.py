"""How far does one step of each optimizer move the weights? Why RMSProp at lr 0.01 fails here.

    python step_sizes.py
    python step_sizes.py --steps 1000 --data-dir /path/to/mnist

Trains the first --steps steps (seed 0, batch 128, the mlp_mnist.py recipe, its DataLoader
and its compiled step; past the 469 steps of epoch 1 it goes on into epoch 2's batches) for
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
  dead ReLUs     how many of the 1024 hidden ReLUs are dead by then (zero for all of the
                 first 1000 training images: a dead unit gets no gradient again)
SGD's step is lr * |g|, tiny here because the loss is divided by 10. RMSProp's and Adam's
steps do not scale with |g|: RMSProp's first step is lr / sqrt(1 - rho) = 3.16 lr for rho =
0.9 for every weight with a nonzero gradient well above eps (and no later step is longer);
the weights with a zero gradient do not move, which brings the mean over all of w2 down.
Adam's first step is lr. With lr = 0.01 that first RMSProp step is four times the weights'
initial size.
"""
import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import torch

import mlp_mnist
import reporting
import mnist_data
from optimized_sgd import make_optimizer
from train_utils import batch_from_uint8, init_params, inputs_from_uint8, layer_inputs, loss

SETTINGS = [  # (optimizer, lr, extra hyperparameters)
    ("sgd", 0.01, {}),
    ("momentum", 0.01, {}),
    ("rmsprop", 0.01, {}),
    ("rmsprop", 0.0003, {"rho": 0.9}),  # the setting that reaches 98% (docs/05-rmsprop-and-adam.md)
    ("adam", 0.001, {}),
    ("adam", 0.001, {"eps": 0.01}),  # eps above sqrt(v): small gradients get small steps again
]
LAYER = 1  # params[1] = (w2, b2): the 512 x 512 hidden layer
BATCH_SIZE = 128  # mlp_mnist.py's


def dead_fraction(params, images):
    """Fraction of the 1024 hidden ReLUs that output 0 for every one of `images` (uint8 (N, 28, 28))."""
    hidden = layer_inputs(params, inputs_from_uint8(images))[1:]
    return float(jnp.mean(jnp.concatenate([jnp.all(h == 0, axis=0) for h in hidden])))


def batches(train_set, seed):
    """mlp_mnist.py's batches, epoch after epoch: uint8 images (B, 28, 28) and labels (B,) as NumPy arrays."""
    loader = mnist_data.train_loader(train_set, BATCH_SIZE, seed)  # a fresh order each time it is iterated
    for images, labels in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield images.numpy(), labels.numpy()


def step_statistics(name, lr, hyper, train_set, steps, seed=0):
    """-> dict for w2 (512, 512): grad (mean |g| at step 1), zero_grad (share of entries with g = 0 at step 1),
    step (mean |step| per step, a list of `steps`), step1_nonzero (mean |step 1| over entries with g != 0),
    weight (mean |w2| at the end) and dead (share of dead hidden ReLUs at the end).

    The steps are mlp_mnist's own compiled training step, on the DataLoader's batches.
    """
    optimizer = make_optimizer(name, lr, **hyper)
    params = init_params(jax.random.PRNGKey(seed))
    state = optimizer.init(params)
    train_steps = mlp_mnist.compile_train_steps(optimizer, params, state,
                                                mlp_mnist.piece_sizes(len(train_set), BATCH_SIZE))
    step_sizes, stats = [], {}
    for images, labels in itertools.islice(batches(train_set, seed), steps):
        if not stats:  # measured apart: the step returns no gradient
            grads = jax.grad(loss)(optimizer.grad_point(params, state), batch_from_uint8(images, labels))
            first_grad = np.asarray(grads[LAYER][0])
            stats = dict(grad=float(np.mean(np.abs(first_grad))), zero_grad=float(np.mean(first_grad == 0)))
        w2_before = np.array(params[LAYER][0])  # a copy: the step reuses the buffers it is given
        params, state, _ = train_steps[len(labels)](params, state, images, labels)
        moved = np.abs(np.asarray(params[LAYER][0]) - w2_before)
        if not step_sizes:
            stats["step1_nonzero"] = float(np.mean(moved[first_grad != 0]))
        step_sizes.append(float(np.mean(moved)))
    return dict(stats, step=step_sizes, weight=float(jnp.mean(jnp.abs(params[LAYER][0]))),
                dead=dead_fraction(params, train_set.data[:1000].numpy()))


def table_rows(steps, train_set):
    """The printed table: a header line, then one line per setting of SETTINGS."""
    later = f"|step| 2-{steps}" if steps > 1 else "|step| 2-"
    yield (f"{'setting':<26} {'|g| step 1':>10} {'zero g %':>8} {'|step| 1 /lr':>12} {'(g != 0)':>8} {later:>11} "
           f"{'|w2| end':>9} {'dead ReLUs':>10}")
    for name, lr, hyper in SETTINGS:
        label = " ".join([name, f"lr={lr}"] + [f"{k}={v}" for k, v in hyper.items()])
        stats = step_statistics(name, lr, hyper, train_set, steps)
        later_mean = f"{np.mean(stats['step'][1:]):11.2e}" if steps > 1 else f"{'-':>11}"
        yield (f"{label:<26} {stats['grad']:10.2e} {100 * stats['zero_grad']:7.2f}% {stats['step'][0] / lr:12.3f} "
               f"{stats['step1_nonzero'] / lr:8.3f} {later_mean} {stats['weight']:9.4f} {100 * stats['dead']:9.1f}%")


def main(argv=None):
    p = argparse.ArgumentParser(description="Mean step size of each optimizer on the hidden layer's weights w2, "
                                            "and why RMSProp's first step is 3.16 lr.")
    p.add_argument("--steps", type=reporting.positive_int, default=100,
                   help="training steps to follow; past epoch 1's 469 they go on into epoch 2 (default: %(default)s)")
    mlp_mnist.add_data_dir_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train_set, _ = mlp_mnist.load_data_or_exit(p, args.data_dir)
    print(f"hidden-layer weights w2 (512 x 512, initial mean |w2| = 0.0080, i.e. N(0, 0.01^2)); "
          f"first {args.steps} training steps, seed 0; means over w2's entries")
    for line in table_rows(args.steps, train_set):
        print(line, flush=True)


if __name__ == "__main__":
    main()
