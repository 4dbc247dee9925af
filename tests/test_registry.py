"""An optimizer is one registry entry (optimized_sgd.OPTIMIZERS): every entry is whole, and one registered here,
from this file alone, trains through every script that trains, matching its optax reference.

The throwaway optimizer is AdaGrad (Duchi et al., 2011), as optax writes it. Nothing outside this file knows it:
the scripts' --optimizer choices, its --initial flag, tune_optimizers.py's notion of the same run and the
optax comparison all come from its entry. docs/02-optimizers.md shows the same steps for a real new optimizer.
"""
import inspect
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compare_optimizers
import many_models
import mlp_mnist
import optimized_sgd
import tune_optimizers
from conftest import (assert_same_trajectory, make_loss, optax_reference, optax_trajectory, our_trajectory,
                      random_params, run_script)
from optimized_sgd import OPTIMIZERS, Entry, Hyperparameter
from plumbing import cli
from train_utils import Optimizer, at_params


class AdaGradState(NamedTuple):
    sum_of_squares: object  # s, shaped like params


def adagrad(lr, initial=0.1, eps=1e-7):
    """AdaGrad as optax.adagrad writes it: s <- s + g^2;  theta <- theta - lr * g / sqrt(s + eps) (s starts at
    `initial`)."""

    def init(params):
        return AdaGradState(jax.tree.map(lambda p: jnp.full_like(p, initial), params))

    def update(grads, state, params):
        sums = jax.tree.map(lambda s, g: s + g * g, state.sum_of_squares, grads)
        new_params = jax.tree.map(lambda p, g, s: p - lr * g / jnp.sqrt(s + eps), params, grads, sums)
        return new_params, AdaGradState(sums)

    return Optimizer(init, update, at_params)


ADAGRAD = Entry(
    adagrad, 0.01, {"initial": Hyperparameter("positive", "the sum of g^2 before the first step"),
                    "eps": Hyperparameter("positive", "added to the sum of g^2 under the root")},
    optax=lambda optax, lr, initial, eps: optax.adagrad(lr, initial_accumulator_value=initial, eps=eps),
    test_grid=dict(initial=0.5))


@pytest.fixture
def with_adagrad(monkeypatch):
    """AdaGrad in the registry for one test (monkeypatch takes it out again)."""
    monkeypatch.setitem(OPTIMIZERS, "adagrad", ADAGRAD)


# --- Every entry is whole -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS) + ["adagrad"])
def test_every_entry_is_whole(name, monkeypatch):
    """Its hyperparameters are its factory's keywords besides lr; its optax reference takes them; its test grid
    moves each it names away from the default; its paths, when it has them, come with a style."""
    monkeypatch.setitem(OPTIMIZERS, "adagrad", ADAGRAD)
    entry = OPTIMIZERS[name]
    keywords = list(inspect.signature(entry.factory).parameters)
    assert keywords[0] == "lr" and keywords[1:] == list(entry.hyperparameters)
    assert all(spec.values in cli.VALUES for spec in entry.hyperparameters.values())
    defaults = optimized_sgd.hyperparameters(name)
    assert set(entry.test_grid) <= set(entry.hyperparameters)
    assert all(entry.test_grid[key] != defaults[key] for key in entry.test_grid)
    assert entry.paths is None or (set(entry.paths) == {"quadratic", "rosenbrock"} and entry.style is not None)
    cli.hyperparameter_flags()  # a key two optimizers share must take the same values


def test_a_key_shared_with_other_values_is_refused(monkeypatch):
    monkeypatch.setitem(OPTIMIZERS, "adagrad", ADAGRAD._replace(
        hyperparameters=dict(ADAGRAD.hyperparameters, eps=Hyperparameter("in [0, 1)", "something else"))))
    with pytest.raises(ValueError, match="adagrad: eps must be in \\[0, 1\\)"):
        cli.hyperparameter_flags()


# --- A registered optimizer: its rule against optax, then every script ------------------------------


def test_the_registered_optimizer_matches_optax_step_by_step(with_adagrad):
    """The comparison tests/test_optimizers.py makes for the five, on the entry's optax reference."""
    params = random_params()
    loss = make_loss(params)
    ours = our_trajectory("adagrad", params, loss)
    assert_same_trajectory(ours, optax_trajectory(optax_reference("adagrad"), params, loss))
    with pytest.raises(AssertionError):  # the comparison can tell: another initial sum (0.5) is another path
        assert_same_trajectory(ours, optax_trajectory(optax_reference("adagrad", hyper=dict(initial=0.5)),
                                                      params, loss))


