"""The training that ships: mlp_mnist's step against optax, the epoch loop around it, and the
device loader and many models at once (many_models) against the torch DataLoader path.

Everything here runs on small IDX files the tests write (tests/fake_mnist.py): 300 training
images in batches of 128, so every epoch ends with a partial batch of 44.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import many_models
import mlp_mnist
import mnist_data
from conftest import ROOT
from fake_mnist import write_fake_mnist
from optimized_sgd import OPTIMIZERS, make_optimizer
from test_optimizers import HYPER, LR, OPTAX_REFERENCES
from train_utils import batch_from_uint8, init_params, loss, predicted_class

N_TRAIN, N_TEST, BATCH = 300, 50, 128  # batches of 128, 128 and 44


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake-mnist")
    write_fake_mnist(folder, n_train=N_TRAIN, n_test=N_TEST)
    return str(folder), mnist_data.load_mnist(str(folder))


def config_for(optimizer="sgd", epochs=2, **overrides):
    """mlp_mnist's configuration for a run: its defaults, then `overrides`."""
    args = mlp_mnist.build_parser().parse_args(["--optimizer", optimizer, "--epochs", str(epochs)])
    return dict(mlp_mnist.resolve_config(args), **overrides)


def without_seconds(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def assert_same_records(ours, reference, rel=1e-5):
    """Per-epoch records equal up to float rounding: same epochs, losses to `rel`, same accuracies."""
    ours, reference = without_seconds(ours), without_seconds(reference)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in reference]
    for a, b in zip(ours, reference):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=rel), (a, b)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=1 / N_TRAIN), (a, b)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1 / N_TEST), (a, b)


# --- The step itself, against optax ----------------------------------------------------------


def uint8_batches(steps=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (size, 28, 28), dtype=np.uint8), rng.integers(0, 10, size, dtype=np.uint8))
            for _ in range(steps)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_shipped_step_matches_optax(name):
    """mlp_mnist's compiled step (what train() runs) against optax + jax.value_and_grad(loss).

    optax's parameters are the point where the gradient is taken: our params, except for
    Nesterov, whose gradient point theta - mu * v is optax's parameters. The loss the step
    reports must be the loss there, before the update.
    """
    sizes = (784, 32, 10)
    start = init_params(jax.random.PRNGKey(0), sizes)
    optimizer = make_optimizer(name, LR, **HYPER)
    params, opt_state = start, optimizer.init(start)
    (step,) = mlp_mnist.compile_train_steps(optimizer, params, opt_state, [16]).values()
    params = jax.tree_util.tree_map(jnp.copy, start)  # the step donates (consumes) its inputs

    tx = OPTAX_REFERENCES[name]()
    reference, reference_state = start, tx.init(start)
    for images, labels in uint8_batches():
        reference_loss, grads = jax.value_and_grad(loss)(reference, batch_from_uint8(images, labels))
        updates, reference_state = tx.update(grads, reference_state, reference)
        reference = optax.apply_updates(reference, updates)

        params, opt_state, batch_loss = step(params, opt_state, images, labels)
        np.testing.assert_allclose(batch_loss, reference_loss, rtol=1e-5)
        ours = optimizer.grad_point(params, opt_state)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * LR)  # RMSProp/Adam divide rounding
            # noise in a ~0 gradient by a ~0 root mean square: up to a thousandth of a step


# --- The epoch loop around the step (torch loader) --------------------------------------------


@pytest.fixture(scope="module")
def recorded_run(fake_data):
    """Two epochs of train() with every call of the step recorded: (train_set, test_set, calls, run)."""
    _, (train_set, test_set) = fake_data
    calls = []
    real_compile = mlp_mnist.compile_train_steps

    def recording_compile(*args):
        def record(step):
            def recorded_step(params, opt_state, images, labels):
                params, opt_state, batch_loss = step(params, opt_state, images, labels)
                calls.append(dict(images=np.array(images), loss=float(batch_loss), params=jax.device_get(params)))
                return params, opt_state, batch_loss
            return recorded_step
        return {size: record(step) for size, step in real_compile(*args).items()}

    mlp_mnist.compile_train_steps = recording_compile
    try:
        run = mlp_mnist.train(config_for("momentum", epochs=2), train_set, test_set, log=lambda line: None)
    finally:
        mlp_mnist.compile_train_steps = real_compile
    return train_set, test_set, calls, run


