"""tune_optimizers.py: the protocol's arithmetic on hand-made runs, and a tiny study end to end.

The study runs on small IDX files the tests write (conftest.write_fake_mnist): 300 training images, the
last 100 held out for validation, two epochs.
"""
import json

import pytest

import mlp_mnist
import tune_optimizers
from plumbing import stats
from conftest import coloured_fraction, run_script, write_fake_mnist


def run(status, val_accuracies, test_accuracies=None):
    """A run as mlp_mnist.train returns it, with these per-epoch validation (and test) accuracies."""
    test_accuracies = test_accuracies or [None] * len(val_accuracies)
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


class Args:
    lrs, adam_eps, epochs, seeds, report_seeds = [0.01, 0.1, 1.0], [1e-8], 2, [0, 1], [5, 6, 7]


def test_selection_worked_by_hand():
    """Three learning rates, two seeds. Final validation accuracies, worked out by hand:
    lr 0.01: 0.90, 0.92 -> mean 0.91; lr 0.1: 0.95, 0.97 -> 0.96; lr 1: diverged (counts 0.10), 0.40 -> 0.25.
    lr 0.1 is selected, with a grid point on both sides; its sample std is 0.02 / sqrt(2)."""
    runs = {0.01: [run("completed", [0.5, 0.90]), run("completed", [0.5, 0.92])],
            0.1: [run("completed", [0.5, 0.95]), run("completed", [0.5, 0.97])],
            1.0: [run("diverged in epoch 1", []), run("completed", [0.3, 0.4])]}
    rows = [tune_optimizers.grid_point(dict(lr=lr), Args.seeds, runs[lr], Args.epochs) for lr in Args.lrs]
    assert [row["val_accuracy_mean"] for row in rows] == pytest.approx([0.91, 0.96, 0.25])
    assert rows[2]["val_accuracies"] == [0.10, 0.4] and rows[2]["statuses"][0].startswith("diverged")
    chosen = tune_optimizers.select(rows, Args)
    assert chosen["lr"] == 0.1 and chosen["bracketed"] and chosen["settings_tried"] == 3
    assert chosen["val_accuracy_mean"] == pytest.approx(0.96)
    assert chosen["val_accuracy_std"] == pytest.approx(0.02 / 2 ** 0.5)
    rows[1]["val_accuracy_mean"] = 0.0  # now the smallest lr wins: at the grid's edge
    chosen = tune_optimizers.select(rows, Args)
    assert chosen["lr"] == 0.01 and not chosen["bracketed"]


def test_a_collapse_to_chance_without_divergence_is_counted():
    rows = tune_optimizers.grid_point(dict(lr=0.3), [0, 1], [run("completed", [0.5, 0.101]),
                                                             run("completed", [0.5, 0.6])], 2)
    assert rows["collapsed"] == 1


def test_the_report_worked_by_hand():
    """Two entries reported on seeds 5, 6, 7. sgd wins on the report seeds' validation accuracy (0.968 against 0.95;
    momentum's selection maximum, 0.99, does not count: it is biased upward). sgd's final
    test accuracies are 0.97, 0.96, 0.98; momentum's 0.95, 0.95, 0.96. momentum - sgd per seed: -0.02, -0.01,
    -0.02: mean -0.016667, sample std 0.0057735, interval -0.016667 ± 4.303 x 0.0057735 / sqrt(3) =
    [-0.03101, -0.00232]: lower. Epochs to 97% (validation) for sgd: 1, 2, never -> median 2."""
    selected = {"sgd": dict(lr=0.1, val_accuracy_mean=0.98), "momentum": dict(lr=0.01, val_accuracy_mean=0.99)}
    finished = {"sgd": [run("completed", [0.97, 0.975], [0.9, 0.97]), run("completed", [0.96, 0.97], [0.9, 0.96]),
                        run("completed", [0.9, 0.96], [0.9, 0.98])],
                "momentum": [run("completed", [0.9, 0.95], [0.9, 0.95]), run("completed", [0.9, 0.95], [0.9, 0.95]),
                             run("completed", [0.9, 0.95], [0.9, 0.96])]}
    results = {}
    for label, runs in finished.items():
        for seed, r in zip(Args.report_seeds, runs):
            config = tune_optimizers.run_config(ArgsWithDefaults, label, dict(lr=selected[label]["lr"]), seed)
            results[tune_optimizers.run_key(config)] = (config, r)
    reported, winner = tune_optimizers.report(ArgsWithDefaults, selected, results)
    assert winner == "sgd"
    assert reported["sgd"]["test_accuracy_mean"] == pytest.approx(0.97)
    assert reported["sgd"]["val_accuracy_mean"] == pytest.approx((0.975 + 0.97 + 0.96) / 3)
    assert reported["sgd"]["epochs_to_97"] == 2 and reported["momentum"]["epochs_to_97"] is None
    difference = reported["momentum"]["against_winner"]
    assert difference["mean"] == pytest.approx(-0.05 / 3)
    assert difference["low"] == pytest.approx(-0.031010, abs=1e-6) and difference["high"] == pytest.approx(
        -0.002324, abs=1e-6)
    assert stats.verdict(difference) == "lower: -1.67 [-3.10, -0.23]"


