"""Keeping what training learns: a checkpoint every epoch, a resumed run that ends bit for bit where the
uninterrupted one ends, studies that go on after a SIGKILL, and every bad checkpoint refused in one line.

"Bit for bit": every leaf of the params and of the optimizer state passes np.array_equal, and the
records are equal apart from their seconds. A negative control shows that the comparison can fail: a
resume whose batch order restarts from epoch 1 ends elsewhere.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoint
import mlp_mnist
import mnist_data
from conftest import ROOT, without_seconds
from optimized_sgd import OPTIMIZERS


def leaves(path):
    """A checkpoint's arrays -> {name: array}, read with NumPy alone (the meta aside)."""
    with np.load(path) as npz:
        return {name: npz[name] for name in npz.files if name != checkpoint.META}


def assert_bit_identical(run_a, run_b):
    """Two run folders: the same arrays in checkpoint.npz, every one equal bit for bit, and the same records."""
    a, b = leaves(f"{run_a}/checkpoint.npz"), leaves(f"{run_b}/checkpoint.npz")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    records = [json.load(open(f"{run}/metrics.json"))["epochs"] for run in (run_a, run_b)]
    assert without_seconds(records[0]) == without_seconds(records[1])


def train(*argv):
    mlp_mnist.main([str(a) for a in argv])


