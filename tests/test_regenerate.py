"""results/regenerate.py: --check's rules on made-up provenance, and --verify on a real (cheap) part."""
import hashlib
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "results"))
import regenerate  # noqa: E402

sys.path.pop(0)

EPYC = dict(cpu_model="AMD EPYC", cpu_count=2, memory_gb=23.5)
XEON = dict(cpu_model="Intel Xeon", cpu_count=2, memory_gb=23.5)


TREE = b"def model(): ...\n"  # the tree's mlp_mnist.py, in a made-up repository beside the made-up results/
TREE_DIGEST = hashlib.sha256(TREE).hexdigest()[:16]


@pytest.fixture
def results(tmp_path):
    """A made-up repository: its mlp_mnist.py, and the (empty) results/ folder beside it."""
    (tmp_path / "mlp_mnist.py").write_bytes(TREE)
    (tmp_path / "results").mkdir()
    return tmp_path / "results"


def write(folder, path, machine, isa="AVX2", xla_flags=None, digest=TREE_DIGEST, dirty=False, **extra):
    """A JSON file under folder (results/) whose provenance names this machine, ISA and code."""
    full = folder / path
    full.parent.mkdir(parents=True, exist_ok=True)
    found = dict(machine=dict(machine, isa=isa), xla_flags=xla_flags,
                 code=dict(commit="c0ffee", dirty=dirty, files={"mlp_mnist.py": digest}))
    found.update(extra)
    full.write_text(json.dumps(dict(provenance=found)))


def consistent(folder):
    """A results/ that passes: digit files from two machines of one ISA, timing files from one machine."""
    write(folder, "seed0/sgd/metrics.json", EPYC)
    write(folder, "tuning/summary.json", XEON)  # another machine, the same ISA: the same digits
    write(folder, "train_speed/results.json", XEON, isa="AVX-512")
    write(folder, "verify_vectors/results.json", XEON, isa="AVX-512")
    (folder / "seed0" / "sgd" / "model.npz").write_bytes(b"not committed (.gitignore): no provenance read")
    (folder / "tuning" / "checkpoints").mkdir()
    (folder / "tuning" / "checkpoints" / "sgd.npz").write_bytes(b"neither")


def test_check_passes_digits_from_one_isa_and_timings_from_one_machine(results):
    consistent(results)
    assert regenerate.check(str(results)) == []


@pytest.mark.parametrize("change, expected", [
    (lambda f: write(f, "sweep/summary.json", EPYC, isa="AVX-512"), "digit files from {'isa': 'AVX-512'"),
    (lambda f: write(f, "sweep/summary.json", EPYC, xla_flags="--xla_cpu_max_isa=AVX"), "'xla_flags': '--xla"),
    (lambda f: write(f, "train_speed/table.json", EPYC, isa="AVX-512"), "timing files from machine"),
    (lambda f: write(f, "paths/paths.json", EPYC, digest="bbbb"), "mlp_mnist.py at bbbb: 1 files"),
    (lambda f: (f.parent / "mlp_mnist.py").write_text("def model(): return 1\n"),  # every file agrees, but on
     "mlp_mnist.py: 4 files ran it at " + TREE_DIGEST),                          # code the tree has changed
    (lambda f: (f.parent / "mlp_mnist.py").unlink(), "but the tree's is gone"),
    (lambda f: write(f, "paths/paths.json", EPYC, dirty=True), "differ from commit c0ffee"),
    (lambda f: write(f, "old-study/summary.json", EPYC), "results/old-study/summary.json: no part"),
    (lambda f: (f / "paths").mkdir() or (f / "paths" / "notes.txt").write_text("no provenance\n"),
     "results/paths/notes.txt: records no provenance"),
])
def test_check_names_each_kind_of_problem(results, change, expected):
    consistent(results)
    change(results)
    problems = regenerate.check(str(results))
    assert any(expected in line for line in problems), problems


