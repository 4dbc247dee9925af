"""benchmarks/host_digits.py: its comparison counts what differs, the same CPU gives the same bits twice, and
--emulate without QEMU is one line."""
import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import host_digits  # noqa: E402


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Two measurements on this CPU, each into its own folder."""
    folders = [tmp_path_factory.mktemp("digits") / name for name in ("a", "b")]
    for folder in folders:
        host_digits.main(["--out", str(folder)])
    return folders


def test_this_cpu_gives_the_same_bits_twice(measured, tmp_path):
    a, b = (json.loads((folder / "digits.json").read_text()) for folder in measured)
    assert a["sha256"] == b["sha256"] and a["emulated"] is None
    host_digits.main(["--compare", str(measured[0]), str(measured[1]), "--out", str(tmp_path / "c")])
    table = (tmp_path / "c" / "comparison.md").read_text()
    assert table.count("| yes | 0 of ") == len(a["operations"]) and "| no |" not in table


def test_a_changed_element_is_counted(measured, tmp_path):
    """One element of the first operation changed by one unit in the last place: 'no', 1 element, and a difference
    of at most one ulp of the largest value."""
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "digits.json").write_text((measured[1] / "digits.json").read_text())
    with np.load(measured[1] / "arrays.npz") as arrays:
        found = {key: arrays[key].copy() for key in arrays.files}
    found["0"].flat[7] = np.nextafter(found["0"].flat[7], np.float32(np.inf))
    np.savez(changed / "arrays.npz", **found)
    text = host_digits.compare(str(measured[0]), str(changed))
    first = json.loads((changed / "digits.json").read_text())["operations"][0]
    row = next(line for line in text.splitlines() if line.startswith(f"| {first} |"))
    assert f"| no | 1 of {found['0'].size:,} |" in row
    largest = np.max(np.abs(found["0"]))
    assert 0 < float(row.split("|")[4]) <= 1.2e-7 * 1.01 and largest > 0  # at most an ulp of the largest value


def test_emulate_without_qemu_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(host_digits.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exit_info:
        host_digits.main(["--emulate", "EPYC-Rome", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "qemu-user" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()