def test_every_batch_is_trained_the_partial_one_included(recorded_run):
    train_set, test_set, calls, run = recorded_run
    assert [len(c["images"]) for c in calls] == [128, 128, 44] * 2
    # what the epoch reports is the model after the last (partial) batch
    final_predictions = np.asarray(predicted_class(calls[-1]["params"], test_set.data.numpy().reshape(N_TEST, -1)
                                                   .astype(np.float32)))
    assert run["records"][-1]["test_accuracy"] == np.mean(final_predictions == test_set.targets.numpy())


def test_epoch_loss_weights_each_batch_by_its_size(recorded_run):
    _, _, calls, run = recorded_run
    for epoch, record in enumerate(run["records"]):
        batches = calls[3 * epoch:3 * epoch + 3]
        weighted = sum(c["loss"] * len(c["images"]) for c in batches) / N_TRAIN
        assert record["train_loss"] == pytest.approx(weighted, rel=1e-6)
        assert abs(weighted - np.mean([c["loss"] for c in batches])) > 1e-6 * weighted  # the test can tell


def test_order_is_fresh_every_epoch_and_covers_each_image_once(recorded_run):
    train_set, _, calls, _ = recorded_run
    index_of = {image.tobytes(): i for i, image in enumerate(train_set.data.numpy())}
    orders = [[index_of[image.tobytes()] for c in calls[3 * e:3 * e + 3] for image in c["images"]] for e in (0, 1)]
    for order in orders:
        assert sorted(order) == list(range(N_TRAIN))
    assert orders[0] != orders[1]


def test_predict_all_in_chunks_equals_one_pass(monkeypatch, fake_data):
    _, (_, test_set) = fake_data
    params = init_params(jax.random.PRNGKey(1))
    images = jax.device_put(test_set.data.numpy())  # 50 images
    one_pass = predicted_class(params, images.reshape(N_TEST, -1).astype(jnp.float32))
    monkeypatch.setattr(mlp_mnist, "EVAL_CHUNK", 7)  # 7 chunks of 7, then one of 1
    np.testing.assert_array_equal(mlp_mnist.predict_all(params, images), one_pass)
    stacked = many_models.stack_trees([params, init_params(jax.random.PRNGKey(2))])
    per_model = mlp_mnist.predict_all(stacked, images, predict_chunk=many_models._predict_chunk_per_model)
    assert per_model.shape == (2, N_TEST)
    np.testing.assert_array_equal(per_model[0], one_pass)


# --- The device loader and the vmapped seeds, against the torch loader -----------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_both_loaders_write_the_same_metrics(name, fake_data, tmp_path, capsys):
    """mlp_mnist.py --loader torch and --loader device: the same metrics.json records, 3 epochs."""
    data_dir, _ = fake_data
    metrics = {}
    for loader in mlp_mnist.LOADERS:
        out = tmp_path / loader
        mlp_mnist.main(["--optimizer", name, "--epochs", "3", "--loader", loader, "--data-dir", data_dir,
                        "--out", str(out)])
        metrics[loader] = json.loads((out / "metrics.json").read_text())
        assert metrics[loader]["config"]["loader"] == loader and metrics[loader]["status"] == "completed"
    assert_same_records(metrics["device"]["epochs"], metrics["torch"]["epochs"])
    capsys.readouterr()


# A small grid for each optimizer: two learning rates (the second 3x the first) x two seeds,
# the other hyperparameters off their defaults so that mapping over them is tested too.
GRID_HYPER = {"sgd": {}, "momentum": {"mu": 0.8}, "nesterov": {"mu": 0.8}, "rmsprop": {"rho": 0.95, "eps": 1e-6},
              "adam": {"beta1": 0.8, "eps": 1e-4}}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_many_models_equal_one_at_a_time(name, fake_data):
    """A grid of (lr, seed) of one optimizer as one vmapped program: each model is the run train() makes.

    To rounding: mapped over, the hyperparameters are float32 arrays, so 1 - beta1 and the like
    round differently than from Python's float64 constants (losses agree to 1e-4 here).
    """
    _, (train_set, test_set) = fake_data
    base = config_for(name, epochs=2, loader="device", **GRID_HYPER[name])
    configs = [dict(base, lr=lr, seed=seed) for lr in (base["lr"], 3 * base["lr"]) for seed in (0, 5)]
    together = many_models.train_many(configs, train_set, test_set, log=lambda line: None)
    for config, run in zip(configs, together):
        alone = mlp_mnist.train(config, train_set, test_set, log=lambda line: None)
        assert run["status"] == alone["status"] == "completed"
        assert_same_records(run["records"], alone["records"], rel=1e-4)
    # the test can tell: the lr and the seed each change the records
    assert without_seconds(together[0]["records"]) != without_seconds(together[1]["records"])
    assert without_seconds(together[0]["records"]) != without_seconds(together[2]["records"])


