"""docs/minimal_loop.py, the whole idea in about 30 lines: it runs as a learner runs it and learns MNIST; it
needs nothing of this repository (nor torch); its IDX reader reads what mnist_data.py reads; its model and loss
are this repository's (train_utils.py), written again in a few lines."""
import ast
import json
import os
import re
import runpy
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import mnist_data
from conftest import ROOT, write_fake_mnist
from train_utils import batched_predict, init_params, inputs_from_uint8, loss

LOOP = os.path.join(ROOT, "docs", "minimal_loop.py")


def run_loop_module(monkeypatch, data_dir):
    """The loop's functions, its MNIST_DATA_DIR set to data_dir (its main part not run)."""
    monkeypatch.setenv("MNIST_DATA_DIR", data_dir)
    return runpy.run_path(LOOP, run_name="not_main")


def test_the_loop_reaches_97_percent(mnist_dir):
    result = subprocess.run([sys.executable, LOOP], capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, MNIST_DATA_DIR=mnist_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", result.stdout)]
    assert len(accuracies) == 3 and accuracies[-1] >= 0.97, result.stdout


def test_without_the_10_its_loss_explodes_and_turns_nan(mnist_dir, monkeypatch):
    """The comment on the loop's loss, as it says it: the loop's own update, its "/ 10" dropped, from the loop's
    initial params on its first epoch's first 100 batches (of 469): the loss passes 1000 within 5 steps and is NaN
    within 100; the params are then all NaN (and stay so: p - LR * NaN), every guess is 0, test accuracy 9.8%."""
    with open(LOOP) as f:
        source = f.read()
    assert source.count("axis=1)) / 10\n") == 1  # the end of the loss's line
    monkeypatch.setenv("MNIST_DATA_DIR", mnist_dir)
    loop = {"__name__": "not_main"}
    exec(compile(source.replace("axis=1)) / 10\n", "axis=1))\n"), LOOP, "exec"), loop)
    (images, labels), (test_images, test_labels) = loop["load"]("train"), loop["load"]("t10k")
    init_key, key = jax.random.split(jax.random.key(0))  # as the loop's main part does
    params, (_, shuffle_key) = loop["init"](init_key), jax.random.split(key)
    order, batch = np.asarray(jax.random.permutation(shuffle_key, len(images))), loop["BATCH"]
    assert -(-len(images) // batch) == 469  # the batches of an epoch
    loss_of = jax.jit(loop["loss"])
    losses = []
    for i in range(0, 100 * batch, batch):
        losses.append(float(loss_of(params, images[order[i:i + batch]], labels[order[i:i + batch]])))
        params = loop["update"](params, images[order[i:i + batch]], labels[order[i:i + batch]])
    assert max(losses[:5]) > 1000, losses[:5]
    assert np.isnan(losses).any(), losses
    assert all(np.isnan(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))
    guesses = np.asarray(jax.numpy.argmax(loop["batched_predict"](params, test_images), axis=1))
    assert (guesses == 0).all() and np.mean(guesses == test_labels) == pytest.approx(0.098)


def test_the_loop_uses_the_jax_it_teaches():
    with open(LOOP) as f:
        source = f.read()
    for idea in ("jax.random.split", "jax.random.permutation", "@jax.jit", "jax.grad", "jax.tree.map",
                 "jax.vmap(predict, in_axes=(None, 0))", ") / 10"):
        assert idea in source, idea
    docstring = ast.parse(source).body[0]
    code = [line for number, line in enumerate(source.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")
            and not docstring.lineno <= number <= docstring.end_lineno]
    assert len(code) <= 45  # about 40 lines of code, the docstring and the comments aside


def test_it_imports_neither_torch_nor_the_repository(tmp_path):
    """Run as a learner runs it, from a clone's folder with the data in ./data/MNIST/raw (fake MNIST here): then
    every module it loaded is listed, and none is torch or a file of this repository."""
    write_fake_mnist(tmp_path / "data" / "MNIST" / "raw", gz=True)
    probe = ("import json, runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
             "print('MODULES', json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items()}))")
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "PYTHONPATH")}
    result = subprocess.run([sys.executable, "-c", probe, LOOP], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r"test accuracy", result.stdout)) == 3, result.stdout
    modules = json.loads(result.stdout.split("MODULES ", 1)[1])
    assert "jax" in modules and "numpy" in modules  # the probe sees what was imported
    assert not [name for name in modules if name.split(".")[0] in ("torch", "torchvision")]
    repository = [name for name, path in modules.items() if path and os.path.abspath(path).startswith(ROOT + os.sep)]
    assert repository == [], repository


@pytest.mark.parametrize("inside", [".", os.path.join("MNIST", "raw")])
def test_its_reader_reads_what_mnist_data_reads(tmp_path, monkeypatch, inside):
    """The same gzipped files, in the folder or in its MNIST/raw/ (where torchvision downloads): the same arrays."""
    write_fake_mnist(tmp_path / inside, n_train=70, n_test=30, gz=True, seed=4)
    loop = run_loop_module(monkeypatch, str(tmp_path))
    files = mnist_data.locate_mnist(str(tmp_path), download=False)
    for name in mnist_data.ALL_FILES:
        expected = (mnist_data.read_images if "images" in name else mnist_data.read_labels)(files[name])
        mine = loop["read_idx"](name)
        assert mine.dtype == expected.dtype == np.uint8 and mine.shape == expected.shape, name
        np.testing.assert_array_equal(mine, expected)
    images, labels = loop["load"]("t10k")
    expected = mnist_data.read_split(files, "test")
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, np.asarray(inputs_from_uint8(expected.data.numpy())))
    np.testing.assert_array_equal(labels, expected.targets.numpy())


def test_its_reader_reads_the_real_mnist_as_mnist_data_does(mnist_dir, monkeypatch):
    loop = run_loop_module(monkeypatch, mnist_dir)
    files = mnist_data.locate_mnist(mnist_dir, download=False)
    for split in mnist_data.SPLIT_FILES:
        expected = mnist_data.read_split(files, split)
        images, labels = loop["load"]({"train": "train", "test": "t10k"}[split])
        assert images.shape == (len(expected), 784)
        np.testing.assert_array_equal(images, np.asarray(inputs_from_uint8(expected.data.numpy())))
        np.testing.assert_array_equal(labels, expected.targets.numpy())


def test_its_model_and_loss_are_the_repositorys():
    loop = runpy.run_path(LOOP, run_name="not_main")
    params = init_params(jax.random.key(3))
    images = np.random.default_rng(0).integers(0, 256, (5, 784)).astype(np.float32)
    labels = np.array([0, 3, 9, 1, 1])
    np.testing.assert_allclose(loop["batched_predict"](params, images), batched_predict(params, images), rtol=1e-5,
                               atol=1e-5)
    one_hot = np.eye(10, dtype=np.float32)[labels]
    mine = float(loop["loss"](params, images, labels))
    assert mine == pytest.approx(float(loss(params, (images, one_hot))), rel=1e-5)
    logits = batched_predict(params, images)  # log-probabilities are logits too: log_softmax leaves them as they are
    cross_entropy = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)))
    assert mine == pytest.approx(cross_entropy / 10, rel=1e-5)  # the usual cross-entropy, divided by 10
    initial = loop["init"](jax.random.key(0))
    assert [w.shape for w, _ in initial] == [w.shape for w, _ in params]
    assert abs(float(np.std(np.asarray(initial[1][0]))) - 0.01) < 2e-4
