"""benchmarks/train_speed.py: the FLOP arithmetic behind its floors, and its matmul timer."""
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import train_speed  # noqa: E402


def test_matmul_shapes_and_flops_of_a_step():
    shapes = train_speed.matmul_shapes()
    # 3 forward and 3 weight-gradient products, and input gradients for layers 2 and 3 only
    assert [name for name, *_ in shapes] == ["forward 1", "weight grad 1", "forward 2", "weight grad 2",
                                             "input grad 2", "forward 3", "weight grad 3", "input grad 3"]
    train, forward = train_speed.flops_per_image(shapes)
    weights = 784 * 512 + 512 * 512 + 512 * 10
    assert forward == 2 * weights  # a multiply and an add per weight per image
    assert train == 2 * (3 * weights - 784 * 512)  # forward, weight grads, input grads but the pixels'
    assert train / 1e6 == pytest.approx(3.209, abs=1e-3)


def test_matmul_rate_is_a_plausible_rate():
    rate = train_speed.matmul_rate(64, 64, 64, seconds=0.05)
    assert 1e8 < rate < 1e14  # FLOP/s: more than a Python loop, less than any chip made
