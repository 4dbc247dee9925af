"""benchmarks/train_speed.py: the FLOP arithmetic behind its floors, its matmul timer, and a whole run on
small data whose every ratio is checked against the times it reports."""
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import train_speed  # noqa: E402
from plumbing import stats  # noqa: E402


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
    """time.perf_counter for train_speed and plumbing.stats: each reading is `tick` seconds after the last."""

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
    monkeypatch.setattr(stats, "time", clock)
    rate = train_speed.matmul_rate(m, k, n, seconds=5 * count * tick)
    assert rate == pytest.approx(2 * m * k * n * count / tick, rel=1e-12)


@pytest.fixture(scope="module")
def small_run(fake_dir, tmp_path_factory):
    """The whole benchmark on 300 fake images: one timed epoch per path, 2 models as one program."""
    out = tmp_path_factory.mktemp("speed") / "out"
    real_rate = train_speed.matmul_rate
    train_speed.matmul_rate = lambda m, k, n, seconds=0: real_rate(m, k, n, seconds=0.01)  # a rough rate is enough here
    try:
        train_speed.main(["--timed-epochs", "1", "--vmap-models", "2", "--rounds", "3", "--data-dir", fake_dir,
                          "--out", str(out)])
    finally:
        train_speed.matmul_rate = real_rate
    return json.loads((out / "train_speed.json").read_text()), (out / "table.txt").read_text()


def test_a_whole_run_reports_what_its_times_say(small_run):
    result, table = small_run
    assert result["status"] == "completed" and result["train_images"] == 300
    rounds = result["rounds"]
    assert len(rounds) == 3 and len({tuple(r["order"]) for r in rounds}) > 1  # each round its own random order
    for name, a, b in train_speed.RATIOS:
        per_round = sorted(r["median_epoch_s"][a] / r["median_epoch_s"][b] for r in rounds)
        assert result["ratios"][name] == dict(median=per_round[1], min=per_round[0], max=per_round[2])
        assert f"{name + ':':<33}{per_round[1]:.2f}x  (rounds: {per_round[0]:.2f} - {per_round[2]:.2f})" in table
    two = result["vmap"]["models"]["2"]
    assert two["per_model_epoch_s"]["median"] == pytest.approx(two["epoch_s"]["median"] / 2)
    per_round = sorted(r["median_epoch_s"]["2 models"] / 2 / r["median_epoch_s"]["one model"] for r in rounds)
    assert two["per_model_over_one"] == dict(median=per_round[1], min=per_round[0], max=per_round[2])
    floor = result["shape_floor_epoch_s"]["median"]
    assert result["ratios"]["device loader / shape floor"]["median"] == pytest.approx(
        sorted(r["median_epoch_s"]["device loader"] for r in rounds)[1] / floor)
    assert result["vmap"]["images"] == 250  # the last sixth held out, as in docs/07
    rates = result["matmul_gflops"]
    floor = sum(2 * m * k * n / (1e9 * rates[name]["median"]) for name, m, k, n in train_speed.matmul_shapes())
    assert result["shape_floor_epoch_s"]["median"] == pytest.approx(floor * 300 / 128)
    assert result["shape_floor_epoch_s"]["min"] <= result["shape_floor_epoch_s"]["median"] <= result[
        "shape_floor_epoch_s"]["max"]
    assert table.splitlines()[-1].startswith("# provenance")
