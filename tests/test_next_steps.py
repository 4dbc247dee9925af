"""docs/next_steps_optax.py and docs/next_steps_flax.py, the loop of docs/minimal_loop.py with optax and with
flax.nnx: their steps against this repository's own optimizers and model (the oracles), and a short run on
MNIST that learns."""
import os
import re
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest

import optimized_sgd
import train_utils
from conftest import ROOT

DOCS = os.path.join(ROOT, "docs")


@pytest.fixture
def script(monkeypatch):
    """-> load(name): the functions of docs/NAME.py, imported as `python docs/NAME.py` imports them."""
    monkeypatch.syspath_prepend(DOCS)  # where `from minimal_loop import ...` finds minimal_loop
    return lambda name: runpy.run_path(os.path.join(DOCS, name + ".py"), run_name="not_main")


def a_batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 784)).astype(np.float32), rng.integers(0, 10, n)


def repository_steps(optimizer, params, images, labels, steps):
    """`steps` steps of one of this repository's optimizers on one batch, with train_utils.loss -> params."""
    batch, state = (images, jax.nn.one_hot(labels, 10)), optimizer.init(params)
    for _ in range(steps):
        grads = jax.grad(train_utils.loss)(optimizer.grad_point(params, state), batch)
        params, state = optimizer.update(grads, state, params)
    return params


def assert_same_params(mine, theirs, atol=1e-7):
    assert len(jax.tree.leaves(mine)) == len(jax.tree.leaves(theirs)) == 6
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=atol)


ADAM_ATOL = 1e-6  # per step, 0.1% of an Adam step (lr 0.001): where a gradient is tiny, m / (sqrt(v) + eps) rounds
# differently in the two programs, and the next gradients differ by as much


@pytest.mark.parametrize("steps", [1, 3])
def test_the_optax_step_is_optimized_sgd_adam(script, steps):
    loop = script("next_steps_optax")
    params, (images, labels) = train_utils.init_params(jax.random.key(1)), a_batch()
    mine, opt_state = params, loop["optimizer"].init(params)
    for _ in range(steps):
        mine, opt_state = loop["update"](mine, opt_state, images, labels)
    assert_same_params(mine, repository_steps(optimized_sgd.adam(loop["LR"]), params, images, labels, steps),
                       atol=ADAM_ATOL * steps)


def test_the_minimal_loops_step_is_train_utils_sgd(script):
    loop = script("minimal_loop")
    params, (images, labels) = train_utils.init_params(jax.random.key(2)), a_batch(seed=1)
    assert_same_params(loop["update"](params, images, labels),
                       repository_steps(train_utils.sgd(loop["LR"]), params, images, labels, 1))


def test_try_this_optax_sgd_is_the_minimal_loops_step(script):
    """docs/10-next-steps.md's "Try this": optax.sgd(0.1) in place of optax.adam(LR) -> the minimal loop's step."""
    path = os.path.join(DOCS, "next_steps_optax.py")
    with open(path) as f:
        source = f.read()
    assert source.count("optax.adam(LR)") == 1
    changed = {"__name__": "not_main"}
    exec(compile(source.replace("optax.adam(LR)", "optax.sgd(0.1)"), path, "exec"), changed)
    loop = script("minimal_loop")
    assert loop["LR"] == 0.1
    params = mine = loop["init"](jax.random.key(0))
    opt_state = changed["optimizer"].init(params)
    for seed in range(3):
        images, labels = a_batch(seed=seed)
        params = loop["update"](params, images, labels)
        mine, opt_state = changed["update"](mine, opt_state, images, labels)
    assert_same_params(mine, params)


def test_the_flax_model_and_loss_are_the_repositorys(script):
    flax_loop = script("next_steps_flax")
    from flax import nnx

    model, params = flax_loop["MLP"](nnx.Rngs(0)), train_utils.init_params(jax.random.key(3))
    for layer, (w, b) in zip(model.layers, params):
        layer.kernel[...], layer.bias[...] = w, b
    images, labels = a_batch(seed=2)
    logp = jax.nn.log_softmax(model(images))
    np.testing.assert_allclose(logp, train_utils.batched_predict(params, images), rtol=1e-5, atol=1e-5)
    assert float(flax_loop["loss"](model, images, labels)) == pytest.approx(
        float(train_utils.loss(params, (images, jax.nn.one_hot(labels, 10)))), rel=1e-5)
    initial = flax_loop["MLP"](nnx.Rngs(0))
    assert [layer.kernel[...].shape for layer in initial.layers] == [w.shape for w, _ in params]
    assert abs(float(np.std(np.asarray(initial.layers[1].kernel[...]))) - 0.01) < 2e-4


def test_the_flax_step_is_optimized_sgd_adam(script):
    flax_loop = script("next_steps_flax")
    import optax
    from flax import nnx

    model, params = flax_loop["MLP"](nnx.Rngs(0)), train_utils.init_params(jax.random.key(4))
    for layer, (w, b) in zip(model.layers, params):
        layer.kernel[...], layer.bias[...] = w, b
    optimizer = nnx.Optimizer(model, optax.adam(flax_loop["LR"]), wrt=nnx.Param)
    images, labels = a_batch(seed=3)
    for _ in range(2):
        flax_loop["update"](model, optimizer, images, labels)
    mine = [(layer.kernel[...], layer.bias[...]) for layer in model.layers]
    assert_same_params(mine, repository_steps(optimized_sgd.adam(flax_loop["LR"]), params, images, labels, 2),
                       atol=ADAM_ATOL * 2)


@pytest.mark.parametrize("name", ["next_steps_optax", "next_steps_flax"])
def test_one_epoch_learns_mnist(mnist_dir, name):
    result = subprocess.run([sys.executable, os.path.join(DOCS, name + ".py")], capture_output=True, text=True,
                            cwd=ROOT, timeout=600, env=dict(os.environ, MNIST_DATA_DIR=mnist_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", result.stdout)]
    assert len(accuracies) == 1 and accuracies[0] > 0.90, result.stdout
