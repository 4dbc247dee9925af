"""How far does one step of each optimizer move the weights? Why RMSProp at lr 0.01 fails here.

    python step_sizes.py --data-dir ../shared/datasets/mnist

Trains the first --steps steps of epoch 1 (seed 0, batch 128, the mlp_mnist.py recipe and
its compiled step) for each setting and prints, for the hidden layer's weights w2 (512 x 512,
initialised at N(0, 0.01^2)): the mean |gradient| and |step| at step 1, the mean |step| over
the later steps, the mean |w2| at the end, and how many of the 1024 hidden ReLUs are dead by
then (zero for all of the first 1000 training images: a dead unit gets no gradient again).
SGD's step is lr * |g|, tiny here because the loss is divided by 10. RMSProp's and Adam's
steps do not scale with |g|: RMSProp's first step is lr / sqrt(1 - rho) = 3.16 lr for every
weight with rho = 0.9 (and no later step is longer), Adam's first is lr. With lr = 0.01 that
first RMSProp step is four times the weights' initial size.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch

import mlp_mnist
import mnist_data
from optimized_sgd import make_optimizer
from train_utils import batch_from_uint8, init_params, layer_inputs, loss

SETTINGS = [  # (optimizer, lr, extra hyperparameters)
    ("sgd", 0.01, {}),
    ("momentum", 0.01, {}),
    ("rmsprop", 0.01, {}),
    ("rmsprop", 0.0003, {"rho": 0.9}),  # the setting that reaches 98% (README, "RMSProp, finished")
    ("adam", 0.001, {}),
    ("adam", 0.001, {"eps": 0.01}),  # eps above sqrt(v): small gradients get small steps again
]
LAYER = 1  # params[1] = (w2, b2): the 512 x 512 hidden layer, every weight of which gets a gradient
BATCH_SIZE = 128


def dead_fraction(params, images):
    """Fraction of the 1024 hidden ReLUs that output 0 for every one of `images` (uint8 (N, 28, 28))."""
    hidden = layer_inputs(params, images.reshape(len(images), -1).astype(jnp.float32))[1:]
    return float(jnp.mean(jnp.concatenate([jnp.all(h == 0, axis=0) for h in hidden])))


def step_statistics(name, lr, hyper, train_set, steps, seed=0):
    """-> dict: mean |g| of w2 at step 1, mean |step| of w2 per step (list), mean |w2| and dead ReLUs at the end.

    The steps are mlp_mnist's own compiled training step, on the DataLoader's batches.
    """
    optimizer = make_optimizer(name, lr, **hyper)
    params = init_params(jax.random.PRNGKey(seed))
    state = optimizer.init(params)
    train_step = mlp_mnist.compile_train_steps(optimizer, params, state, [BATCH_SIZE])[BATCH_SIZE]

    step_sizes, first_grad = [], None
    for (images, labels), _ in zip(mnist_data.train_loader(train_set, BATCH_SIZE, seed), range(steps)):
        images, labels = images.numpy(), labels.numpy()
        if first_grad is None:  # measured apart: the step returns no gradient
            grads = jax.grad(loss)(optimizer.grad_point(params, state), batch_from_uint8(images, labels))
            first_grad = float(jnp.mean(jnp.abs(grads[LAYER][0])))
        w2_before = np.array(params[LAYER][0])  # a copy: the step reuses the buffers it is given
        params, state, _ = train_step(params, state, images, labels)
        step_sizes.append(float(np.mean(np.abs(np.asarray(params[LAYER][0]) - w2_before))))
    return dict(grad=first_grad, step=step_sizes, weight=float(jnp.mean(jnp.abs(params[LAYER][0]))),
                dead=dead_fraction(params, train_set.data[:1000].numpy()))


def main(argv=None):
    p = argparse.ArgumentParser(description="Median step size of each optimizer on the hidden layer's weights.")
    p.add_argument("--steps", type=mlp_mnist.positive_int, default=100, help="steps of epoch 1 to follow (default: %(default)s)")
    mlp_mnist.add_data_dir_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train_set, _ = mlp_mnist.load_data_or_exit(p, args.data_dir)
    print(f"hidden-layer weights w2 (512 x 512, initial mean |w2| = 0.0080, i.e. N(0, 0.01^2)); "
          f"first {args.steps} steps of epoch 1, seed 0; means over w2's entries")
    print(f"{'setting':<26} {'|g| step 1':>10} {'|step| 1':>9} {'|step|/lr':>9} {'|step| 2-' + str(args.steps):>11} "
          f"{'|w2| end':>9} {'dead ReLUs':>10}")
    for name, lr, hyper in SETTINGS:
        label = " ".join([name, f"lr={lr}"] + [f"{k}={v}" for k, v in hyper.items()])
        stats = step_statistics(name, lr, hyper, train_set, args.steps)
        print(f"{label:<26} {stats['grad']:10.2e} {stats['step'][0]:9.2e} {stats['step'][0] / lr:9.2f} "
              f"{np.mean(stats['step'][1:]):11.2e} {stats['weight']:9.4f} {100 * stats['dead']:9.1f}%")


if __name__ == "__main__":
    main()