def test_its_flags_come_from_the_entry(with_adagrad, capsys):
    help_text = " ".join(mlp_mnist.build_parser().format_help().split())  # unwrapped
    assert "adagrad" in help_text and "--initial" in help_text
    assert "adagrad: added to the sum of g^2 under the root" in help_text
    status, _, err = run_script(mlp_mnist.main, ["--optimizer", "adagrad", "--mu", "0.5"], capsys)
    assert status == 2 and "adagrad takes no mu (it takes lr, initial, eps)" in err[-1]


@pytest.mark.parametrize("loader", ["torch", "device"])
def test_it_trains_through_mlp_mnist(with_adagrad, loader, learnable_dir, tmp_path, capsys):
    """Both loaders, its own flag given: the run learns the learnable digits, and both loaders train alike."""
    out = tmp_path / loader
    status, _, err = run_script(mlp_mnist.main, ["--optimizer", "adagrad", "--initial", "0.2", "--epochs", "2",
                                                 "--loader", loader, "--data-dir", learnable_dir, "--out", str(out)],
                                capsys)
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["optimizer"] == "adagrad" and metrics["config"]["initial"] == 0.2
    assert metrics["config"]["eps"] == 1e-7 and "mu" not in metrics["config"]
    assert metrics["epochs"][-1]["test_accuracy"] >= 0.9  # chance is 0.1
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]


@pytest.mark.parametrize("vmap", [False, True])
def test_it_trains_through_compare_optimizers(with_adagrad, vmap, learnable_dir, tmp_path, capsys):
    out = tmp_path / "compare"
    status, _, err = run_script(compare_optimizers.main, ["--configs", "adagrad", "adagrad:lr=0.003,initial=0.5",
                                                          "--seeds", "0", "1", "--epochs", "2", "--data-dir",
                                                          learnable_dir, "--out", str(out)]
                                + ["--vmap"] * vmap, capsys)
    assert status == 0, err
    summary = json.loads((out / "summary.json").read_text())
    runs = {(r["label"], r["seed"]): r for r in summary["runs"]}
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs.values())
    assert runs[("adagrad lr=0.003 initial=0.5", 1)]["config"]["initial"] == 0.5
    assert all(r["records"][-1]["test_accuracy"] >= 0.9 for r in runs.values())


def test_many_models_train_it_as_one_model_runs(with_adagrad, learnable_data):
    """many_models' vmapped epoch, for the registered optimizer, is the one-model run (as for the five)."""
    train_set, _, test_set = learnable_data
    configs = [dict(optimizer="adagrad", **optimized_sgd.hyperparameters("adagrad", lr=lr), seed=seed, epochs=2,
                    batch_size=128, train_subset=None, val_size=0, loader="device")
               for lr in (0.01, 0.003) for seed in (0, 1)]
    together = many_models.train_many(configs, train_set, test_set, log=lambda line: None)
    for config, run in zip(configs, together):
        alone = mlp_mnist.train(config, train_set, test_set, log=lambda line: None)
        assert run["status"] == alone["status"] == "completed" and len(run["records"]) == len(alone["records"]) == 2
        for a, b in zip(run["records"], alone["records"]):
            np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
            assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.01)


@pytest.mark.parametrize("vmap", [False, True])
def test_it_is_tuned_by_tune_optimizers(with_adagrad, vmap, learnable_dir, tmp_path, capsys):
    """It is tuned like the five; a second study that reuses the first trains nothing again (the same run is
    read from the entry: its lr, initial and eps)."""
    argv = ["--optimizers", "sgd", "adagrad", "--lrs", "0.003", "0.01", "0.03", "--seeds", "0",
            "--report-seeds", "1", "--epochs", "1", "--val-size", "100", "--data-dir", learnable_dir] + ["--vmap"] * vmap
    status, _, err = run_script(tune_optimizers.main, argv + ["--out", str(tmp_path / "first")], capsys)
    assert status == 0, err
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert summary["selected"]["adagrad"]["lr"] in (0.003, 0.01, 0.03)
    assert summary["report"]["adagrad"]["test_accuracy_mean"] >= 0.9
    status, out, err = run_script(tune_optimizers.main, argv + ["--out", str(tmp_path / "again"), "--reuse",
                                                                str(tmp_path / "first")], capsys)
    assert status == 0, err
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["selected"] == summary["selected"]
    assert again["reused_runs"] == 6  # both optimizers' three selection runs; the report runs train again
