"""docs/minimal_loop.py, the whole idea in about 30 lines: it runs as a learner runs it and learns MNIST; its
model and loss are this repository's (train_utils.py), written again in a few lines."""
import os
import re
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from train_utils import batched_predict, init_params, loss

LOOP = os.path.join(ROOT, "docs", "minimal_loop.py")


def test_the_loop_reaches_97_percent(mnist_dir):
    result = subprocess.run([sys.executable, LOOP], capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, MNIST_DATA_DIR=mnist_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", result.stdout)]
    assert len(accuracies) == 3 and accuracies[-1] >= 0.97, result.stdout


def test_the_loop_uses_the_jax_it_teaches():
    with open(LOOP) as f:
        source = f.read()
    for idea in ("jax.random.split", "jax.random.permutation", "@jax.jit", "jax.grad", "jax.tree.map",
                 "jax.vmap(predict, in_axes=(None, 0))"):
        assert idea in source, idea
    code = [line for line in source.splitlines() if line.strip() and not line.strip().startswith(("#", '"""'))]
    assert len(code) <= 40


def test_its_model_and_loss_are_the_repositorys():
    loop = runpy.run_path(LOOP, run_name="not_main")
    params = init_params(jax.random.key(3))
    images = np.random.default_rng(0).integers(0, 256, (5, 784)).astype(np.float32)
    labels = np.array([0, 3, 9, 1, 1])
    np.testing.assert_allclose(loop["batched_predict"](params, images), batched_predict(params, images), rtol=1e-5,
                               atol=1e-5)
    one_hot = np.eye(10, dtype=np.float32)[labels]
    assert float(loop["loss"](params, images, labels)) == pytest.approx(float(loss(params, (images, one_hot))), rel=1e-5)
    mine = loop["init"](jax.random.key(0))
    assert [w.shape for w, _ in mine] == [w.shape for w, _ in params]
    assert abs(float(np.std(np.asarray(mine[1][0]))) - 0.01) < 2e-4
