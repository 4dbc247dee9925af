"""tune_optimizers.py: the protocol's arithmetic on hand-made runs, and a tiny study end to end.

The study runs on small IDX files the tests write (tests/fake_mnist.py): 300 training images, the
last 100 held out for validation, two epochs.
"""
import json

import pytest

import tune_optimizers
from fake_mnist import write_fake_mnist


def run(status, val_accuracies, test_accuracies=None):
    """A run as mlp_mnist.train returns it, with these per-epoch validation (and test) accuracies."""
    test_accuracies = test_accuracies or val_accuracies
    return dict(status=status, records=[dict(epoch=i + 1, val_accuracy=v, test_accuracy=t)
                                        for i, (v, t) in enumerate(zip(val_accuracies, test_accuracies))])


def test_a_diverged_run_counts_as_chance_and_an_unfinished_one_as_unknown():
    assert tune_optimizers.final_accuracy(run("diverged in epoch 2", [0.9]), "val_accuracy", 3) == 0.10
    assert tune_optimizers.final_accuracy(run("interrupted", [0.9]), "val_accuracy", 3) is None
    assert tune_optimizers.final_accuracy(run("completed", [0.5, 0.9, 0.95]), "val_accuracy", 3) == 0.95


@pytest.mark.parametrize("per_seed, median", [([3, 5, 4], 4), ([3, None, 4], 4), ([None, None, 2], None),
                                              ([None, None, None], None)])
def test_epochs_to_a_target_is_the_median_over_seeds_never_counting_as_infinite(per_seed, median):
    assert tune_optimizers.median_epochs(per_seed) == median


def test_selection_uses_validation_accuracy_only(monkeypatch):
    """Two learning rates: the one that is better on validation is chosen, though the other is better on test."""
    class Args:
        lrs, adam_eps, epochs, seeds = [0.01, 0.1, 1.0], [1e-8], 2, [0, 1]

    runs = {0.01: [run("completed", [0.5, 0.90], [0.5, 0.99]), run("completed", [0.5, 0.92], [0.5, 0.99])],
            0.1: [run("completed", [0.5, 0.95], [0.5, 0.80]), run("completed", [0.5, 0.97], [0.5, 0.82])],
            1.0: [run("diverged in epoch 1", []), run("completed", [0.3, 0.4])]}
    rows = [tune_optimizers.grid_point(dict(lr=lr), Args.seeds, runs[lr], Args.epochs) for lr in Args.lrs]
    assert rows[2]["val_accuracies"] == [0.10, 0.4] and rows[2]["statuses"][0].startswith("diverged")
    chosen = tune_optimizers.select(rows, [runs[lr] for lr in Args.lrs], Args)
    assert chosen["lr"] == 0.1 and chosen["bracketed"]
    assert chosen["val_accuracy_mean"] == pytest.approx(0.96)
    assert chosen["test_accuracy_mean"] == pytest.approx(0.81)  # reported once, for the chosen lr
    assert chosen["epochs_to_97"] is None and chosen["epochs_to_98"] is None  # seed 1 reaches 97 at epoch 2: 1 of 2
    rows[1]["val_accuracy_mean"] = 0.0  # now the smallest lr wins: at the grid's edge
    chosen = tune_optimizers.select(rows, [runs[lr] for lr in Args.lrs], Args)
    assert chosen["lr"] == 0.01 and not chosen["bracketed"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """SGD and Adam, three learning rates (the largest diverges), Adam's eps twice, two seeds, two epochs."""
    folder = tmp_path_factory.mktemp("tune")
    write_fake_mnist(folder / "data", n_train=300, n_test=50)
    argv = ["--optimizers", "sgd", "adam", "--lrs", "0.001", "0.01", "3000", "--adam-eps", "1e-8", "0.01",
            "--seeds", "0", "1", "--epochs", "2", "--val-size", "100", "--data-dir", str(folder / "data")]
    tune_optimizers.main(argv + ["--out", str(folder / "out")])
    return folder, argv, json.loads((folder / "out" / "summary.json").read_text())


def test_tiny_study_writes_the_protocol_and_the_choice(tiny_study, capsys):
    folder, _, summary = tiny_study
    assert {"val_size", "seeds", "epochs", "grid", "selected", "runs"} <= set(summary)
    assert summary["val_size"] == 100 and summary["seeds"] == [0, 1] and summary["epochs"] == 2
    assert set(summary["grid"]) == {"sgd", "adam", tune_optimizers.INCLUSION}
    assert len(summary["grid"][tune_optimizers.INCLUSION]) == 6  # 3 lrs x 2 eps
    assert len(summary["runs"]) == 2 * 3 * 2 + 2 * 3  # adam's eps = 1e-8 runs serve both adam entries
    for label, rows in summary["grid"].items():
        best = max(rows, key=lambda row: row["val_accuracy_mean"])
        chosen = summary["selected"][label]
        assert chosen["lr"] == best["lr"] and chosen["val_accuracy_mean"] == best["val_accuracy_mean"]
        assert chosen["test_accuracy_mean"] == pytest.approx(sum(best["test_accuracies"]) / 2)
    diverged = next(row for row in summary["grid"]["sgd"] if row["lr"] == 3000)  # Adam's steps stay bounded
    assert all(s.startswith("diverged") for s in diverged["statuses"]) and diverged["val_accuracies"] == [0.1, 0.1]
    for r in summary["runs"]:
        assert r["config"]["val_size"] == 100 and r["records"][0]["train_accuracy"] is None
    assert (folder / "out" / "sensitivity.png").stat().st_size > 10_000
    assert "| sgd |" in (folder / "out" / "summary.md").read_text()


def test_reuse_trains_only_the_new_grid_points(tiny_study, monkeypatch):
    """A wider grid with --reuse: the earlier runs are taken as they are; only the new lr is trained."""
    folder, argv, summary = tiny_study
    trained = []
    real_train_optimizer = tune_optimizers.train_optimizer

    def counting(args, name, configs, data):
        trained.extend((c["optimizer"], c["lr"]) for c in configs)
        return real_train_optimizer(args, name, configs, data)

    monkeypatch.setattr(tune_optimizers, "train_optimizer", counting)
    wider = [a if a != "3000" else "0.1" for a in argv]  # 0.001 0.01 0.1: two lrs are the earlier study's
    tune_optimizers.main(wider + ["--reuse", str(folder / "out"), "--out", str(folder / "wider")])
    assert sorted(set(trained)) == [("adam", 0.1), ("sgd", 0.1)]
    widened = json.loads((folder / "wider" / "summary.json").read_text())
    assert widened["reused_runs"] == 2 * 2 * 2 + 2 * 2  # sgd, adam (2 eps): two lrs, two seeds
    old = {(r["config"]["optimizer"], r["config"]["lr"], r["config"]["eps"], r["config"]["seed"]): r["records"]
           for r in summary["runs"]}
    for r in widened["runs"]:
        key = (r["config"]["optimizer"], r["config"]["lr"], r["config"]["eps"], r["config"]["seed"])
        if r["config"]["lr"] != 0.1:
            assert r["records"] == old[key]
