"""The training that ships: mlp_mnist's step against optax, the epoch and the loop around it, and
many models at once (many_models: the same epoch under jax.vmap) against one model at a time.

Everything here runs on small IDX files the tests write (conftest.write_fake_mnist): 300 training
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
import mnist_data
from plumbing import cli
import mlp_mnist
from conftest import LR, ROOT, config_for, optax_reference, takes, without_seconds
import optimized_sgd
from optimized_sgd import OPTIMIZERS, make_optimizer
from train_utils import batch_from_uint8, init_params, loss, predicted_class

N_TRAIN, N_TEST = 300, 50


def assert_same_records(ours, reference, rel=1e-5):
    """Per-epoch records equal up to float rounding: same epochs, losses to `rel`, same accuracies."""
    ours, reference = without_seconds(ours), without_seconds(reference)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in reference]
    for a, b in zip(ours, reference):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=rel), (a, b)
        for key, n in (("train_accuracy", N_TRAIN), ("val_accuracy", 100), ("test_accuracy", N_TEST)):
            if b[key] is None:
                assert a[key] is None
            else:
                assert a[key] == pytest.approx(b[key], abs=1 / n), (key, a, b)


# --- The step itself, against optax ----------------------------------------------------------


def uint8_batches(steps=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (size, 28, 28), dtype=np.uint8), rng.integers(0, 10, size, dtype=np.uint8))
            for _ in range(steps)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_shipped_step_matches_optax(name):
    """mlp_mnist.train_step (what train() runs, jitted, its hyperparameters float32 arrays) against optax +
    jax.value_and_grad(loss).

    optax's parameters are the point where the gradient is taken: our params, except for
    Nesterov, whose gradient point theta - mu * v is optax's parameters. The loss the step
    reports must be the loss there, before the update. The hyperparameters are float32 arrays, so optax gets
    the same float32 numbers (1 - 0.999 is 0.00099998713 in float32: for Adam that difference shows).
    """
    start = init_params(jax.random.key(0), (784, 32, 10))
    hyper = {key: jnp.float32(value) for key, value in dict(lr=LR, **takes(name)).items()}
    params, opt_state = jax.tree.map(jnp.copy, start), make_optimizer(name, **hyper).init(start)
    as_float32 = {key: float(value) for key, value in hyper.items()}
    tx = optax_reference(name, as_float32.pop("lr"), as_float32)
    reference, reference_state = start, tx.init(start)
    for images, labels in uint8_batches():
        reference_loss, grads = jax.value_and_grad(loss)(reference, batch_from_uint8(images, labels))
        updates, reference_state = tx.update(grads, reference_state, reference)
        reference = optax.apply_updates(reference, updates)

        params, opt_state, batch_loss = mlp_mnist.train_step(params, opt_state, hyper, images, labels, name=name)
        np.testing.assert_allclose(batch_loss, reference_loss, rtol=1e-5)
        ours = make_optimizer(name, **hyper).grad_point(params, opt_state)
        for a, b, s in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), jax.tree.leaves(start)):
            assert_same_move(a - s, b - s)


def assert_same_move(ours, reference):
    """Two moves of one leaf from the start agree to a thousandth of how far that leaf moved.

    Relative to each leaf's own move, not to lr: SGD moves the first layer's bias by less than 1e-5 in six steps
    (its inputs' gradients are tiny), so a fixed atol of 1e-3 * lr would pass a step that never updated it.
    A thousandth still allows RMSProp's and Adam's rounding noise (a ~0 gradient divided by a ~0 root mean square).
    """
    moved = np.abs(reference).max()
    assert moved > 0, "the leaf did not move: the comparison would be vacuous"
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3 * moved)


# --- The epoch and the loop (torch loader) -----------------------------------------------------


@pytest.fixture(scope="module")
def recorded_run(fake_data):
    """Two epochs of train() with every call of the step recorded: (train_set, test_set, calls, run)."""
    train_set, _, test_set = fake_data
    calls = []
    real_step = mlp_mnist.train_step

    class RecordingStep:
        lower = real_step.lower  # setup compiles the real step

        def __call__(self, params, opt_state, hyper, images, labels, name):
            params, opt_state, batch_loss = real_step(params, opt_state, hyper, images, labels, name=name)
            calls.append(dict(images=np.array(images), loss=float(batch_loss), params=jax.device_get(params)))
            return params, opt_state, batch_loss

    mlp_mnist.train_step = RecordingStep()
    try:
        run = mlp_mnist.train(config_for("momentum", epochs=2), train_set, test_set, log=lambda line: None)
    finally:
        mlp_mnist.train_step = real_step
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
    _, _, test_set = fake_data
    params = init_params(jax.random.key(1))
    images = jax.device_put(test_set.data.numpy())  # 50 images
    one_pass = predicted_class(params, images.reshape(N_TEST, -1).astype(jnp.float32))
    monkeypatch.setattr(mlp_mnist, "EVAL_CHUNK", 7)  # 7 chunks of 7, then one of 1
    np.testing.assert_array_equal(mlp_mnist.predict_all(mlp_mnist.predicted_digits, params, images), one_pass)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), params, init_params(jax.random.key(2)))
    per_model = mlp_mnist.predict_all(many_models.many_predictions, stacked, images)
    assert per_model.shape == (2, N_TEST)
    np.testing.assert_array_equal(per_model[0], one_pass)
    assert not np.array_equal(per_model[1], one_pass)  # the second model is another model


def test_validation_accuracy_is_measured_on_the_validation_images(learnable_data):
    """On data a model can learn: with the test images as the validation set, the two accuracies are equal at every
    epoch (and high); with the test images' labels shuffled, validation falls to about chance while the test
    accuracy stays what it was. So val_accuracy is the model's accuracy on val_set, with val_set's labels."""
    train_set, _, test_set = learnable_data
    same = mlp_mnist.train(config_for("sgd", epochs=2, loader="device"), train_set, test_set, val_set=test_set,
                           log=lambda line: None)
    assert [r["val_accuracy"] for r in same["records"]] == [r["test_accuracy"] for r in same["records"]]
    assert same["records"][-1]["test_accuracy"] >= 0.9  # a learned model: agreeing at chance would prove little
    shuffled = test_set.rows(0, len(test_set))
    shuffled.targets = shuffled.targets[np.random.default_rng(0).permutation(len(test_set))]
    other = mlp_mnist.train(config_for("sgd", epochs=2, loader="device"), train_set, test_set, val_set=shuffled,
                            log=lambda line: None)
    assert [r["test_accuracy"] for r in other["records"]] == [r["test_accuracy"] for r in same["records"]]
    assert other["records"][-1]["val_accuracy"] < 0.3  # the shuffled labels: about chance (0.1)


# What each optimizer reaches on learnable_data (600 images, 5 batches an epoch) in two epochs at its recipe lr:
# 1.0 for all but RMSProp, which at its recipe lr 0.01 reaches only 0.86 there (docs/05: at 0.01 its first steps,
# lr / sqrt(1 - rho) = 3.2 lr long for every weight, overshoot); at lr 0.001 it learns as the others do.
LEARNS_AT = {"rmsprop": dict(lr=0.001)}  # the others (a new optimizer too) at their recipe lr


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_it_learns(name, learnable_data):
    """mlp_mnist.train, two epochs on learnable images (a bright square whose place is the label): the test
    accuracy reaches 0.9, far above chance (0.1), and the training loss falls."""
    train_set, _, test_set = learnable_data
    run = mlp_mnist.train(config_for(name, epochs=2, loader="device", **LEARNS_AT.get(name, {})), train_set,
                          test_set, log=lambda line: None)
    first, last = run["records"]
    assert run["status"] == "completed" and last["test_accuracy"] >= 0.9, run["records"]
    assert last["train_loss"] < first["train_loss"]


def test_val_size_holds_out_the_last_images(fake_dir, fake_data, tmp_path, capsys, monkeypatch):
    """mlp_mnist.py --val-size 100: training sees the first 200 images only, validation the last 100."""
    train_set, _, _ = fake_data
    seen = []
    real_on_device = mnist_data.on_device

    def recording_on_device(train, val, test):
        seen.append((train.data.numpy(), val.data.numpy()))
        return real_on_device(train, val, test)

    monkeypatch.setattr(mnist_data, "on_device", recording_on_device)
    out = tmp_path / "out"
    mlp_mnist.main(["--epochs", "2", "--val-size", "100", "--data-dir", fake_dir, "--out", str(out)])
    (trained_on, held_out), = seen
    np.testing.assert_array_equal(trained_on, train_set.data.numpy()[:200])
    np.testing.assert_array_equal(held_out, train_set.data.numpy()[200:])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["val_size"] == 100
    assert all(r["val_accuracy"] is not None for r in metrics["epochs"])
    assert "held out for validation" in capsys.readouterr().out


# --- The device loader and many models, against the torch loader ------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_both_loaders_and_many_models_give_the_same_records(name, fake_data):
    """Three epochs of one optimizer through the DataLoader, through the device loader, and as model 0
    of a vmapped pair (many_models): the same records, to float rounding."""
    train_set, _, test_set = fake_data
    runs = {loader: mlp_mnist.train(config_for(name, epochs=3, loader=loader), train_set, test_set,
                                    log=lambda line: None) for loader in cli.LOADERS}
    pair = many_models.train_many([config_for(name, epochs=3, seed=seed) for seed in (0, 7)], train_set, test_set,
                                  log=lambda line: None)
    for run in (runs["device"], pair[0]):
        assert run["status"] == "completed"
        assert_same_records(run["records"], runs["torch"]["records"])
    assert without_seconds(pair[1]["records"]) != without_seconds(pair[0]["records"])  # seed 7 is another model


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_many_models_start_from_the_models_trained_alone(name):
    """many_models.initial_states: model i is mlp_mnist.initial_state's model for its seed and hyperparameters,
    bit for bit, every leaf of the params and the optimizer state (a draw compiled as one program would
    round about a quarter of the weights differently)."""
    seeds = [0, 3, 11]
    hyper = {key: np.array([value, 2 * value, value], np.float32)
             for key, value in optimized_sgd.hyperparameters(name).items()}
    together = many_models.initial_states(name, hyper, seeds)
    for i, seed in enumerate(seeds):
        alone = mlp_mnist.initial_state(name, {key: value[i] for key, value in hyper.items()}, seed)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(together), strict=True):
            np.testing.assert_array_equal(np.asarray(a), b[i])
    assert not np.array_equal(together["params"][0][0][0], together["params"][0][0][1])  # seeds differ


# A small grid for each optimizer: two learning rates (the second 3x the first) x two seeds,
# the other hyperparameters off their defaults so that mapping over them is tested too. RMSProp's eps is
# 1e-3: at eps 1e-6 and lr 0.03 on these random pixels its loss reaches 1e5, and the last-bit differences
# between the vmapped program and the single one grow past 1e-5 by epoch 2 (docs/04 shows the same drift).
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_many_models_equal_one_at_a_time(name, fake_data):
    """A grid of (lr, seed) of one optimizer as one vmapped program: each model is the run train() makes."""
    train_set, _, test_set = fake_data
    base = config_for(name, epochs=2, loader="device", **OPTIMIZERS[name].test_grid)
    configs = [dict(base, lr=lr, seed=seed) for lr in (base["lr"], 3 * base["lr"]) for seed in (0, 5)]
    together = many_models.train_many(configs, train_set, test_set, log=lambda line: None)
    for config, run in zip(configs, together):
        alone = mlp_mnist.train(config, train_set, test_set, log=lambda line: None)
        assert run["status"] == alone["status"] == "completed"
        assert_same_records(run["records"], alone["records"])
    # the test can tell: the lr and the seed each change the records
    assert without_seconds(together[0]["records"]) != without_seconds(together[1]["records"])
    assert without_seconds(together[0]["records"]) != without_seconds(together[2]["records"])


def test_a_diverging_model_stops_and_the_others_go_on(fake_data):
    """SGD at lr 1e30 blows up in epoch 1, for certain: its weights leave float32's range after one step.
    In one program with two sound models it is marked diverged and records nothing; the sound ones are
    the runs train() makes of them alone. And alone, the lr-1e30 run diverges in epoch 1 too."""
    train_set, _, test_set = fake_data
    configs = [config_for("sgd", epochs=3, lr=lr, seed=seed, loader="device")
               for lr, seed in ((0.01, 0), (1e30, 0), (0.01, 1))]
    together = many_models.train_many(configs, train_set, test_set, log=lambda line: None)
    assert [r["status"] for r in together] == ["completed", "diverged in epoch 1", "completed"]
    assert together[1]["records"] == []
    for config, run in zip(configs, together):
        alone = mlp_mnist.train(config, train_set, test_set, log=lambda line: None)
        assert alone["status"] == run["status"]
        assert_same_records(run["records"], alone["records"])


def on_cpu_devices(count, code, *args):
    """Run Python `code` (with `args` as sys.argv[1:]) in a process that sees `count` CPU devices -> its result.
    A process of its own: the device count is fixed when JAX starts, and this one has started with one."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(count))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


# compare_optimizers.main, with many_models.many_epochs watched (not replaced): every leaf of the params and
# the optimizer state it is given, and of those it returns, is written down as it is split over the devices.
WATCH_THE_SHARDS = """
import json, sys, jax, many_models, compare_optimizers
real, seen = many_models.many_epochs, []

def shards(tree):
    return [dict(shape=leaf.shape, first_axis=(*leaf.sharding.spec, None)[0], shards=sorted(
        (s.device.id, s.index[0].start, s.data.shape[0]) for s in leaf.addressable_shards))
        for leaf in jax.tree.leaves(tree)]

class Watched:
    lower = real.lower  # the setup compiles the real program
    def __call__(self, params, opt_state, *args, **kwargs):
        given = shards((params, opt_state))  # before the call: params and opt_state are donated to it
        params, opt_state, losses = real(params, opt_state, *args, **kwargs)
        seen.append(dict(given=given, returned=shards((params, opt_state, losses))))
        return params, opt_state, losses

many_models.many_epochs = Watched()
compare_optimizers.main(sys.argv[2:])
json.dump(seen, open(sys.argv[1], "w"))
"""


def test_many_models_sharded_over_two_devices(fake_dir, fake_data, tmp_path):
    """compare_optimizers.py --vmap with two (virtual) CPU devices and three seeds: the model axis is padded to
    four, and every leaf of the params and optimizer state, given to each epoch and returned by it, is split over
    it: two models on each device. And the results are those of mlp_mnist.train, one seed at a time, through the
    DataLoader."""
    train_set, _, test_set = fake_data
    out, watched = tmp_path / "out", tmp_path / "shards.json"
    result = on_cpu_devices(2, WATCH_THE_SHARDS, str(watched), "--configs", "nesterov", "--seeds", "0", "1", "2",
                            "--epochs", "2", "--vmap", "--data-dir", fake_dir, "--out", str(out))
    assert result.returncode == 0, result.stderr
    epochs = json.loads(watched.read_text())
    assert len(epochs) == 2
    for epoch in epochs:
        leaves = epoch["given"] + epoch["returned"]
        assert len(epoch["given"]) == 2 * 6 and len(epoch["returned"]) == 2 * 6 + 1  # params, velocity (, losses)
        for leaf in leaves:
            assert leaf["shape"][0] == 4 and leaf["first_axis"] == "model", leaf  # split along the mesh's "model"
            # (device, first model, models): devices 0 and 1, models 0-1 on the one, 2-3 on the other
            assert leaf["shards"] == [[0, 0, 2], [1, 2, 2]], leaf
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["device"]["count"] == 2 and summary["vmap"] is True
    assert summary["loader"] == "device" and [r["seed"] for r in summary["runs"]] == [0, 1, 2]
    for run in summary["runs"]:
        alone = mlp_mnist.train(config_for("nesterov", epochs=2, seed=run["seed"]), train_set, test_set,
                                log=lambda line: None)
        assert_same_records(run["records"], alone["records"])


# many_models.model_shardings as it is, on four devices: the padded count, the mesh, and where the rows of a
# (padded, 3) array put with each sharding land.
SHARDINGS_ON_FOUR = """
import json, jax, numpy as np, many_models
found = {}
for models in (6, 8, 3, 5, 1):
    per_model, shared, padded = many_models.model_shardings(models)
    split, copied = (jax.device_put(np.zeros((padded, 3)), sharding) for sharding in (per_model, shared))
    found[models] = dict(padded=padded, devices=len(jax.devices()), mesh=per_model.mesh.size,
                         split=sorted(s.data.shape[0] for s in split.addressable_shards),
                         copied=sorted(s.data.shape[0] for s in copied.addressable_shards))
print(json.dumps(found))
"""


@pytest.mark.parametrize("models, padded", [(6, 8), (8, 8), (3, 4), (5, 8), (1, 4)])
def test_the_model_axis_is_padded_to_a_multiple_of_the_devices(models, padded, shardings_on_four_devices):
    """On four CPU devices: the model axis padded to a multiple of 4, a mesh of all four, the per-model sharding
    putting padded / 4 models on each device, the shared one every row on every device."""
    found = shardings_on_four_devices[str(models)]
    assert found["devices"] == found["mesh"] == 4
    assert found["padded"] == padded
    assert found["split"] == [padded // 4] * 4 and found["copied"] == [padded] * 4


@pytest.fixture(scope="module")
def shardings_on_four_devices():
    """SHARDINGS_ON_FOUR's findings, one process for the whole table."""
    result = on_cpu_devices(4, SHARDINGS_ON_FOUR)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])
