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


MARKED_TRAINING = r'''
runs = []
real = dict(compile_predictions=warm_up.compile_predictions, train=mlp_mnist.train,
            train_many=many_models.train_many)
def compile_predictions(*args):  # the setup's last compilation
    real["compile_predictions"](*args)
    runs.append(1)
    mark(f"run {len(runs)} setup")
def marked(on_epoch):
    def after_epoch(run_or_runs):
        first = run_or_runs if isinstance(run_or_runs, dict) else run_or_runs[0]
        mark(f"run {len(runs)} epoch {len(first['records'])}")
        on_epoch(run_or_runs)
    return after_epoch
warm_up.compile_predictions = compile_predictions
mlp_mnist.train = lambda *args, on_epoch=lambda run: None, **kwargs: real["train"](
    *args, on_epoch=marked(on_epoch), **kwargs)
many_models.train_many = lambda *args, on_epoch=lambda runs: None, **kwargs: real["train_many"](
    *args, on_epoch=marked(on_epoch), **kwargs)
def unmark():
    warm_up.compile_predictions, mlp_mnist.train, many_models.train_many = real.values()
'''  # mlp_mnist.train and many_models.train_many, marked after their setup and after each epoch


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
import compare_optimizers, many_models, mlp_mnist
from plumbing import warm_up
data, out = sys.argv[1], sys.argv[2]
''' + MARKED_TRAINING + r'''mark("start")
for loader in ("torch", "device"):
    mlp_mnist.main(["--optimizer", "rmsprop", "--lr", "0.01", "--seed", "0", "--epochs", "2", "--loader", loader,
                    "--data-dir", data, "--out", f"{out}/{loader}-a"])
    mark(f"{loader} first run")
    mlp_mnist.main(["--optimizer", "rmsprop", "--lr", "0.1", "--rho", "0.5", "--eps", "0.001", "--seed", "3",
                    "--epochs", "1", "--loader", loader, "--data-dir", data, "--out", f"{out}/{loader}-b"])
    mark(f"{loader} second run")
unmark()
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
import compare_optimizers, many_models, mlp_mnist
from plumbing import warm_up
data, out = sys.argv[1], sys.argv[2]
''' + MARKED_TRAINING + r'''
mark("start")
compare_optimizers.main(["--configs", "adam", "adam:lr=0.003", "--seeds", "0", "1", "--epochs", "2", "--vmap",
                         "--val-size", "100", "--data-dir", data, "--out", f"{out}/vmap"])
mark("done")
'''
    return compile_counts(code, fake_dir, out, JAX_NUM_CPU_DEVICES="2")


def test_under_vmap_everything_compiles_in_the_setup_once(vmap_counts):
    """Under --vmap, evaluation compiles once per chunk shape in the setup (200 training, 100 validation and 50
    test images: three shapes), and epochs 1 and 2 compile nothing: the setup compiled for the shardings the
    real calls meet (sharded params, slices of the replicated images), not for unsharded stand-ins."""
    setup, start = vmap_counts["run 1 setup"], vmap_counts["start"]
    assert delta(setup, start, "predicted_digits") == 3
    assert delta(setup, start, "many_epochs") == 1
    assert vmap_counts["run 1 epoch 1"] == setup
    assert vmap_counts["run 1 epoch 2"] == setup


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")

HLO = r'''
import jax, jax.numpy as jnp, numpy as np
import many_models, mnist_data, optimized_sgd
name, count, n, batch = "adam", 4, 256, 64
per_model, shared, padded = many_models.model_shardings(count)
hyper = {k: np.full(padded, v, np.float32) for k, v in optimized_sgd.hyperparameters(name).items()}
state = jax.device_put(many_models.initial_states(name, hyper, range(padded)), per_model)
hyper = jax.device_put(hyper, per_model)
images = jax.ShapeDtypeStruct((n, 28, 28), jnp.uint8, sharding=shared)
labels = jax.ShapeDtypeStruct((n,), jnp.uint8, sharding=shared)
orders = jax.ShapeDtypeStruct((padded, n), jnp.int32, sharding=per_model)
epoch = many_models.many_epochs.lower(state["params"], state["opt_state"], hyper, images, labels, orders, name=name,
                                      batch_size=batch).compile().as_text()
mixed = jax.jit(lambda losses: jnp.mean(losses)).lower(
    jax.ShapeDtypeStruct((padded,), jnp.float32, sharding=per_model)).compile().as_text()
print("DEVICES", len(jax.devices()), "SHARDED", state["params"][0][0].sharding.spec)
print("HLO_EPOCH", [c for c in COLLECTIVES if c in epoch])
print("HLO_MIXED", [c for c in COLLECTIVES if c in mixed])
'''


def test_the_sharded_vmapped_epoch_holds_no_collective():
    """The models never exchange anything: the compiled epoch, its model axis split over 2 CPU devices, holds no
    collective operation in its HLO text. The control: a mean over the sharded model axis compiles to one."""
    script = f"import sys; sys.path.insert(0, {ROOT!r}); COLLECTIVES = {COLLECTIVES!r}\n" + HLO
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu",
                                     JAX_NUM_CPU_DEVICES="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("DEVICES", "HLO_")))
    assert lines["DEVICES"] == "2 SHARDED P('model',)"  # two devices, the model axis split over them
    assert lines["HLO_EPOCH"] == "[]"
    assert lines["HLO_MIXED"] != "[]"  # the check can see a collective when there is one
