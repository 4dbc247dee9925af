"""Where results go, and how they are written: every script writes into one --out folder, new or empty (default
runs/NAME, numbered when taken); every file is written to a temporary name and renamed into place, so an
interrupted run never leaves half a file, and records where it comes from (plumbing/provenance.py)."""
import atexit
import contextlib
import json
import os
import tempfile

import numpy as np

from plumbing.provenance import PROVENANCE_MARK, provenance


def read_json_or_none(path):
    """A JSON file -> its content, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_log_lines(path):
    """A log.txt that write_text wrote -> its lines without the provenance footer ([] when there is none)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    while lines and (not lines[-1].strip() or lines[-1].startswith(f"# {PROVENANCE_MARK}")):
        lines.pop()
    return lines


class OutDirError(Exception):
    """An output folder or file cannot be used; the message is one line for the user."""


WRITER = True  # False in every process of a multi-process study but process 0 (plumbing/processes.py): one writes
_created_out_dirs = []  # folders claim_out_dir made: removed at exit if the run left them empty


def claim_out_dir(path, flag="--out"):
    """Create --out, or accept it when empty; refuse a folder that already holds files."""
    if not WRITER:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutDirError(f"{flag} {path}: is a file, not a folder")
    if os.path.isdir(path) and os.listdir(path):
        shown = ", ".join(sorted(os.listdir(path))[:3])
        raise OutDirError(f"{flag} {path}: already holds files ({shown}, ...); a run never mixes its "
                          f"results with another's: choose a new or empty folder")
    missing = []
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OutDirError(f"{flag} {path}: cannot be created ({err.strerror or err})") from None
    if missing and not _created_out_dirs:
        atexit.register(remove_unused_out_dirs)
    _created_out_dirs.extend(missing)  # deepest first


def remove_unused_out_dirs():
    """Remove the folders claim_out_dir created that are still empty (a run that failed early)."""
    while _created_out_dirs:
        folder = _created_out_dirs.pop(0)
        try:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        except OSError:
            pass  # not ours to worry about: it stays


RUNS_DIR = "runs"  # git-ignored: where the scripts write by default; results/ is only ever written on request


def default_out_dir(name):
    """The default --out of a script: runs/NAME, or runs/NAME-2, -3, ... when that one holds files.

    A learner can run the same command twice and lose nothing; an explicit --out is never
    renamed, only refused when it holds files.
    """
    candidates = [os.path.join(RUNS_DIR, name)] + [os.path.join(RUNS_DIR, f"{name}-{i}") for i in range(2, 10_000)]
    return next(c for c in candidates if not (os.path.isdir(c) and os.listdir(c)) and not os.path.isfile(c))


class WriteError(OSError):
    """A file could not be written (disk full, no permission); its filename is the file's path."""


def atomic_write(path, write):
    """Call write(file object) on a temporary file beside `path`, then rename it to `path`.

    A failure raises WriteError naming `path`, so that the one-line message can say which file failed. In a
    process that does not write (not process 0 of a multi-process study), nothing happens.
    """
    if not WRITER:
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as err:
        raise WriteError(err.errno, err.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(err.errno, err.strerror or str(err), path) from None
        raise


def write_text(path, text, comment="#"):
    """A text file, its last line a comment that records provenance() ("#" for .txt, "<!--" for Markdown)."""
    end = " -->" if comment == "<!--" else ""
    footer = f"{comment} {PROVENANCE_MARK}{json.dumps(provenance(), separators=(',', ':'))}{end}\n"
    atomic_write(path, lambda f: f.write((text.rstrip("\n") + "\n\n" + footer).encode()))


def write_markdown(path, text):
    write_text(path, text, comment="<!--")


def write_json(path, obj):
    """obj (a dict) as JSON, with a "provenance" entry added."""
    content = json.dumps(dict(obj, provenance=provenance()), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(content.encode()))


def write_npz(path, arrays):
    """{name: array} as one uncompressed .npz (np.savez), atomically: NumPy alone reads it back."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