def test_a_diverging_learning_rate_does_not_spoil_the_others(fake_data):
    """SGD at lr 0.01 and lr 30 in one program: the lr-30 models blow up, the others are untouched."""
    _, (train_set, test_set) = fake_data
    configs = [config_for("sgd", epochs=3, lr=lr, seed=seed, loader="device") for lr in (0.01, 30.0) for seed in (0, 1)]
    together = many_models.train_many(configs, train_set, test_set, log=lambda line: None)
    assert [r["status"] for r in together[:2]] == ["completed", "completed"]
    assert all(r["status"].startswith("diverged") for r in together[2:]), [r["status"] for r in together]
    for config, run in zip(configs[:2], together[:2]):
        alone = mlp_mnist.train(config, train_set, test_set, log=lambda line: None)
        assert_same_records(run["records"], alone["records"])


def test_many_models_sharded_over_two_devices(fake_data, tmp_path):
    """compare_optimizers.py --vmap-seeds with two (virtual) CPU devices and three seeds: the model
    axis is padded to four, two per device, and the results are those of mlp_mnist.train, one seed at
    a time, through the DataLoader."""
    data_dir, (train_set, test_set) = fake_data
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", "import many_models, compare_optimizers, sys; "
         "per_model, _, padded = many_models.model_shardings(3); "
         "assert len(per_model.device_set) == 2 and padded == 4, (per_model, padded); "
         "compare_optimizers.main(sys.argv[1:])",
         "--configs", "nesterov", "--seeds", "0", "1", "2", "--epochs", "2", "--vmap-seeds", "--data-dir", data_dir,
         "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["device_count"] == 2 and summary["vmap_seeds"] is True
    assert summary["loader"] == "device" and [r["seed"] for r in summary["runs"]] == [0, 1, 2]
    for run in summary["runs"]:
        alone = mlp_mnist.train(config_for("nesterov", epochs=2, seed=run["seed"]), train_set, test_set,
                                log=lambda line: None)
        assert_same_records(run["records"], alone["records"])


def test_the_model_axis_is_padded_to_a_multiple_of_the_devices(monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda: [jax.local_devices()[0]] * 4)
    for models, padded in ((6, 8), (8, 8), (3, 4), (5, 8), (1, 4)):
        per_model, _, got = many_models.model_shardings(models)
        assert (got, per_model.mesh.size) == (padded, 4)


def test_a_diverging_seed_stops_and_the_others_go_on(fake_data):
    """SGD at lr 30 on these images: some seeds blow up (NaN loss) in epoch 2 or 3, one does not.
    Together or alone, each seed stops at the same epoch with the same records."""
    _, (train_set, test_set) = fake_data
    config = config_for("sgd", epochs=3, lr=30.0, loader="device")
    configs = [dict(config, seed=seed) for seed in (0, 1, 2, 3)]
    together = many_models.train_many(configs, train_set, test_set, log=lambda line: None)
    statuses = [run["status"] for run in together]
    assert "completed" in statuses and any(s.startswith("diverged") for s in statuses), statuses
    for config, run in zip(configs, together):
        alone = mlp_mnist.train(config, train_set, test_set, log=lambda line: None)
        assert run["status"] == alone["status"]
        completed_epochs = 3 if run["status"] == "completed" else int(run["status"].split()[-1]) - 1
        assert len(run["records"]) == completed_epochs
        assert_same_records(run["records"], alone["records"])


def test_val_size_holds_out_the_last_images_and_records_their_accuracy(fake_data, tmp_path, capsys, monkeypatch):
    """--val-size 100: training sees the first 200 images only, and each epoch records val_accuracy."""
    data_dir, (train_set, _) = fake_data
    seen = []
    real_device_data = mlp_mnist.device_data

    def recording_device_data(train, val, test, sharding=None):
        seen.append((train.data.numpy(), val.data.numpy()))
        return real_device_data(train, val, test, sharding)

    monkeypatch.setattr(mlp_mnist, "device_data", recording_device_data)
    out = tmp_path / "out"
    mlp_mnist.main(["--epochs", "2", "--val-size", "100", "--data-dir", data_dir, "--out", str(out)])
    (trained_on, held_out), = seen
    np.testing.assert_array_equal(trained_on, train_set.data.numpy()[:200])
    np.testing.assert_array_equal(held_out, train_set.data.numpy()[200:])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["val_size"] == 100
    assert all(0 <= r["val_accuracy"] <= 1 for r in metrics["epochs"])
    assert "held out for validation" in capsys.readouterr().out
