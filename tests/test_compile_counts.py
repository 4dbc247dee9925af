"""One compiled training program per optimizer (and batch shape) serves every learning rate, eps and seed.

The hyperparameters enter train_step and device_epoch as float32 arrays: data, not constants baked into
the program. If they were baked in again (a Python float closed over, or a static argument), every new
lr or seed would compile again, and these tests would fail. Compilations are counted with
jax.log_compiles, in a fresh process each (the cache of this one is warm with other tests' programs).
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

COUNTER = r'''
import collections, json, logging, sys
import jax
sys.path.insert(0, {root!r})
compiled = collections.Counter()

class Count(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            compiled[message.split()[1].split("(")[1].rstrip(")")] += 1

logging.getLogger("jax").addHandler(Count())
jax.config.update("jax_log_compiles", True)
marks = {{}}
def mark(name):
    marks[name] = dict(compiled)
'''


MARKED_LOOP = r'''
real_loop, runs = mlp_mnist.loop, []
def loop(setup, count, data_, epochs, log=print, on_epoch=lambda results: None, *rest, **kwargs):
    runs.append(1)
    def marked_setup():
        models = setup()
        mark(f"run {len(runs)} setup")
        return models
    def marked(results):
        mark(f"run {len(runs)} epoch {len(results[0]['records'])}")
        on_epoch(results)
    return real_loop(marked_setup, count, data_, epochs, log, marked, *rest, **kwargs)
mlp_mnist.loop = loop
'''  # mlp_mnist.loop, marked after its setup and after each epoch


def compile_counts(code, *argv, **env):
    """Run `code` after COUNTER in a fresh process -> the marks it took ({mark: {function: compilations}})."""
    script = COUNTER.format(root=ROOT) + code + "\nprint('MARKS', json.dumps(marks))\n"
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=ROOT,
                            timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("MARKS "))
    return json.loads(line[len("MARKS "):])


def delta(after, before, name):
    return after.get(name, 0) - before.get(name, 0)


@pytest.fixture(scope="module")
def counts(fake_dir, tmp_path_factory):
    """One fresh process: mlp_mnist.main with --lr 0.01 --seed 0, then --lr 0.1 --seed 3 (other hyperparameters
    too), for each loader; then compare_optimizers.py over 5 optimizers x 3 seeds; then one adam run, then
    2 learning rates x 3 seeds of it; a mark between each, and after each epoch of the mlp_mnist runs."""
    out = str(tmp_path_factory.mktemp("compiles"))
    code = r'''
import compare_optimizers, mlp_mnist
data, out = sys.argv[1], sys.argv[2]
''' + MARKED_LOOP + r'''mark("start")
for loader in ("torch", "device"):
    mlp_mnist.main(["--optimizer", "rmsprop", "--lr", "0.01", "--seed", "0", "--epochs", "2", "--loader", loader,
                    "--data-dir", data, "--out", f"{out}/{loader}-a"])
    mark(f"{loader} first run")
    mlp_mnist.main(["--optimizer", "rmsprop", "--lr", "0.1", "--rho", "0.5", "--eps", "0.001", "--seed", "3",
                    "--epochs", "1", "--loader", loader, "--data-dir", data, "--out", f"{out}/{loader}-b"])
    mark(f"{loader} second run")
mlp_mnist.loop = real_loop
compare = ["--epochs", "1", "--data-dir", data, "--batch-size", "64", "--train-subset", "256"]  # one batch shape, new
compare_optimizers.main(["--configs", "sgd", "momentum", "nesterov", "rmsprop", "adam", "--seeds", "0", "1", "2",
                         "--out", f"{out}/five"] + compare)
mark("five optimizers")
compare = ["--epochs", "1", "--data-dir", data, "--batch-size", "32"]
compare_optimizers.main(["--configs", "adam", "--seeds", "0", "--out", f"{out}/one"] + compare)
mark("one run")
compare_optimizers.main(["--configs", "adam:lr=0.001", "adam:lr=0.003,eps=0.01", "--seeds", "0", "1", "2",
                         "--out", f"{out}/six"] + compare)
mark("six runs")
'''
    return compile_counts(code, fake_dir, out)


def test_a_second_run_with_another_lr_and_seed_compiles_nothing(counts):
    assert delta(counts["torch first run"], counts["start"], "train_step") == 2  # batches of 128 and of 44
    assert delta(counts["device first run"], counts["torch second run"], "device_epoch") == 1
    for before, after in (("torch first run", "torch second run"), ("device first run", "device second run")):
        assert counts[after] == counts[before], (before, after)  # no training program, nor anything else


def test_epochs_1_and_2_compile_nothing(counts):
    """Runs 1 and 3 are the first runs of each loader: two epochs each, everything compiled in the setup, before
    the clock of epoch 1 starts (its seconds are the training's, not a compiler's)."""
    for run in (1, 3):
        assert counts[f"run {run} setup"].get("train_step", 0) + counts[f"run {run} setup"].get("device_epoch", 0) > \
            counts["start"].get("train_step", 0) + counts["start"].get("device_epoch", 0)  # the setup did compile
        assert counts[f"run {run} epoch 1"] == counts[f"run {run} setup"]
        assert counts[f"run {run} epoch 2"] == counts[f"run {run} epoch 1"]


def test_evaluation_compiles_once_per_chunk_size(counts):
    """300 training images and 50 test images, EVAL_CHUNK 2,000: two chunk shapes, (300, ...) and (50, ...)."""
    assert delta(counts["torch first run"], counts["start"], "predicted_digits") == 2


def test_compare_compiles_one_training_program_per_optimizer(counts):
    """5 optimizers x 3 seeds in batches of 64 (a shape no run before compiled): 5 programs, not 15."""
    assert delta(counts["five optimizers"], counts["device second run"], "train_step") == 5


def test_more_learning_rates_and_seeds_compile_nothing_more(counts):
    """After one adam run, the same command over 2 learning rates x 3 seeds compiles nothing at all."""
    assert delta(counts["one run"], counts["five optimizers"], "train_step") == 2  # batches of 32 and of 12
    assert counts["six runs"] == counts["one run"]


@pytest.fixture(scope="module")
def vmap_counts(fake_dir, tmp_path_factory):
    """One fresh process with two CPU devices (the model axis sharded across them): compare_optimizers.py --vmap,
    adam at 2 learning rates x 2 seeds (4 models) for 2 epochs with a validation split, the loop marked."""
    out = str(tmp_path_factory.mktemp("vmap-compiles"))
    code = r'''
import compare_optimizers, mlp_mnist
data, out = sys.argv[1], sys.argv[2]
''' + MARKED_LOOP + r'''
mark("start")
compare_optimizers.main(["--configs", "adam", "adam:lr=0.003", "--seeds", "0", "1", "--epochs", "2", "--vmap",
                         "--val-size", "100", "--data-dir", data, "--out", f"{out}/vmap"])
mark("done")
'''
    return compile_counts(code, fake_dir, out, XLA_FLAGS="--xla_force_host_platform_device_count=2")


def test_under_vmap_everything_compiles_in_the_setup_once(vmap_counts):
    """Under --vmap, evaluation compiles once per chunk shape in the setup (200 training, 100 validation and 50
    test images: three shapes), and epochs 1 and 2 compile nothing: the setup compiled for the shardings the
    real calls meet (sharded params, slices of the replicated images), not for unsharded stand-ins."""
    setup, start = vmap_counts["run 1 setup"], vmap_counts["start"]
    assert delta(setup, start, "predicted_digits") == 3
    assert delta(setup, start, "many_epochs") == 1
    assert vmap_counts["run 1 epoch 1"] == setup
    assert vmap_counts["run 1 epoch 2"] == setup
