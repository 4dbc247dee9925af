"""verify_vectors.py: every configuration computes the right thing, donation reuses the buffer,
page faults are counted right, and the gates (wrong results, taken --out folders) stop a run."""
import json
import mmap
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plumbing import exits, files
import verify_vectors
from conftest import ROOT
from verify_vectors import CONFIGURATIONS, Configuration, jax_call, numpy_call

EXPECTED = {"square": lambda x: x * x, "copy": lambda x: x,
            "poly": lambda x: np.polyval(verify_vectors.POLY, x)}  # float64 oracles


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_configuration_computes_the_right_values(name):
    config = CONFIGURATIONS[name]
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    result = np.asarray(config.make(x)())
    assert result.dtype == np.float32 and result.shape == x.shape
    np.testing.assert_allclose(result, EXPECTED[config.kind](x.astype(np.float64)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [name for name, config in CONFIGURATIONS.items() if config.chained])
def test_chained_configuration_squares_its_previous_output(name):
    x = np.linspace(-1.5, 1.5, 1001, dtype=np.float32)
    call = CONFIGURATIONS[name].make(x)
    call()
    np.testing.assert_allclose(np.asarray(call()), x.astype(np.float64) ** 4, rtol=1e-5, atol=1e-6)


def test_donation_reuses_the_input_buffer():
    # Made by XLA: a device_put of a NumPy array may share the array's memory, which XLA cannot reuse.
    x = jnp.linspace(-2, 2, 4096, dtype=jnp.float32)
    address = x.unsafe_buffer_pointer()
    y = verify_vectors.square_donated(x).block_until_ready()
    assert x.is_deleted(), "the donated input must be consumed by the call"
    assert y.unsafe_buffer_pointer() == address, "the output must live in the donated input's memory"
    np.testing.assert_allclose(np.asarray(y), np.linspace(-2, 2, 4096) ** 2, rtol=1e-5, atol=1e-6)


def test_faults_per_call_counts_each_newly_touched_page():
    """Closed form: a fresh anonymous mapping, no huge pages, one write per page = one minor fault a page."""
    if verify_vectors.resource is None or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        pytest.skip("needs getrusage and Linux's madvise")
    pages = 512

    def touch_fresh_pages():
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as memory:
            memory.madvise(mmap.MADV_NOHUGEPAGE)
            for page in range(pages):
                memory[page * mmap.PAGESIZE] = 1

    assert pages <= verify_vectors.faults_per_call(touch_fresh_pages, 4) < 1.2 * pages
    assert verify_vectors.faults_per_call(lambda: None, 4) < 1


def test_without_getrusage_the_fault_column_shows_a_dash(monkeypatch):
    monkeypatch.setattr(verify_vectors, "resource", None)
    configs = {name: CONFIGURATIONS[name] for name in ("numpy x * x", "jax.jit")}
    result = verify_vectors.measure_size(100, 0.001, configs)
    assert all(row["minor_faults_per_call"] is None for row in result["rows"].values())
    for line in verify_vectors.format_table(result).splitlines()[2:]:
        assert line.split()[-4] == "-", line


def test_run_writes_every_configuration_with_positive_times(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "verify_vectors.py"), "--sizes", "1000",
                             "--json", "--seconds-per-config", "0.01", "--out", str(out)], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    written = json.loads((out / "results.json").read_text())
    assert report == {k: v for k, v in written.items() if k != "provenance"} and written["provenance"]["command"]
    assert report["device"] and [r["size"] for r in report["results"]] == [1000]
    rows = report["results"][0]["rows"]
    assert set(rows) == set(CONFIGURATIONS)
    for name, row in rows.items():
        assert row["median_s"] > 0 and row["gb_per_s"] > 0 and row["repeats"] >= 3, name
        assert row["speedup_vs_numpy"] > 0 and row["minor_faults_per_call"] >= 0
        baseline = "numpy out=x (in place)" if CONFIGURATIONS[name].chained else (
            "numpy polynomial" if CONFIGURATIONS[name].kind == "poly" else "numpy x * x")
        key = "speedup_vs_numpy_in_place" if CONFIGURATIONS[name].chained else "speedup_vs_numpy"
        assert row[key] == pytest.approx(rows[baseline]["median_s"] / row["median_s"])  # like for like
        assert (row["first_call_s"] > 0) if CONFIGURATIONS[name].uses_jax else row["first_call_s"] is None
    assert report["results"][0]["host_to_device_s"] > 0
    table = (out / "table.txt").read_text()
    assert "page faults/call" in table and all(name in table for name in CONFIGURATIONS)
    import matplotlib.image
    assert matplotlib.image.imread(out / "square.png").ndim == 3