class ArgsWithDefaults(Args):
    batch_size, val_size, train_subset, loader = 128, 100, None, "torch"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """SGD and Adam, three learning rates (the largest diverges), Adam's eps twice, two selection seeds, two
    report seeds, two epochs, on learnable images (conftest.learnable_images): 200 to train on, so four steps."""
    folder = tmp_path_factory.mktemp("tune")
    write_fake_mnist(folder / "data", n_train=300, n_test=50, learnable=True)  # accuracies that differ for a reason
    argv = ["--optimizers", "sgd", "adam", "--lrs", "0.001", "0.01", "3000", "--adam-eps", "1e-8", "0.01",
            "--seeds", "0", "1", "--report-seeds", "5", "6", "--epochs", "2", "--val-size", "100", "--vmap",
            "--data-dir", str(folder / "data")]
    tune_optimizers.main(argv + ["--out", str(folder / "out")])
    return folder, argv, json.loads((folder / "out" / "summary.json").read_text())


def test_tiny_study_selects_on_validation_and_tests_only_the_selected(tiny_study, capsys):
    folder, _, summary = tiny_study
    assert summary["val_size"] == 100 and summary["seeds"] == [0, 1] and summary["report_seeds"] == [5, 6]
    assert set(summary["grid"]) == {"sgd", "adam", tune_optimizers.INCLUSION}
    assert len(summary["grid"][tune_optimizers.INCLUSION]) == 6  # 3 lrs x 2 eps
    assert len(summary["runs"]) == 2 * 3 * 2 + 2 * 3  # adam's eps = 1e-8 runs serve both adam entries
    for r in summary["runs"]:  # the selection never evaluated the test set
        assert r["config"]["val_size"] == 100 and all(e["test_accuracy"] is None for e in r["records"])
    # The answers known beforehand, not select() worked again: in four steps SGD at lr 0.001 barely leaves chance
    # (measured: 0.15 and 0.12) and 3000 diverges, so 0.01 (0.73, 0.76) wins, bracketed; Adam at 0.01 overshoots
    # (0.14, 0.22) while 0.001 learns (0.91, 1.0). The lr x eps grid holds Adam's, so its best is at least Adam's.
    assert {label: chosen["lr"] for label, chosen in summary["selected"].items()} == {
        "sgd": 0.01, "adam": 0.001, tune_optimizers.INCLUSION: 0.001}
    assert summary["selected"]["sgd"]["bracketed"] and not summary["selected"]["adam"]["bracketed"]
    assert summary["selected"]["sgd"]["val_accuracy_mean"] < 0.9 < summary["selected"]["adam"]["val_accuracy_mean"]
    assert (summary["selected"][tune_optimizers.INCLUSION]["val_accuracy_mean"]
            >= summary["selected"]["adam"]["val_accuracy_mean"])
    diverged = next(row for row in summary["grid"]["sgd"] if row["lr"] == 3000)
    assert all(s.startswith("diverged") for s in diverged["statuses"]) and diverged["val_accuracies"] == [0.1, 0.1]
    def report_runs(label):
        """The report runs of label's selected setting, found by their configs."""
        name, chosen = tune_optimizers.optimizer_of(label), summary["selected"][label]
        eps = chosen.get("eps", 1e-8) if name == "adam" else None
        return [r for r in summary["report_runs"] if (r["config"]["optimizer"], r["config"]["lr"],
                                                      r["config"].get("eps")) == (name, chosen["lr"], eps)]

    final = lambda r, key: 0.1 if r["status"].startswith("diverged") else r["records"][-1][key]  # noqa: E731
    mean_of = lambda runs, key: sum(final(r, key) for r in runs) / len(runs)  # noqa: E731 (diverged: chance)
    for label in summary["selected"]:
        runs = report_runs(label)
        assert sorted(r["config"]["seed"] for r in runs) == [5, 6]
        assert summary["report"][label]["test_accuracy_mean"] == pytest.approx(mean_of(runs, "test_accuracy"))
    report_val = {label: mean_of(report_runs(label), "val_accuracy") for label in summary["selected"]}
    assert summary["winner"] != "sgd" and report_val["sgd"] < 0.95 <= report_val[summary["winner"]]  # Adam learns
    # in four steps what SGD does not; the winner is chosen on the report seeds (test_the_report_worked_by_hand)
    assert coloured_fraction(folder / "out" / "sensitivity.png") > 0.005  # lines and bands: 0.015; axes and text: 0
    assert "| sgd | 3 |" in (folder / "out" / "summary.md").read_text()