def test_check_compares_a_module_in_a_subfolder_with_the_tree(results):
    """plumbing/cli.py, as provenance names it (relative to the repository root): equal, then changed."""
    consistent(results)
    (results.parent / "plumbing").mkdir()
    (results.parent / "plumbing" / "cli.py").write_bytes(TREE)
    write(results, "paths/paths.json", EPYC, digest=TREE_DIGEST)
    data = json.loads((results / "paths" / "paths.json").read_text())
    data["provenance"]["code"]["files"]["plumbing/cli.py"] = TREE_DIGEST
    (results / "paths" / "paths.json").write_text(json.dumps(data))
    assert regenerate.check(str(results)) == []
    (results.parent / "plumbing" / "cli.py").write_text("def flags(): ...\n")
    assert regenerate.check(str(results)) == [
        f"plumbing/cli.py: 1 files ran it at {TREE_DIGEST}, e.g. results/paths/paths.json, but the tree's is at "
        f"{regenerate.tree_digest(str(results.parent), 'plumbing/cli.py')}: regenerate them"]


def test_a_file_made_before_the_isa_was_recorded_fails_the_check(results):
    consistent(results)
    path = results / "seed0" / "sgd" / "metrics.json"
    data = json.loads(path.read_text())
    del data["provenance"]["machine"]["isa"]
    path.write_text(json.dumps(data))
    assert regenerate.check(str(results)) == ["results/seed0/sgd/metrics.json: records no ISA or XLA flags (made "
                                               "before they were recorded)"]


@pytest.mark.parametrize("a, b, expected", [
    ({"x": [1, 2.5]}, {"x": [1, 2.5]}, None),
    ({"x": [1, 2.5]}, {"x": [1, 2.5000000001]}, ".x[1]: 2.5 != 2.5000000001"),
    ({"x": [1]}, {"x": [1, 2]}, ".x: 1 entries != 2"),
    ({"x": 1}, {"y": 1}, ".x: only in one of them"),
])
def test_first_difference(a, b, expected):
    assert regenerate.first_difference(a, b) == expected


def test_without_drops_seconds_and_provenance_only():
    entries = {"train_seconds": 1.0, "provenance": {}, "out": "x", "loss": 0.5, "runs": [{"compile_seconds": 2, "a": 1}]}
    assert regenerate.without(entries) == {"loss": 0.5, "runs": [{"a": 1}]}


def test_every_part_verified_is_a_part_and_every_timing_part_exists():
    assert set(regenerate.VERIFY) <= set(regenerate.PARTS) and set(regenerate.TIMING) <= set(regenerate.PARTS)


def test_verify_reruns_a_part_and_finds_a_changed_digit(tmp_path, capsys):
    """The paths part (no MNIST, seconds): made here into a fake results/, then --verify: equal; one digit of
    the committed copy changed: that file differs; a copy from another ISA: refused, exit status 4."""
    out = tmp_path / "results" / "paths"
    assert regenerate.run_step(regenerate.step(["python", "optimizer_paths.py"], str(out))) == 0
    assert regenerate.verify("paths", root=str(tmp_path)) == []
    assert "results/paths/rates.json: equal, bit for bit" in capsys.readouterr().out

    paths = json.loads((out / "paths.json").read_text())
    first = paths["quadratic"] if "quadratic" in paths else next(iter(paths.values()))
    text = json.dumps(paths)
    changed = text.replace(repr(find_float(first)), repr(find_float(first) * (1 + 1e-15)), 1)
    assert changed != text
    (out / "paths.json").write_text(changed)
    assert regenerate.verify("paths", root=str(tmp_path)) == ["results/paths/paths.json"]
    assert "results/paths/paths.json: DIFFERS at ." in capsys.readouterr().out

    data = json.loads((out / "rates.json").read_text())
    data["provenance"]["machine"]["isa"] = "SSE4.2"
    (out / "rates.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        regenerate.verify("paths", root=str(tmp_path))
    assert exit_info.value.code == 4
    assert "their digits differ by design" in capsys.readouterr().err


def find_float(value):
    """The first non-zero float in a JSON value."""
    if isinstance(value, float) and value != 0.0:
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((f for f in map(find_float, items) if f is not None), None)