@pytest.mark.parametrize("loader", ["torch", "device"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_resumed_run_ends_bit_for_bit_where_the_whole_run_ends(name, loader, fake_dir, tmp_path, capsys):
    """3 epochs in one go, against 1 epoch, then --resume with --epochs 3: the same arrays and records."""
    common = ["--optimizer", name, "--loader", loader, "--data-dir", fake_dir]
    train(*common, "--epochs", 3, "--out", tmp_path / "whole")
    train(*common, "--epochs", 1, "--out", tmp_path / "parts")
    (first_epoch,) = json.load(open(tmp_path / "parts" / "metrics.json"))["epochs"]
    train("--resume", tmp_path / "parts", "--epochs", 3, "--data-dir", fake_dir)
    assert_bit_identical(tmp_path / "whole", tmp_path / "parts")
    meta = json.load(open(tmp_path / "parts" / "metrics.json"))
    assert meta["completed_epochs"] == 3 and meta["config"]["optimizer"] == name
    assert meta["epochs"][0] == first_epoch  # its seconds too: epoch 1 was not trained again, only epochs 2 and 3
    capsys.readouterr()


def test_a_resume_whose_order_restarts_from_epoch_1_ends_elsewhere(fake_dir, tmp_path, monkeypatch, capsys):
    """The negative control: the same resume, but epoch 2 drawn with epoch 1's order. The comparison above must
    then fail (were it blind to the order, it would pass here too)."""
    common = ["--optimizer", "momentum", "--loader", "device", "--data-dir", fake_dir]
    train(*common, "--epochs", 2, "--out", tmp_path / "whole")
    train(*common, "--epochs", 1, "--out", tmp_path / "parts")
    real_order = mnist_data.epoch_order
    monkeypatch.setattr(mnist_data, "epoch_order", lambda n, seed, epoch: real_order(n, seed, epoch - 1))
    train("--resume", tmp_path / "parts", "--epochs", 2, "--data-dir", fake_dir)
    with pytest.raises(AssertionError):
        assert_bit_identical(tmp_path / "whole", tmp_path / "parts")
    capsys.readouterr()


def test_the_checkpoint_is_a_pytree_numpy_alone_reads(fake_dir, tmp_path, capsys):
    """checkpoint.npz: every leaf of params and Adam's state under its path, Adam's step an int32 count of the
    steps taken; model.npz: the params alone, the same arrays."""
    train("--optimizer", "adam", "--epochs", 2, "--data-dir", fake_dir, "--out", tmp_path)
    saved, model = leaves(tmp_path / "checkpoint.npz"), leaves(tmp_path / "model.npz")
    assert saved["params/0/0"].shape == (784, 512) and saved["params/2/1"].shape == (10,)
    assert saved["opt_state/mean/1/0"].shape == saved["opt_state/mean_square/1/0"].shape == (512, 512)
    assert saved["opt_state/step"].dtype == np.int32 and saved["opt_state/step"] == 2 * 3  # 3 batches an epoch
    assert sorted(model) == sorted(n for n in saved if n.startswith("params/"))
    assert all(np.array_equal(model[n], saved[n]) for n in model)
    _, meta = checkpoint.read(tmp_path / "checkpoint.npz")
    assert meta["epoch"] == 2 and meta["configs"][0]["optimizer"] == "adam" and meta["provenance"]["code"]["files"]
    capsys.readouterr()


def wait_for(condition, process, seconds=240):
    """Poll condition() until it holds -> True; False if the process ended first or time ran out."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and process.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


def checkpoint_epoch(path):
    try:
        return checkpoint.read(path)[1]["epoch"]
    except checkpoint.CheckpointError:
        return 0


def run(*argv, **kwargs):
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          **kwargs)


def test_a_run_killed_mid_epoch_resumes_bit_for_bit(mnist_dir, tmp_path):
    """mlp_mnist.py killed with SIGKILL during epoch 2 of 3 (no handler runs): checkpoint.npz holds epoch 1, and
    --resume ends where the uninterrupted run ends, bit for bit."""
    common = ["mlp_mnist.py", "--optimizer", "adam", "--epochs", 3, "--train-subset", 20000, "--data-dir", mnist_dir]
    whole = run(*common, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.Popen([sys.executable, *map(str, common), "--out", tmp_path / "killed"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: checkpoint_epoch(tmp_path / "killed" / "checkpoint.npz") == 1, killed)
        time.sleep(0.2)  # into epoch 2, which takes about a second on 2 CPU cores
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert 1 <= checkpoint_epoch(tmp_path / "killed" / "checkpoint.npz") < 3  # killed before the end
    assert not os.path.exists(tmp_path / "killed" / "model.npz")
    resumed = run("mlp_mnist.py", "--resume", tmp_path / "killed", "--data-dir", mnist_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(tmp_path / "whole", tmp_path / "killed")
    log = open(tmp_path / "killed" / "log.txt").read()
    assert "resumed from" in log and log.count("epoch  train s") == 2  # the first part's lines are kept


STUDIES = {  # script -> its flags for a small study of a few seconds an epoch
    "compare_optimizers.py": ["--configs", "sgd", "adam:lr=0.003", "--seeds", 0, 1, "--epochs", 3,
                              "--train-subset", 4000],
    "tune_optimizers.py": ["--optimizers", "sgd", "adam", "--lrs", 0.001, 0.01, "--seeds", 0, "--report-seeds", 1,
                           "--epochs", 2, "--train-subset", 4000, "--val-size", 1000],
}


def without_seconds_anywhere(value):
    """A summary with every '...seconds...' entry taken out, at any depth."""
    if isinstance(value, dict):
        return {k: without_seconds_anywhere(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_seconds_anywhere(v) for v in value]
    return value


@pytest.mark.parametrize("script, vmap", [("compare_optimizers.py", False), ("tune_optimizers.py", True)],
                         ids=["compare-one-by-one", "tune-vmap"])
def test_a_study_killed_mid_way_resumes_to_the_same_summary(script, vmap, mnist_dir, tmp_path):
    """The study killed with SIGKILL once its first checkpoint holds an epoch, then --resume: the same summary
    as the uninterrupted study (the seconds aside), and the same arrays in every checkpoint, under --vmap the
    stacked ones. (Each script works both ways; two of the four pairs keep the suite's time down.)"""
    argv = [script, *STUDIES[script], "--data-dir", mnist_dir] + (["--vmap"] if vmap else [])
    whole = run(*argv, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    folder = tmp_path / "killed" / "checkpoints"
    killed = subprocess.Popen([sys.executable, *map(str, argv), "--out", tmp_path / "killed"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any(checkpoint_epoch(folder / f) >= 1 for f in os.listdir(folder)
                                    if f.endswith(".npz")) if folder.is_dir() else False, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    before = json.load(open(tmp_path / "killed" / "summary.json")) if script == "tune_optimizers.py" and \
        os.path.exists(tmp_path / "killed" / "summary.json") else None
    assert before is None or before["selected"] != json.load(open(tmp_path / "whole" / "summary.json"))["selected"]
    resumed = run(script, "--resume", tmp_path / "killed", "--data-dir", mnist_dir)
    assert resumed.returncode == 0, resumed.stderr
    summaries = [json.load(open(tmp_path / run_dir / "summary.json")) for run_dir in ("whole", "killed")]
    for summary in summaries:
        summary.pop("provenance")
    assert without_seconds_anywhere(summaries[0]) == without_seconds_anywhere(summaries[1])
    for name in os.listdir(tmp_path / "whole" / "checkpoints"):
        if name.endswith(".npz"):
            a, b = (leaves(tmp_path / run_dir / "checkpoints" / name) for run_dir in ("whole", "killed"))
            assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n]) for n in a), name


# --- Bad checkpoints: one line, exit 2, nothing overwritten -------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(fake_dir, tmp_path_factory):
    """An adam run of 1 epoch (of a planned 1), to copy and spoil."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train("--optimizer", "adam", "--epochs", 1, "--data-dir", fake_dir, "--out", out)
    return out


def rewrite(path, change_arrays=lambda arrays: None, change_meta=lambda meta: None):
    """Rewrite a checkpoint with change_arrays(its arrays) and change_meta(its meta) done to it."""
    arrays, meta = checkpoint.read(path)
    change_arrays(arrays)
    change_meta(meta)
    arrays[checkpoint.META] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def other_code(meta):
    meta["provenance"]["code"]["files"]["train_utils.py"] = "0123456789abcdef"


def fewer_epochs_than_metrics(run_dir):
    rewrite(run_dir / "checkpoint.npz", change_meta=lambda meta: meta.update(epoch=0))


def diverged(run_dir):
    metrics = json.load(open(run_dir / "metrics.json"))
    json.dump(dict(metrics, status="diverged in epoch 2"), open(run_dir / "metrics.json", "w"))


BAD = {  # what is done to a copy of the run -> (extra flags, what the one line must say)
    "no folder": (lambda d: shutil.rmtree(d), [], "holds no run to resume"),
    "no checkpoint": (lambda d: os.remove(d / "checkpoint.npz"), [], "holds no run to resume"),
    "truncated": (lambda d: open(d / "checkpoint.npz", "r+b").truncate(4000), [], "truncated or corrupt"),
    "corrupt": (lambda d: open(d / "checkpoint.npz", "wb").write(os.urandom(5000)), [], "truncated or corrupt"),
    "a model file": (lambda d: shutil.copy(d / "model.npz", d / "checkpoint.npz"), [], "not a training checkpoint"),
    "another optimizer asked": (lambda d: None, ["--optimizer", "sgd"], "--optimizer sgd is not the run's (adam)"),
    "another lr asked": (lambda d: None, ["--lr", "0.1"], "--lr 0.1 is not the run's (0.001)"),
    "--out with --resume": (lambda d: None, ["--out", "elsewhere"], "--out too"),
    "fewer epochs": (lambda d: None, ["--epochs", "1"], "already has its 1 epochs"),
    "another optimizer's arrays": (lambda d: rewrite(d / "checkpoint.npz", lambda a: a.pop("opt_state/step")),
                                   ["--epochs", "2"], "has no opt_state/step"),
    "other layer sizes": (lambda d: rewrite(d / "checkpoint.npz", lambda a: a.update(
        {"params/0/0": np.zeros((784, 256), np.float32)})), ["--epochs", "2"], "other layer sizes"),
    "another dtype": (lambda d: rewrite(d / "checkpoint.npz", lambda a: a.update(
        {"opt_state/step": np.int64(a["opt_state/step"])})), ["--epochs", "2"], "opt_state/step is int64"),
    "other code": (lambda d: rewrite(d / "checkpoint.npz", change_meta=other_code), ["--epochs", "2"],
                   "train_utils.py changed since"),
    "metrics ahead of the checkpoint": (fewer_epochs_than_metrics, ["--epochs", "2"], "resuming would lose epochs"),
    "a diverged run": (diverged, ["--epochs", "2"], "resuming would only repeat it"),
    "a damaged meta": (lambda d: rewrite(d / "checkpoint.npz", change_meta=lambda m: m["runs"][0].pop("records")),
                       ["--epochs", "2"], "not a training checkpoint"),
    "a metrics.json that is a list": (lambda d: (d / "metrics.json").write_text("[1, 2]"),
                                      ["--epochs", "2", "--lr", "1"], "--lr 1.0 is not the run's"),
}


def folder_digest(folder):
    """{file: sha256} of every file under folder (nothing when it is gone)."""
    return {os.path.join(top, name): hashlib.sha256(open(os.path.join(top, name), "rb").read()).hexdigest()
            for top, _, names in os.walk(folder) for name in names}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_resume_is_one_line_and_changes_nothing(case, finished_run, fake_dir, tmp_path, capsys):
    spoil, flags, message = BAD[case]
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    spoil(run_dir)
    before = folder_digest(run_dir)
    with pytest.raises(SystemExit) as exit_info:
        train("--resume", run_dir, "--data-dir", fake_dir, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(("error:", "mlp_mnist.py: error:")), err
    assert message in err[0], err
    assert folder_digest(run_dir) == before  # nothing written, nothing truncated


def test_a_study_resumed_with_other_settings_is_refused(fake_dir, tmp_path, capsys):
    """compare_optimizers.py --resume with another --seeds, or fewer --epochs; tune_optimizers.py --resume of a
    comparison; a folder with no study: each one line, exit 2, and the folder as it was."""
    import compare_optimizers
    import tune_optimizers

    argv = ["--configs", "sgd", "--seeds", "0", "--epochs", "2", "--data-dir", fake_dir]
    compare_optimizers.main(argv + ["--out", str(tmp_path / "study")])
    for main, folder, flags, message in (
            (compare_optimizers.main, "study", ["--seeds", "0", "1"], "--seeds [0, 1] is not the run's ([0])"),
            (compare_optimizers.main, "study", ["--epochs", "1"], "--epochs 1 is fewer than the study's 2"),
            (tune_optimizers.main, "study", [], "a study of another script (comparison), not of this one (tuning)"),
            (compare_optimizers.main, "empty", [], "holds no study to resume")):
        before = folder_digest(tmp_path / folder)
        with pytest.raises(SystemExit) as exit_info:
            main(["--resume", str(tmp_path / folder), "--data-dir", fake_dir] + flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
        assert folder_digest(tmp_path / folder) == before


def test_a_run_killed_before_its_last_files_finishes_them(finished_run, fake_dir, tmp_path, capsys):
    """Killed after its last checkpoint but before model.npz: --resume trains nothing and writes model.npz, the
    checkpoint's params, and the plots."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    for name in ("model.npz", "curves.png", "confusion.png", "misclassified.png"):
        os.remove(run_dir / name)
    train("--resume", run_dir, "--data-dir", fake_dir)
    model, saved = leaves(run_dir / "model.npz"), leaves(run_dir / "checkpoint.npz")
    assert sorted(model) == sorted(n for n in saved if n.startswith("params/"))
    assert all(np.array_equal(model[n], saved[n]) for n in model)
    assert (run_dir / "confusion.png").exists()
    records = [json.load(open(folder / "metrics.json"))["epochs"] for folder in (run_dir, finished_run)]
    assert records[0] == records[1]
    capsys.readouterr()


# --- Hyperparameters are float32 in the step: checked as float32 ------------------------------------------


@pytest.mark.parametrize("flags, float32_value", [
    (["--optimizer", "adam", "--beta2", "0.99999999"], "is 1 in float32"),  # 1 - beta2^t = 0: NaN at step 1
    (["--optimizer", "adam", "--eps", "1e-50"], "is 0 in float32"),
    (["--optimizer", "momentum", "--mu", "0.999999999"], "is 1 in float32"),
    (["--lr", "1e39"], "is inf in float32"),
    (["--optimizer", "adam", "--eps", "1e-40"], "is 9.99995e-41 in float32"),  # subnormal: XLA flushes it to 0
])
def test_a_hyperparameter_that_float32_cannot_hold_is_refused(flags, float32_value, capsys):
    """The step computes in float32: a value valid as a Python float but not as float32 is a usage error that
    names its float32 value (not a run that diverges and then advises a smaller --lr)."""
    with pytest.raises(SystemExit) as exit_info:
        mlp_mnist.build_parser().parse_args(flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and float32_value in err and flags[-2] in err


def test_adam_with_beta2_one_in_float32_goes_nan_at_step_1():
    """Why the check above matters: float32(0.99999999) is 1.0, and then v_hat = 0 / (1 - 1) is NaN at once."""
    import jax.numpy as jnp

    from optimized_sgd import adam

    assert np.float32(0.99999999) == 1.0
    params = [jnp.ones(3, jnp.float32)]
    optimizer = adam(jnp.float32(0.001), beta2=jnp.float32(0.99999999))
    new_params, _ = optimizer.update([jnp.ones(3, jnp.float32)], optimizer.init(params), params)
    assert np.isnan(np.asarray(new_params[0])).all()
