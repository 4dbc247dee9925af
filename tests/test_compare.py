"""compare_optimizers.py: the comparison on a tiny budget, and the arithmetic of its summary."""
import argparse
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

import compare_optimizers
from plumbing import stats
from conftest import ROOT


@pytest.fixture(scope="module")
def tiny_comparison(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "results"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "compare_optimizers.py"),
                             "--configs", "sgd", "adam:lr=0.0005", "--seeds", "3", "4", "--epochs", "1",
                             "--train-subset", "2000", "--data-dir", mnist_dir, "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    return result, out


def test_tiny_comparison_writes_summary_table_and_curves(tiny_comparison):
    result, out = tiny_comparison
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["checkpoints", "curves.png", "summary.json", "summary.md"]
    assert sorted(os.listdir(out / "checkpoints")) == ["adam_lr=0.0005_seed=3.npz", "adam_lr=0.0005_seed=4.npz",
                                                       "sgd_seed=3.npz", "sgd_seed=4.npz", "study.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["total_seconds"] > 0
    assert [(r["label"], r["seed"], r["status"]) for r in summary["runs"]] == [
        ("sgd", 3, "completed"), ("sgd", 4, "completed"), ("adam lr=0.0005", 3, "completed"),
        ("adam lr=0.0005", 4, "completed")]
    assert summary["runs"][2]["config"]["lr"] == 0.0005 and summary["runs"][2]["config"]["optimizer"] == "adam"
    assert "mu" not in summary["runs"][0]["config"] and summary["runs"][2]["config"]["eps"] == 1e-8
    for run in summary["runs"]:
        assert len(run["records"]) == 1 and run["config"]["train_subset"] == 2000
    table = (out / "summary.md").read_text().splitlines()
    assert table[0].startswith("| optimizer |") and table[3].startswith("| adam lr=0.0005 | 0.0005 | 2 |")
    image = matplotlib.image.imread(out / "curves.png")
    assert image.ndim == 3 and image.shape[0] > 100
    assert os.path.getsize(out / "curves.png") < 200_000


def test_summary_statistics_come_from_the_records(tiny_comparison):
    """Two seeds: the mean is their midpoint and the sample std |a - b| / sqrt(2), worked out here by hand."""
    _, out = tiny_comparison
    summary = json.loads((out / "summary.json").read_text())
    for label, row in summary["summary"].items():
        a, b = (r["records"][-1]["test_accuracy"] for r in summary["runs"] if r["label"] == label)
        assert a != b  # two seeds, two different models: the statistics below are not the values themselves
        assert row["test_accuracy_mean"] == pytest.approx((a + b) / 2)
        assert row["test_accuracy_std"] == pytest.approx(abs(a - b) / 2 ** 0.5)


def fake_run(label, seed, test_accuracies, seconds=1.0, status="completed", val=False):
    return dict(label=label, seed=seed, status=status, config={"lr": 0.1},
                records=[dict(epoch=i + 1, train_seconds=seconds + i, train_loss=0.1, train_accuracy=a,
                              val_accuracy=a - 0.01 if val else None, test_accuracy=a)
                         for i, a in enumerate(test_accuracies)])


def test_mean_and_std_over_seeds():
    runs = [fake_run("a", 0, [0.5, 0.90]), fake_run("a", 1, [0.5, 0.94]), fake_run("a", 2, [0.5, 0.98]),
            fake_run("b", 0, [0.6, 0.7])]
    summary = compare_optimizers.summarise(runs, epochs=2)
    assert summary["a"]["test_accuracy_mean"] == pytest.approx(0.94)
    assert summary["a"]["test_accuracy_std"] == pytest.approx(0.04)  # sample std of .90 .94 .98
    assert summary["a"]["epoch_seconds_mean"] == pytest.approx(1.5)  # each run: epochs of 1 s and 2 s
    assert summary["b"]["test_accuracy_std"] is None and summary["a"]["val_accuracy_mean"] is None
    table = compare_optimizers.markdown_table(summary)
    assert "| a | 0.1 | 3 | 94.00 ± 4.00 | 94.00 ± 4.00 | the best | 1.50 ± 0.00 |" in table
    assert "| b | 0.1 | 1 | 70.00 | 70.00 | too few seeds to say |" in table  # one common seed: b - a = -0.2
    assert summary["b"]["against_best"]["mean"] == pytest.approx(0.7 - 0.9)
    assert "val accuracy" not in table  # no validation split: no column


def test_paired_differences_and_their_verdicts():
    """Worked by hand: b - a over seeds 0, 1, 2 is 0.01, 0.02, 0.03: mean 0.02, sample std 0.01, and the 95%
    interval 0.02 ± 4.303 x 0.01 / sqrt(3) = [-0.00484, 0.04484]: it holds 0, so no verdict. With 0.019,
    0.020, 0.021 the std is 0.001 and the interval [0.01752, 0.02248]: higher."""
    a = {0: 0.90, 1: 0.90, 2: 0.90, 7: 0.5}  # seed 7 has no partner: left out
    wide = stats.paired_difference({0: 0.91, 1: 0.92, 2: 0.93}, a)
    assert wide["seeds"] == [0, 1, 2] and wide["mean"] == pytest.approx(0.02)
    assert wide["low"] == pytest.approx(0.02 - 4.303 * 0.01 / 3 ** 0.5) and wide["high"] == pytest.approx(
        0.02 + 4.303 * 0.01 / 3 ** 0.5)
    assert stats.verdict(wide) == "cannot tell apart: +2.00 [-0.48, +4.48]"
    narrow = stats.paired_difference({0: 0.919, 1: 0.920, 2: 0.921}, a)
    assert stats.verdict(narrow) == "higher: +2.00 [+1.75, +2.25]"
    lower = stats.paired_difference(a, {0: 0.919, 1: 0.920, 2: 0.921})
    assert stats.verdict(lower).startswith("lower: -2.00")


def test_the_t_quantiles_are_students():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df, quantile in stats.T_975.items():
        assert quantile == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=6e-4)


