"""benchmarks/train_speed.py: the FLOP arithmetic behind its floors, and its matmul timer."""
import math
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


class FakeClock:
    """time.perf_counter for train_speed and reporting: each reading is `tick` seconds after the last."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def perf_counter(self):
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("m,k,n", [(64, 64, 64), (8, 32, 16)])
def test_matmul_rate_is_its_flops_over_the_time_per_product(monkeypatch, m, k, n):
    """On a clock where every timed call takes `tick` seconds, matmul_rate(seconds=...) runs
    count = seconds / 5 / tick products per call, so each product takes tick / count seconds:
    the rate must be exactly 2 m k n count / tick (a multiply and an add per term of each sum)."""
    tick, count = 2.0 ** -10, 8  # powers of two: seconds / 5 / tick is exactly 8
    clock = FakeClock(tick)
    monkeypatch.setattr(train_speed, "time", clock)
    monkeypatch.setattr(train_speed.reporting, "time", clock)
    rate = train_speed.matmul_rate(m, k, n, seconds=5 * count * tick)
    assert rate == pytest.approx(2 * m * k * n * count / tick, rel=1e-12)


def test_matmul_rate_on_the_real_clock_is_a_positive_finite_number():
    rate = train_speed.matmul_rate(64, 64, 64, seconds=0.05)
    assert math.isfinite(rate) and rate > 0
