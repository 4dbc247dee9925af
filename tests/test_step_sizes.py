"""step_sizes.py: the statistics it prints, on small IDX files the tests write."""
import numpy as np
import pytest

import mnist_data
import step_sizes
from fake_mnist import write_fake_mnist

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
    stats = step_sizes.step_statistics("sgd", 0.01, {}, train_set, steps=3)
    assert len(stats["step"]) == 3 and 0 <= stats["dead"] <= 1
    assert stats["step"][0] == pytest.approx(0.01 * stats["grad"], rel=1e-3)


def test_rmsprops_first_step_is_lr_over_sqrt_one_minus_rho_where_the_gradient_is_not_zero(train_set):
    lr = 0.01
    stats = step_sizes.step_statistics("rmsprop", lr, {"rho": 0.9, "eps": TINY_EPS}, train_set, steps=2)
    assert stats["step1_nonzero"] == pytest.approx(lr / np.sqrt(0.1), rel=1e-6)  # 3.16 lr, exactly
    # the entries with a zero gradient do not move: they pull the mean over all of w2 below 3.16 lr
    assert stats["zero_grad"] > 0.05
    assert stats["step"][0] == pytest.approx((1 - stats["zero_grad"]) * stats["step1_nonzero"], rel=1e-5)


@pytest.mark.parametrize("steps", [1, 4, 9])  # one step; one epoch (with its partial batch); into epoch 3
def test_any_number_of_steps_prints_a_full_table(data_dir, capsys, monkeypatch, steps):
    monkeypatch.setattr(step_sizes, "SETTINGS", [("rmsprop", 0.01, {})])
    step_sizes.main(["--steps", str(steps), "--data-dir", data_dir])
    _, row = capsys.readouterr().out.splitlines()[1:]
    assert "nan" not in row and len(row.split()) == 2 + 7  # "rmsprop lr=0.01", then 7 columns
    assert (row.split()[-3] == "-") == (steps == 1)  # "|step| 2-N" has no steps to average with --steps 1


def test_steps_go_on_into_the_next_epoch(train_set):
    stats = step_sizes.step_statistics("sgd", 0.01, {}, train_set, steps=9)
    assert len(stats["step"]) == 9 and all(s > 0 for s in stats["step"])
