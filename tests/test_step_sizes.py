"""step_sizes.py: the statistics it prints, on small IDX files the tests write."""
import numpy as np
import pytest

import mnist_data
import step_sizes
from fake_mnist import write_fake_mnist


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake-mnist")
    write_fake_mnist(folder, n_train=512)
    return mnist_data.load_mnist(str(folder))[0]


def test_sgd_moves_each_weight_by_lr_times_its_gradient(train_set):
    stats = step_sizes.step_statistics("sgd", 0.01, {}, train_set, steps=3)
    assert len(stats["step"]) == 3 and 0 <= stats["dead"] <= 1
    assert stats["step"][0] == pytest.approx(0.01 * stats["grad"], rel=1e-3)


def test_rmsprops_first_step_is_lr_over_sqrt_one_minus_rho(train_set):
    stats = step_sizes.step_statistics("rmsprop", 0.01, {"rho": 0.9}, train_set, steps=2)
    # every weight of w2 with a gradient moves by 3.16 lr; the dead units' weights do not move
    assert 0.5 * 0.01 / np.sqrt(0.1) < stats["step"][0] <= 0.01 / np.sqrt(0.1) * (1 + 1e-5)
