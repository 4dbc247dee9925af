"""mlp_mnist.py end to end, as a user runs it: a subprocess on the real MNIST files."""
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from conftest import ROOT

SHORT_RUN = ["--optimizer", "adam", "--epochs", "1", "--train-subset", "4000", "--seed", "0"]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "mlp_mnist.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def short_runs(mnist_dir, tmp_path_factory):
    """The same short run twice, into two fresh --out folders."""
    outs = [tmp_path_factory.mktemp("run") / "out" for _ in range(2)]
    results = [run_cli(*SHORT_RUN, "--data-dir", mnist_dir, "--out", str(out)) for out in outs]
    return list(zip(results, outs))


def test_short_run_learns_and_writes_metrics(short_runs, mnist_dir):
    result, out = short_runs[0]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["completed_epochs"] == 1
    config = metrics["config"]
    assert config["optimizer"] == "adam" and config["lr"] == 0.001  # the README's lr for adam
    assert config["batch_size"] == 128 and config["train_subset"] == 4000 and config["data_dir"] == mnist_dir
    for key in ("jax", "jaxlib", "torch", "device"):
        assert metrics["environment"][key]
    (record,) = metrics["epochs"]
    assert set(record) == {"epoch", "train_seconds", "eval_seconds", "train_loss", "train_accuracy",
                           "val_accuracy", "test_accuracy"}
    assert record["val_accuracy"] is None  # no validation split unless asked for
    assert metrics["environment"]["cpu_count"] >= 1 and metrics["environment"]["memory_gb"]
    assert record["test_accuracy"] > 0.85 and record["train_accuracy"] > 0.85
    assert 0 < record["train_loss"] < 0.15 and record["train_seconds"] > 0
    # the printed line carries the same numbers
    assert f"{100 * record['test_accuracy']:.2f}%" in result.stdout
    for png in ("curves.png", "confusion.png", "misclassified.png"):
        image = matplotlib.image.imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 100


def test_same_seed_same_metrics(short_runs):
    def numbers(out):
        records = json.loads((out / "metrics.json").read_text())["epochs"]
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]

    (first, out1), (second, out2) = short_runs
    assert first.returncode == 0 and second.returncode == 0
    assert numbers(out1) == numbers(out2)


def test_help_explains_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    import mlp_mnist

    flags = [option for action in mlp_mnist.build_parser()._actions for option in action.option_strings]
    assert {"--loader", "--val-size", "--optimizer", "--lr", "--out"} <= set(flags)
    for flag in flags:  # every flag the parser has, --loader and --val-size included
        assert flag in result.stdout
    assert "adam 0.001" in result.stdout  # the per-optimizer default learning rates


def test_data_dir_from_environment(mnist_dir, tmp_path):
    """Without --data-dir, $MNIST_DATA_DIR is used; a missing folder gives one line, exit 2.

    The network is made unreachable here (a proxy on a closed local port), so that online, too,
    torchvision's download fails instead of filling the folder.
    """
    from test_errors import offline_env

    env = dict(offline_env(), MNIST_DATA_DIR=str(tmp_path / "nothing-here"))
    result = run_cli("--epochs", "1", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing-here" in lines[0] and "train-images-idx3-ubyte" in lines[0]
    assert "--data-dir" in lines[0] and "download failed" in lines[0]


def test_piece_sizes_cover_every_image_once():
    import mlp_mnist

    assert mlp_mnist.piece_sizes(60000, 128) == [96, 128]  # 468 full batches and one of 96
    assert mlp_mnist.piece_sizes(256, 128) == [128]
    assert mlp_mnist.piece_sizes(100, 128) == [100]
    assert mlp_mnist.piece_sizes(70000 - 60000, 2000) == [2000]
