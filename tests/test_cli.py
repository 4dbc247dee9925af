"""mlp_mnist.py end to end, as a user runs it: a subprocess on the real MNIST files."""
import json
import os
import subprocess
import sys

import jax
import matplotlib.image
import numpy as np
import pytest

import mlp_mnist
import mnist_data
from plumbing import warm_up
from conftest import ROOT, dark_fraction, offline_env

SHORT_RUN = ["--optimizer", "adam", "--epochs", "1", "--train-subset", "4000", "--seed", "0"]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "mlp_mnist.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def short_runs(mnist_dir, tmp_path_factory):
    """A short run as a user starts it (a subprocess), into a fresh --out folder."""
    out = tmp_path_factory.mktemp("run") / "out"
    return [(run_cli(*SHORT_RUN, "--data-dir", mnist_dir, "--out", str(out)), out)]


def test_short_run_learns_and_writes_metrics(short_runs, mnist_dir):
    result, out = short_runs[0]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["completed_epochs"] == 1
    config = metrics["config"]
    assert config["optimizer"] == "adam" and config["lr"] == 0.001  # the README's lr for adam
    assert config["batch_size"] == 128 and config["train_subset"] == 4000 and config["data_dir"] == mnist_dir
    for key in ("jax", "jaxlib", "torch", "numpy"):
        assert metrics["provenance"]["versions"][key]
    assert metrics["provenance"]["device"]["name"] and metrics["provenance"]["code"]["files"]["mlp_mnist.py"]
    (record,) = metrics["epochs"]
    assert set(record) == {"epoch", "train_seconds", "eval_seconds", "train_loss", "train_accuracy",
                           "val_accuracy", "test_accuracy"}
    assert record["val_accuracy"] is None  # no validation split unless asked for
    assert metrics["provenance"]["machine"]["cpu_count"] >= 1 and metrics["provenance"]["machine"]["memory_gb"]
    assert config["optimizer"] == "adam" and {"beta1", "beta2", "eps"} <= set(config) and "mu" not in config
    assert record["test_accuracy"] > 0.85 and record["train_accuracy"] > 0.85
    assert 0 < record["train_loss"] < 0.15 and record["train_seconds"] > 0
    # the printed line carries the same numbers
    assert f"{100 * record['test_accuracy']:.2f}%" in result.stdout
    log = (out / "log.txt").read_text()
    assert f"{100 * record['test_accuracy']:.2f}%" in log and "provenance" in log.splitlines()[-1]
    for png in ("curves.png", "confusion.png", "misclassified.png"):
        image = matplotlib.image.imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 100
    # the misclassified digits are drawn, not only the title (0.014 of the pixels dark). What each plot holds is
    # tests/test_plots.py's: here one epoch's curves are a few markers, and a colour bar colours any confusion matrix
    assert dark_fraction(out / "misclassified.png") > 0.05


@pytest.mark.parametrize("loader", ["torch", "device"])
def test_same_seed_same_metrics_and_another_seed_other_metrics(fake_dir, tmp_path, capsys, loader):
    """mlp_mnist.py twice with --seed 0 and once with --seed 1: the same numbers, then other numbers (a --seed that
    were ignored would pass the first check, not the second)."""
    def numbers(seed, name):
        mlp_mnist.main(["--epochs", "2", "--seed", seed, "--loader", loader, "--data-dir", fake_dir, "--out",
                        str(tmp_path / name)])
        records = json.loads((tmp_path / name / "metrics.json").read_text())["epochs"]
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]

    first, again, other = numbers("0", "a"), numbers("0", "b"), numbers("1", "c")
    assert first == again
    assert [r["train_loss"] for r in other] != [r["train_loss"] for r in first]
    capsys.readouterr()


@pytest.mark.parametrize("loader", ["torch", "device"])
def test_the_seed_reaches_the_initial_weights_and_the_batch_order(fake_dir, tmp_path, monkeypatch, capsys, loader):
    """--seed seeds both the first weights drawn and the order of the batches. (The test above would still pass
    with either one ignored: the other alone changes the numbers.)"""
    first_weights, order_seeds = [], []
    real_init = mlp_mnist.init_params

    def init_spy(key, *args, **kwargs):
        params = real_init(key, *args, **kwargs)
        if not isinstance(params[0][0], jax.core.Tracer):  # not jax.eval_shape's look at the shapes
            first_weights.append(np.asarray(params[0][0][:4, :4]))
        return params

    monkeypatch.setattr(mlp_mnist, "init_params", init_spy)
    real_loader, real_order = mnist_data.train_loader, mnist_data.epoch_order
    monkeypatch.setattr(mnist_data, "train_loader", lambda data, size, seed: (order_seeds.append(seed),
                                                                              real_loader(data, size, seed))[1])
    monkeypatch.setattr(mnist_data, "epoch_order", lambda n, seed, epoch: (order_seeds.append(seed),
                                                                           real_order(n, seed, epoch))[1])
    for seed in (0, 1):
        order_seeds.clear()
        mlp_mnist.main(["--epochs", "1", "--seed", str(seed), "--loader", loader, "--data-dir", fake_dir, "--out",
                        str(tmp_path / str(seed))])
        assert order_seeds and set(order_seeds) == {seed}
    assert len(first_weights) == 2 and not np.array_equal(first_weights[0], first_weights[1])
    capsys.readouterr()


def test_help_explains_every_flag():
    """Every flag is in --help with its own help text, which gives its default."""
    result = run_cli("--help")
    assert result.returncode == 0

    printed = " ".join(result.stdout.split())  # argparse wraps lines
    actions = [a for a in mlp_mnist.build_parser()._actions if a.option_strings and a.dest != "help"]
    assert {"--loader", "--val-size", "--optimizer", "--lr", "--out"} <= {a.option_strings[0] for a in actions}
    for action in actions:
        assert action.help and "default" in action.help, action.option_strings
        assert action.option_strings[0] in printed
        words = " ".join(action.help.split()).split("%(")[0][:40]
        assert words in printed, action.option_strings  # its own words are shown
    assert "adam 0.001" in printed  # the per-optimizer default learning rates


def test_data_dir_from_environment(mnist_dir, tmp_path):
    """Without --data-dir, $MNIST_DATA_DIR is used; a missing folder gives one line, exit 2.

    The network is made unreachable here (a proxy on a closed local port), so that online, too,
    torchvision's download fails instead of filling the folder.
    """
    env = dict(offline_env(), MNIST_DATA_DIR=str(tmp_path / "nothing-here"))
    result = run_cli("--epochs", "1", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing-here" in lines[0] and "train-images-idx3-ubyte" in lines[0]
    assert "--data-dir" in lines[0] and "download failed" in lines[0]


def test_piece_sizes_are_the_shapes_a_split_falls_into():
    assert warm_up.piece_sizes(60000, 128) == [96, 128]  # 468 full batches and one of 96
    assert warm_up.piece_sizes(256, 128) == [128]
    assert warm_up.piece_sizes(100, 128) == [100]
    assert warm_up.piece_sizes(70000 - 60000, 2000) == [2000]
