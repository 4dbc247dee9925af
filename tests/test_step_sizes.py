"""step_sizes.py: the statistics it prints, on small IDX files the tests write, and its schedules."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mnist_data
import step_sizes
from conftest import write_fake_mnist
from optimized_sgd import make_optimizer

N_TRAIN = 500  # batches of 128, 128, 128 and 116: an epoch of 4 steps, the last one partial
TINY_EPS = 1e-30  # RMSProp's eps, far under every nonzero sqrt(s) here, but a zero gradient still moves 0 / eps = 0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake-mnist")
    write_fake_mnist(folder, n_train=N_TRAIN)
    return str(folder)


@pytest.fixture(scope="module")
def train_set(data_dir):
    return mnist_data.load_mnist(data_dir)[0]


def test_sgd_moves_each_weight_by_lr_times_its_gradient(train_set):
    stats = step_sizes.step_statistics("sgd", dict(lr=0.01), None, train_set, steps=3)
    assert len(stats["step"]) == 3 and all(0 <= d <= 1 for pair in stats["dead"].values() for d in pair)
    assert stats["step"][0] == pytest.approx(0.01 * stats["grad"], rel=1e-3)


def test_rmsprops_first_step_is_lr_over_sqrt_one_minus_rho_where_the_gradient_is_not_zero(train_set):
    lr = 0.01
    stats = step_sizes.step_statistics("rmsprop", dict(lr=lr, rho=0.9, eps=TINY_EPS), None, train_set, steps=2)
    assert stats["step1_nonzero"] == pytest.approx(lr / np.sqrt(0.1), rel=1e-6)  # 3.16 lr, exactly
    # the entries with a zero gradient do not move: they pull the mean over all of w2 below 3.16 lr
    assert stats["zero_grad"] > 0.05
    assert stats["step"][0] == pytest.approx((1 - stats["zero_grad"]) * stats["step1_nonzero"], rel=1e-5)


def test_the_bias_corrected_schedule_is_rmsprop_with_bias_correction():
    """lr_t = lr sqrt(1 - rho^t) and eps_t = eps sqrt(1 - rho^t), fed to plain RMSProp step by step, give
    optax.rmsprop(bias_correction=True) (eps outside the root), to float32 rounding; without the schedule
    they do not."""
    rng = np.random.default_rng(0)
    grads = [{"w": jnp.asarray(rng.normal(size=(3, 4)) * np.exp(rng.normal(size=(3, 4))), jnp.float32)}
             for _ in range(12)]
    hyper = dict(lr=0.01, rho=0.9, eps=1e-3)
    tx = optax.rmsprop(0.01, decay=0.9, eps=1e-3, eps_in_sqrt=False, bias_correction=True)
    reference, reference_state = {"w": jnp.zeros((3, 4))}, None
    reference_state = tx.init(reference)
    ours, plain = {"w": jnp.zeros((3, 4))}, {"w": jnp.zeros((3, 4))}
    state, plain_state = make_optimizer("rmsprop", **hyper).init(ours), make_optimizer("rmsprop", **hyper).init(plain)
    for t, g in enumerate(grads, start=1):
        updates, reference_state = tx.update(g, reference_state, reference)
        reference = optax.apply_updates(reference, updates)
        ours, state = make_optimizer("rmsprop", **step_sizes.schedule("bias-corrected", t, hyper)).update(g, state, ours)
        plain, plain_state = make_optimizer("rmsprop", **hyper).update(g, plain_state, plain)
        np.testing.assert_allclose(ours["w"], reference["w"], rtol=2e-5, atol=1e-8)
    assert not np.allclose(plain["w"], reference["w"], rtol=1e-2)


def test_the_warm_up_schedule_ramps_the_learning_rate():
    hyper = dict(lr=0.01, rho=0.9, eps=1e-8)
    lrs = [float(step_sizes.schedule("warm-up", t, hyper)["lr"]) for t in (1, step_sizes.WARM_UP // 2,
                                                                          step_sizes.WARM_UP, 10 * step_sizes.WARM_UP)]
    assert lrs == pytest.approx([0.01 / step_sizes.WARM_UP, 0.005, 0.01, 0.01])
    assert float(step_sizes.schedule(None, 7, hyper)["lr"]) == pytest.approx(0.01)


def test_the_batches_go_on_into_the_next_epoch_in_a_new_order(train_set):
    """Epoch 1 is steps 1-4 (500 images), epoch 2 steps 5-8: each covers every image once, in another order."""
    index_of = {image.tobytes(): i for i, image in enumerate(train_set.data.numpy())}
    batches = step_sizes.batches(train_set, seed=0)
    epochs = [[index_of[image.tobytes()] for _ in range(4) for image in next(batches)[0]] for _ in range(2)]
    assert [sorted(epoch) for epoch in epochs] == [list(range(N_TRAIN))] * 2
    assert epochs[0] != epochs[1]


def test_dead_units_are_counted_per_layer(train_set):
    """A unit is dead when its ReLU is 0 for every image: with layer 1's biases at -1e9 all of layer 1 is dead,
    and so is all of layer 2, which then sees only zeros and its own biases (set negative here)."""
    from train_utils import init_params

    params = init_params(jax.random.key(0))
    images = train_set.data.numpy()[:300]
    (w1, b1), (w2, b2), last = params
    h1 = np.maximum(images.reshape(300, -1).astype(np.float64) @ np.asarray(w1, np.float64) + np.asarray(b1), 0)
    h2 = np.maximum(h1 @ np.asarray(w2, np.float64) + np.asarray(b2), 0)
    expected = (np.mean(np.all(h1 == 0, axis=0)), np.mean(np.all(h2 == 0, axis=0)))  # NumPy, in float64
    assert step_sizes.dead_fractions(params, images) == pytest.approx(expected, abs=1 / 512)
    dead = [(w1, b1 - 1e9), (w2, -jnp.abs(b2) - 1e-3), last]
    assert step_sizes.dead_fractions(dead, train_set.data.numpy()[:300]) == (1.0, 1.0)
    half = [(w1, b1.at[:256].add(-1e9).at[256:].add(1e9)), (w2, b2), last]  # units 0-255 off, 256-511 on
    assert step_sizes.dead_fractions(half, train_set.data.numpy()[:300])[0] == 0.5


@pytest.mark.parametrize("steps", [1, 4, 9])  # one step; one epoch (with its partial batch); into epoch 3
def test_any_number_of_steps_writes_a_full_table(data_dir, tmp_path, capsys, monkeypatch, steps):
    monkeypatch.setattr(step_sizes, "SETTINGS", [("rmsprop lr=0.01", "rmsprop", dict(lr=0.01), None)])
    step_sizes.main(["--steps", str(steps), "--data-dir", data_dir, "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.txt").read_text().splitlines()
    assert table[2].startswith("rmsprop lr=0.01") and "nan" not in table[2] and table[-1].startswith("# provenance")
    (result,) = json.loads((tmp_path / "out" / "step_sizes.json").read_text())["settings"]
    assert len(result["step"]) == steps
    assert sorted(map(int, result["dead"])) == sorted({1, 10} & set(range(1, steps)) | {steps})
    assert capsys.readouterr().out.count("rmsprop lr=0.01") == 1