def test_only_seeds_that_completed_every_epoch_are_averaged():
    """A seed that diverged in epoch 3 or was interrupted is shown apart, not mixed into the final epoch's mean."""
    runs = [fake_run("a", 0, [0.5, 0.8, 0.90], val=True), fake_run("a", 1, [0.5, 0.80, 0.94], val=True),
            fake_run("a", 2, [0.6, 0.97], status="diverged in epoch 3", val=True),
            fake_run("a", 3, [0.99], status="interrupted", val=True)]
    summary = compare_optimizers.summarise(runs, epochs=3)
    assert summary["a"]["seeds"] == [0, 1]
    assert summary["a"]["test_accuracy_mean"] == pytest.approx(0.92)
    assert summary["a"]["val_accuracy_mean"] == pytest.approx(0.91)
    assert summary["a"]["incomplete"] == [dict(seed=2, status="diverged in epoch 3", completed_epochs=2),
                                          dict(seed=3, status="interrupted", completed_epochs=1)]
    table = compare_optimizers.markdown_table(summary, vmap=True)
    assert ("| a (seed 2 diverged in epoch 3; seed 3 interrupted) | 0.1 | 2 | 92.00 ± 2.83 | "
            "91.00 ± 2.83 | 92.00 ± 2.83 | the best | 2.00 |") in table  # vmapped: one program's seconds, no spread


def test_a_collapse_to_chance_is_marked():
    """A seed that ends at chance (10%) without a NaN completes, is averaged, and is named in its row."""
    runs = [fake_run("a", 0, [0.5, 0.95]), fake_run("a", 1, [0.5, 0.10]), fake_run("b", 0, [0.5, 0.97]),
            fake_run("b", 1, [0.5, 0.96])]
    summary = compare_optimizers.summarise(runs, epochs=2)
    assert summary["a"]["collapsed_seeds"] == [1] and summary["b"]["collapsed_seeds"] == []
    assert "| a (seed 1 collapsed to chance) | 0.1 | 2 |" in compare_optimizers.markdown_table(summary)


def test_config_spec():
    assert compare_optimizers.config_spec("rmsprop:lr=0.0001,rho=0.99") == (
        "rmsprop lr=0.0001 rho=0.99", {"optimizer": "rmsprop", "lr": 0.0001, "rho": 0.99})
    assert compare_optimizers.config_spec("sgd") == ("sgd", {"optimizer": "sgd"})
    for bad, named in (("adagrad", "'adagrad'"), ("adam:lr=-1", "'adam:lr=-1': lr: -1 is not"),
                       ("adam:momentum=0.9", "unknown setting 'momentum'"), ("rmsprop:rho=1", "'rmsprop:rho=1': rho: 1"),
                       ("sgd:mu=0.5", "'sgd:mu=0.5': mu: sgd takes no mu \\(it takes lr\\)"),
                       ("adam:rho=0.9", "adam takes no rho")):
        with pytest.raises(argparse.ArgumentTypeError, match=named):  # the message names the config and the key
            compare_optimizers.config_spec(bad)


def test_default_comparison_covers_every_optimizer():
    names = {compare_optimizers.config_spec(c)[1]["optimizer"] for c in compare_optimizers.COMPARISON}
    assert names == {"sgd", "momentum", "nesterov", "rmsprop", "adam"}


def test_refuses_an_out_folder_with_results(tmp_path, mnist_dir, capsys):
    (tmp_path / "summary.json").write_text("earlier")
    with pytest.raises(SystemExit) as exit_info:
        compare_optimizers.main(["--configs", "sgd", "--data-dir", mnist_dir, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    assert (tmp_path / "summary.json").read_text() == "earlier"