def test_reuse_trains_only_the_new_grid_points(tiny_study, monkeypatch):
    """A wider grid with --reuse: the earlier selection runs are taken as they are; only the new lr is trained."""
    folder, argv, summary = tiny_study
    trained = []
    real_train_optimizer = tune_optimizers.train_optimizer

    def counting(args, name, configs, data, phase):
        if data[2] is None:  # the selection phase
            trained.extend((c["optimizer"], c["lr"]) for c in configs)
        return real_train_optimizer(args, name, configs, data, phase)

    monkeypatch.setattr(tune_optimizers, "train_optimizer", counting)
    wider = [a if a != "3000" else "0.1" for a in argv]  # 0.001 0.01 0.1: two lrs are the earlier study's
    tune_optimizers.main(wider + ["--reuse", str(folder / "out"), "--out", str(folder / "wider")])
    assert sorted(set(trained)) == [("adam", 0.1), ("sgd", 0.1)]
    widened = json.loads((folder / "wider" / "summary.json").read_text())
    assert widened["reused_runs"] == 2 * 2 * 2 + 2 * 2  # sgd, adam (2 eps): two lrs, two seeds
    old = {(r["config"]["optimizer"], r["config"]["lr"], r["config"].get("eps"), r["config"]["seed"]): r["records"]
           for r in summary["runs"]}
    for r in widened["runs"]:
        key = (r["config"]["optimizer"], r["config"]["lr"], r["config"].get("eps"), r["config"]["seed"])
        if r["config"]["lr"] != 0.1:
            assert r["records"] == old[key]


def test_report_seeds_must_not_select(tmp_path, capsys):
    write_fake_mnist(tmp_path / "data")
    status, _, lines = run_script(tune_optimizers.main, ["--seeds", "0", "1", "--report-seeds", "1", "2", "--val-size",
                                                        "100", "--data-dir",
                                                        str(tmp_path / "data"), "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and "argument --report-seeds: [1] also select" in lines[-1]


def test_ctrl_c_in_the_second_optimizer_keeps_the_first(tmp_path, capsys, monkeypatch):
    """Interrupted while Adam trains: exit 130, and the files hold SGD's finished selection (no crash on the
    unfinished runs' missing accuracies)."""
    write_fake_mnist(tmp_path / "data")
    real_epoch = mlp_mnist.torch_epoch

    def torch_epoch(params, opt_state, hyper, epoch, loader, name):
        if name == "adam":
            raise KeyboardInterrupt  # in Adam's first epoch: inside mlp_mnist.train, as Ctrl-C would land
        return real_epoch(params, opt_state, hyper, epoch, loader, name)

    monkeypatch.setattr(mlp_mnist, "torch_epoch", torch_epoch)
    status, _, lines = run_script(tune_optimizers.main, [
        "--optimizers", "sgd", "adam", "--lrs", "0.01", "0.1", "--seeds", "0", "--epochs", "1", "--val-size", "100",
        "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")], capsys)
    assert status == 130 and "holds the optimizers that finished" in lines[-1]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and list(summary["grid"]) == ["sgd"]
    assert (tmp_path / "out" / "sensitivity.png").exists()
