"""How far does one step of each optimizer move the weights? Why RMSProp at lr 0.01 fails here.

    python step_sizes.py --data-dir ../shared/datasets/mnist

Trains the first --steps steps of epoch 1 (seed 0, batch 128, the mlp_mnist.py recipe) for
each setting and prints, for the hidden layer's weights w2 (512 x 512, initialised at
N(0, 0.01^2)): the mean |gradient| and |step| at step 1, the mean |step| over the later
steps, the mean |w2| at the end, and how many of the 1024 hidden ReLUs are dead by then
(zero for all of the first 1000 training images: a dead unit gets no gradient again). SGD's step is lr * |g|, tiny here because the loss is divided
by 10; RMSProp's and Adam's step is about lr whatever |g| is (RMSProp's first one is
lr / sqrt(1 - rho): 3.16 lr with rho = 0.9), so with lr = 0.01 every step moves each weight
by as much as its initial size.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch

import mlp_mnist
import mnist_data
from optimized_sgd import make_optimizer
from train_utils import batch_from_uint8, init_params, loss, relu

SETTINGS = [  # (optimizer, lr, extra hyperparameters)
    ("sgd", 0.01, {}),
    ("momentum", 0.01, {}),
    ("rmsprop", 0.01, {}),
    ("rmsprop", 0.0003, {"rho": 0.9}),  # the setting that reaches 98% (README, "RMSProp, finished")
    ("adam", 0.001, {}),
    ("adam", 0.001, {"eps": 0.01}),  # eps above sqrt(v): small gradients get small steps again
]
LAYER = 1  # params[1] = (w2, b2): the 512 x 512 hidden layer, every weight of which gets a gradient


def dead_fraction(params, images):
    """Fraction of the 1024 hidden ReLUs that output 0 for every one of `images` (uint8 (N, 28, 28))."""
    h = images.reshape(len(images), -1).astype(jnp.float32)
    dead = []
    for w, b in params[:-1]:
        h = relu(h @ w + b)
        dead.append(jnp.all(h == 0, axis=0))
    return float(jnp.mean(jnp.concatenate(dead)))


def step_statistics(name, lr, hyper, train_set, steps, seed=0):
    """-> dict: mean |g| and mean |step| of w2 per step (lists), dead ReLU fraction at the end."""
    optimizer = make_optimizer(name, lr, **hyper)
    params = init_params(jax.random.PRNGKey(seed))
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, images, labels):
        grads = jax.grad(loss)(optimizer.grad_point(params, state), batch_from_uint8(images, labels))
        new_params, state = optimizer.update(grads, state, params)
        moved = jnp.mean(jnp.abs(new_params[LAYER][0] - params[LAYER][0]))
        return new_params, state, jnp.mean(jnp.abs(grads[LAYER][0])), moved

    grad_sizes, step_sizes = [], []
    for (images, labels), _ in zip(mnist_data.train_loader(train_set, 128, seed), range(steps)):
        params, state, grad_size, moved = step(params, state, images.numpy(), labels.numpy())
        grad_sizes.append(float(grad_size))
        step_sizes.append(float(moved))
    return dict(grad=grad_sizes, step=step_sizes, weight=float(jnp.mean(jnp.abs(params[LAYER][0]))),
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
        print(f"{label:<26} {stats['grad'][0]:10.2e} {stats['step'][0]:9.2e} {stats['step'][0] / lr:9.2f} "
              f"{np.mean(stats['step'][1:]):11.2e} {stats['weight']:9.4f} {100 * stats['dead']:9.1f}%")


if __name__ == "__main__":
    main()
