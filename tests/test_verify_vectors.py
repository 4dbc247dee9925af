"""verify_vectors.py: every configuration computes the right thing, and the gate catches one that doesn't."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import verify_vectors
from conftest import ROOT
from verify_vectors import CONFIGURATIONS


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_configuration_computes_the_right_values(name):
    fn, backend, kind = CONFIGURATIONS[name]
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    result = np.asarray(fn(jax.device_put(x) if backend == "jax" else x))
    expected = x * x if kind == "square" else np.polyval(verify_vectors.POLY, x.astype(np.float64))
    assert result.dtype == np.float32 and result.shape == x.shape
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_json_run_has_every_configuration_with_positive_times():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "verify_vectors.py"), "--sizes", "1000",
                             "--json", "--seconds", "0.01"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"] and [r["size"] for r in report["results"]] == [1000]
    rows = report["results"][0]["rows"]
    assert set(rows) == set(CONFIGURATIONS)
    for name, row in rows.items():
        assert row["median_s"] > 0 and row["gb_per_s"] > 0 and row["repeats"] >= 3, name
        assert row["speedup_vs_numpy"] > 0
        if CONFIGURATIONS[name][1] == "jax":
            assert row["first_call_s"] > 0
    assert report["results"][0]["host_to_device_s"] > 0


def test_python_loop_is_skipped_above_its_limit(monkeypatch):
    monkeypatch.setattr(verify_vectors, "LOOP_MAX_SIZE", 50)
    result = verify_vectors.measure_size(100, 0.001, CONFIGURATIONS)
    assert "python loop" not in result["rows"] and result["skipped"] == ["python loop"]
    assert all(row["speedup_vs_loop"] is None for row in result["rows"].values())


@pytest.mark.parametrize("wrong", [
    (lambda x: x * x + 1e-2, "numpy", "square"),
    (jax.jit(lambda x: x * x * 1.001), "jax", "square"),
    (jax.jit(lambda x: verify_vectors.horner(x, jax.numpy) + 1), "jax", "poly"),
])
def test_correctness_gate_stops_a_wrong_configuration(monkeypatch, capsys, wrong):
    monkeypatch.setitem(CONFIGURATIONS, "deliberately wrong", wrong)
    with pytest.raises(SystemExit) as exit_info:
        verify_vectors.main(["--sizes", "1000", "--seconds", "0.01"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deliberately wrong" in err[0] and "NumPy gives" in err[0]


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "ten", "1e10"])
def test_bad_sizes_are_usage_errors(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        verify_vectors.main(["--sizes", value])
    assert exit_info.value.code == 2 and "argument --sizes" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path):
    import matplotlib.image

    path = tmp_path / "square.png"
    verify_vectors.main(["--sizes", "100", "1000", "--seconds", "0.01", "--json", "--plot", str(path)])
    assert matplotlib.image.imread(path).ndim == 3