def test_python_loop_is_skipped_above_its_limit(monkeypatch):
    monkeypatch.setattr(verify_vectors, "LOOP_MAX_SIZE", 50)
    configs = {name: CONFIGURATIONS[name] for name in ("python loop", "numpy x * x")}
    result = verify_vectors.measure_size(100, 0.001, configs)
    assert "python loop" not in result["rows"] and result["skipped"] == ["python loop"]
    assert all(row["speedup_vs_loop"] is None for row in result["rows"].values())


def wrong_donated_chain(x_host):
    """Right on the first call, then wrong: the chain's later calls add 1e-2."""
    calls = [verify_vectors.donated_chain(x_host), 0]

    def call():
        calls[1] += 1
        result = calls[0]()
        return result if calls[1] == 1 else result + 1e-2
    return call


@pytest.mark.parametrize("wrong", [
    Configuration(numpy_call(lambda x: x * x + 1e-2), "square", False),
    Configuration(jax_call(jax.jit(lambda x: x * x * 1.001)), "square", True),
    Configuration(jax_call(jax.jit(lambda x: verify_vectors.horner(x, jnp) + 1)), "poly", True),
    Configuration(numpy_call(lambda x: x + 1e-2), "copy", False),
    Configuration(wrong_donated_chain, "square", True, chained=True),  # caught after the timing
])
def test_correctness_gate_stops_a_wrong_configuration(monkeypatch, capsys, tmp_path, wrong):
    """A configuration that disagrees with NumPy: exit 4 (the check failed), one line naming it, and only the
    sizes finished before it are written (here: none, so nothing)."""
    monkeypatch.setattr(verify_vectors, "CONFIGURATIONS", {"numpy x * x": CONFIGURATIONS["numpy x * x"],
                                                           "numpy out=x (in place)": CONFIGURATIONS["numpy out=x (in place)"],
                                                           "numpy polynomial": CONFIGURATIONS["numpy polynomial"],
                                                           "deliberately wrong": wrong})
    with pytest.raises(SystemExit) as exit_info:
        verify_vectors.main(["--sizes", "1000", "--seconds-per-config", "0.01", "--out", str(tmp_path / "run")])
    files.remove_unused_out_dirs()
    assert exit_info.value.code == exits.EXIT_CHECK_FAILED == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deliberately wrong" in err[0] and "NumPy gives" in err[0]
    assert not (tmp_path / "run").exists(), "a failed run writes nothing"


def test_a_wrong_configuration_at_the_second_size_keeps_the_first(monkeypatch, capsys, tmp_path):
    wrong_at_2000 = Configuration(numpy_call(lambda x: x * x + (1e-2 if len(x) == 2000 else 0)), "square", False)
    monkeypatch.setattr(verify_vectors, "CONFIGURATIONS", {"numpy x * x": CONFIGURATIONS["numpy x * x"],
                                                           "deliberately wrong": wrong_at_2000})
    with pytest.raises(SystemExit) as exit_info:
        verify_vectors.main(["--sizes", "1000", "2000", "--seconds-per-config", "0.01", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 4 and "holds the sizes finished" in capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["status"] == "partial" and [r["size"] for r in report["results"]] == [1000]


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "ten", "1e10", "inf", "nan"])
def test_bad_sizes_are_usage_errors(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        verify_vectors.main(["--sizes", value])
    assert exit_info.value.code == 2 and "argument --sizes" in capsys.readouterr().err


@pytest.mark.parametrize("taken", ["folder with a file", "a file"])
def test_an_out_that_holds_files_is_refused_before_any_timing(tmp_path, capsys, monkeypatch, taken):
    out = tmp_path / "out"
    if taken == "a file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "results.json").write_text("mine")
    monkeypatch.setattr(verify_vectors, "measure_size", lambda *a: pytest.fail("timed despite the refusal"))
    with pytest.raises(SystemExit) as exit_info:
        verify_vectors.main(["--sizes", "100", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: --out")
    assert (out.read_text() if taken == "a file" else (out / "results.json").read_text()) == "mine"


def test_default_out_is_a_fresh_runs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(files, "RUNS_DIR", "runs")
    monkeypatch.setattr(verify_vectors, "CONFIGURATIONS", {"numpy x * x": CONFIGURATIONS["numpy x * x"]})
    for _ in range(2):
        verify_vectors.main(["--sizes", "100", "--seconds-per-config", "0.001"])
    assert sorted(os.listdir(tmp_path / "runs")) == ["verify_vectors", "verify_vectors-2"]
    assert sorted(os.listdir(tmp_path / "runs" / "verify_vectors-2")) == ["results.json", "square.png", "table.txt"]
