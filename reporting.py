"""What every script shares on its way in and out: argparse number types, the --out folder
and output files, atomic writes, and the plots (matplotlib, no display).

One rule for every output: nothing that exists is overwritten or mixed in. Every script writes
into one --out folder, which must be new or empty (no script has a flag that names a single
output file). A refusal is one line (OutDirError) and the scripts exit with status 2. A folder that a
run created and left empty (it failed before writing anything) is removed when it exits.

Every file is written to a temporary name in the same folder and then renamed over the
final name, so an interrupted or failed run never leaves a half-written file behind.
"""
import argparse
import atexit
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")  # draw to files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


# --- Command-line numbers ----------------------------------------------------------------


def number_type(kind, check, requirement):
    """An argparse type: parse with `kind` (int or float), require check(value), else a usage error.

    number_type(float, lambda v: v > 0, "positive")("-1") -> ArgumentTypeError("-1 is not positive")
    """

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value

    return parse


positive_float = number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
positive_int = number_type(int, lambda v: v >= 1, "a whole number >= 1")
unit_interval = number_type(float, lambda v: 0 <= v < 1, "in [0, 1)")


# --- Timing and the machine ---------------------------------------------------------------


def median_seconds(call, repeats=None, seconds=None):
    """Median wall-clock seconds of call() after one warm-up call -> (median, repeats).

    call() must block until its work is done (JAX: block_until_ready). Either `repeats`
    calls are timed, or as many as fit in about `seconds` (3 to 10,000).
    """
    call()  # warm-up, not counted
    if repeats is None:
        start = time.perf_counter()
        call()
        one = time.perf_counter() - start
        repeats = int(min(10_000, max(3, seconds / max(one, 1e-7))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), repeats


def machine():
    """What the numbers were measured on: CPU model, its flags, cores, memory (Linux; None elsewhere)."""
    info = dict(cpu_model=platform.processor() or None, cpu_flags=None, cpu_count=os.cpu_count(), memory_gb=None)
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)  # the last CPU's, all alike
        info["cpu_model"] = fields.get("model name\t", "").strip() or info["cpu_model"]
        info["cpu_flags"] = fields.get("flags\t\t", "").strip() or None
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
        info["memory_gb"] = round(kib / 2 ** 20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return info


# --- Where results go ---------------------------------------------------------------------


class OutDirError(Exception):
    """An output folder or file cannot be used; the message is one line for the user."""


_created_out_dirs = []  # folders claim_out_dir made: removed at exit if the run left them empty


def claim_out_dir(path, flag="--out"):
    """Create --out, or accept it when empty; refuse a folder that already holds files."""
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


def claim_out_dir_or_exit(path):
    """claim_out_dir, or end the program with one line and exit status 2."""
    try:
        claim_out_dir(path)
    except OutDirError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


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



def _atomic_write(path, write):
    """Call write(file object) on a temporary file beside `path`, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text(path, text):
    _atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_figure(fig, path):
    """Save a matplotlib figure as PNG atomically, then close it."""
    try:
        _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


# --- Plots of one run ----------------------------------------------------------------


def plot_run_curves(records, title, path, loss_note=""):
    """Training loss and train/(val/)test accuracy against epoch, for one run's records.

    loss_note says where the loss is measured when that is not the params themselves
    (Nesterov: at the look-ahead point).
    """
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label="training loss" + loss_note)
    ax_loss.set(xlabel="epoch", ylabel="mean training loss (cross-entropy / 10)", yscale="log")
    ax_loss.legend(fontsize=8)
    for key, label, marker in (("train_accuracy", "train", "o"), ("val_accuracy", "validation", "s"),
                               ("test_accuracy", "test", "^")):
        if all(r.get(key) is not None for r in records):
            ax_acc.plot(epochs, [100 * r[key] for r in records], marker=marker, label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def confusion_matrix(true, predicted, num_classes=10):
    """(N,), (N,) int -> counts (num_classes, num_classes), rows true, columns predicted."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def plot_confusion(true, predicted, title, path):
    """The confusion matrix with its counts written in; the colour is log(1 + count), so that the few
    errors off the diagonal show next to the thousands on it."""
    counts = confusion_matrix(true, predicted)
    fig, ax = plt.subplots(figsize=(6.2, 5))
    image = ax.imshow(np.log1p(counts), cmap="Blues")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = [t for t in (0, 1, 10, 100, 1000) if t <= counts.max()]
    bar.set_ticks(np.log1p(ticks), labels=[str(t) for t in ticks])
    bar.set_label("count (colour: log(1 + count))")
    for i in range(10):
        for j in range(10):
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                    color="white" if i == j else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10), title=title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_misclassified(images, true, predicted, path, max_shown=40):
    """A grid of up to max_shown misclassified images (N, 28, 28), labelled 'true -> predicted'."""
    wrong = np.flatnonzero(true != predicted)[:max_shown]
    cols = 10
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{true[i]} -> {predicted[i]}", fontsize=8)
    fig.suptitle(f"first {len(wrong)} of {int(np.sum(true != predicted))} misclassified test digits "
                 f"(above each: true -> predicted)")
    fig.tight_layout()
    save_figure(fig, path)
