"""Bad input and faults: one clear line, a non-zero exit status, nothing the user had is lost.

Most cases call mlp_mnist.main() in this process (a subprocess costs ~8 s of imports here)
and check what a user would see: the SystemExit status and stderr. The tests at the end run
the real script as a subprocess for the paths that only a process has: the exit status
itself, Ctrl-C, and the absence of a traceback.
"""
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlp_mnist
import mnist_data
from plumbing import cli, files, plots
from conftest import ROOT, config_for, idx_bytes, write_fake_mnist, write_file
from mnist_data import IMAGES_MAGIC, LABELS_MAGIC, DataError

TRAIN_IMAGES, TRAIN_LABELS = mnist_data.SPLIT_FILES["train"]
TEST_IMAGES, TEST_LABELS = mnist_data.SPLIT_FILES["test"]


def run_main(capsys, *argv):
    """mlp_mnist.main(argv) -> (exit status, stderr lines); it must exit, not raise."""
    with pytest.raises(SystemExit) as exit_info:
        mlp_mnist.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_info.value.code, err.strip().splitlines()


# --- Data files ------------------------------------------------------------------------


def truncate(path, n_bytes):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:n_bytes])


def append(path, extra):
    with open(path, "ab") as f:
        f.write(extra)


def swap_images_and_labels(folder):
    a, b = os.path.join(folder, TRAIN_IMAGES), os.path.join(folder, TRAIN_LABELS)
    os.rename(a, a + ".tmp")
    os.rename(b, a)
    os.rename(a + ".tmp", b)


def rewrite_header(path, magic, *dims):
    with open(path, "rb") as f:
        data = f.read()
    payload = data[4 + 4 * len(dims):]
    with open(path, "wb") as f:
        f.write(np.array([magic, *dims], dtype=">u4").tobytes() + payload)


def set_first_label(path, value):
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(bytes([value]))


def p(folder, name):
    return os.path.join(folder, name)


# case -> (what to do to a good raw folder, file named in the message, words in the message)
DATA_CASES = {
    "missing file": (lambda d: os.remove(p(d, TEST_LABELS)), TEST_LABELS, "missing"),
    "empty file": (lambda d: truncate(p(d, TRAIN_LABELS), 0), TRAIN_LABELS, "empty"),
    "images and labels swapped": (swap_images_and_labels, TRAIN_IMAGES, "wrong magic number"),
    "truncated": (lambda d: truncate(p(d, TRAIN_IMAGES), 16 + 299 * 784), TRAIN_IMAGES, "truncated"),
    "truncated header": (lambda d: truncate(p(d, TEST_IMAGES), 10), TEST_IMAGES, "header cut short"),
    "trailing bytes": (lambda d: append(p(d, TEST_IMAGES), b"\0" * 7), TEST_IMAGES, "trailing bytes"),
    "impossible dimensions": (lambda d: rewrite_header(p(d, TRAIN_IMAGES), IMAGES_MAGIC, 300, 0, 28),
                              TRAIN_IMAGES, "impossible dimensions"),
    "zero images": (lambda d: rewrite_header(p(d, TRAIN_IMAGES), IMAGES_MAGIC, 0, 28, 28),
                    TRAIN_IMAGES, "impossible dimensions"),
    "a billion images claimed": (lambda d: rewrite_header(p(d, TRAIN_IMAGES), IMAGES_MAGIC, 10**9, 28, 28),
                                 TRAIN_IMAGES, "truncated"),
    "counts differ": (lambda d: write_file(p(d, TEST_LABELS), idx_bytes(np.zeros(49, np.uint8), LABELS_MAGIC)),
                      TEST_LABELS, "49 labels for the 50 images"),
    "label outside 0-9": (lambda d: set_first_label(p(d, TRAIN_LABELS), 10), TRAIN_LABELS, "outside 0-9"),
    "a folder where a file should be": (lambda d: (os.remove(p(d, TEST_LABELS)), os.mkdir(p(d, TEST_LABELS))),
                                        TEST_LABELS, "folder"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_file(tmp_path, capsys, case):
    change, file_name, words = DATA_CASES[case]
    write_fake_mnist(tmp_path)
    change(str(tmp_path))
    status, lines = run_main(capsys, "--data-dir", str(tmp_path), "--epochs", "1")
    assert status == 2
    assert len(lines) == 1 and file_name in lines[0] and words in lines[0], lines


def gz_path(folder, name):
    return os.path.join(folder, name + ".gz")


GZ_CASES = {
    "not gzip at all": (lambda d: write_file(gz_path(d, TRAIN_IMAGES), b"this is not gzip" * 100),
                        TRAIN_IMAGES, "not a valid gzip file"),
    "gzip cut short": (lambda d: truncate(gz_path(d, TRAIN_IMAGES), 2000), TRAIN_IMAGES, "cut short"),
    "gzip of a truncated file": (lambda d: write_file(gz_path(d, TRAIN_LABELS),
                                                      idx_bytes(np.zeros(300, np.uint8), LABELS_MAGIC)[:-5],
                                                      gz=True), TRAIN_LABELS, "truncated"),
    "gzip with trailing bytes": (lambda d: write_file(gz_path(d, TRAIN_LABELS),
                                                      idx_bytes(np.zeros(300, np.uint8), LABELS_MAGIC) + b"x",
                                                      gz=True), TRAIN_LABELS, "trailing bytes"),
    "gzip claiming a billion images": (lambda d: write_file(gz_path(d, TRAIN_IMAGES),
                                                            np.array([IMAGES_MAGIC, 10**9, 28, 28], ">u4").tobytes()
                                                            + bytes(784 * 5), gz=True), TRAIN_IMAGES, "truncated"),
}


@pytest.mark.parametrize("case", sorted(GZ_CASES))
def test_bad_gzip_file(tmp_path, capsys, case):
    change, file_name, words = GZ_CASES[case]
    write_fake_mnist(tmp_path, gz=True)
    change(str(tmp_path))
    status, lines = run_main(capsys, "--data-dir", str(tmp_path), "--epochs", "1")
    assert status == 2
    assert len(lines) == 1 and file_name in lines[0] and words in lines[0], lines


def test_unreadable_file(tmp_path, capsys, monkeypatch):
    write_fake_mnist(tmp_path)
    path = p(str(tmp_path), TRAIN_LABELS)
    os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads anything: make open() answer as it would for a user
        real_open = open

        def open_as_user(file, *args, **kwargs):
            if os.fspath(file) == path:
                raise PermissionError(13, "Permission denied", path)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("builtins.open", open_as_user)
    status, lines = run_main(capsys, "--data-dir", str(tmp_path), "--epochs", "1")
    assert status == 2
    assert len(lines) == 1 and TRAIN_LABELS in lines[0] and "Permission denied" in lines[0], lines


def test_data_dir_is_a_file(tmp_path, capsys):
    not_a_folder = tmp_path / "mnist.tar"
    not_a_folder.write_bytes(b"x")
    status, lines = run_main(capsys, "--data-dir", str(not_a_folder), "--epochs", "1")
    assert status == 2 and len(lines) == 1
    assert "--data-dir" in lines[0] and "not a folder" in lines[0]


def test_huge_header_does_not_allocate(tmp_path):
    """A header claiming 10^9 images costs no more memory than the file really holds."""
    raw = write_file(tmp_path / "raw", np.array([IMAGES_MAGIC, 10**9, 28, 28], ">u4").tobytes() + bytes(784))
    gz = write_file(tmp_path / "big.gz", np.array([IMAGES_MAGIC, 10**9, 28, 28], ">u4").tobytes()
                    + bytes(3 * 784 * 1000), gz=True)
    for path in (raw, gz):
        tracemalloc.start()
        with pytest.raises(DataError, match="truncated"):
            mnist_data.read_images(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 * 2**20, f"{path}: peak {peak} bytes"


# Property-based: any bytes, any header -> correct arrays or DataError, never anything else.


@st.composite
def idx_files(draw):
    """(file bytes, gz?) built from a valid file, then maybe mutated."""
    labels = draw(st.booleans())
    n = draw(st.integers(1, 4))
    dims = [n] if labels else [n, 28, 28]
    payload = draw(st.binary(min_size=n * int(np.prod(dims[1:], dtype=int)),
                             max_size=n * int(np.prod(dims[1:], dtype=int))))
    header = np.array([LABELS_MAGIC if labels else IMAGES_MAGIC, *dims], ">u4").tobytes()
    content = header + payload
    mutation = draw(st.sampled_from(["none", "header", "cut", "extend", "flip", "random"]))
    if mutation == "header":  # any magic and dimensions, huge ones included
        words = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4))
        content = np.array(words, ">u4").tobytes() + payload
    elif mutation == "cut":
        content = content[: draw(st.integers(0, len(content)))]
    elif mutation == "extend":
        content = content + draw(st.binary(min_size=1, max_size=50))
    elif mutation == "flip":
        i = draw(st.integers(0, len(content) - 1))
        content = content[:i] + bytes([content[i] ^ draw(st.integers(1, 255))]) + content[i + 1:]
    elif mutation == "random":
        content = draw(st.binary(max_size=200))
    return labels, content, draw(st.booleans())


def expected_array(labels, content):
    """What a correct reader returns for these bytes, or None when they are not a valid file."""
    ndim = 1 if labels else 3
    if len(content) < 4 + 4 * ndim:
        return None
    words = np.frombuffer(content[: 4 + 4 * ndim], ">u4")
    if words[0] != (LABELS_MAGIC if labels else IMAGES_MAGIC) or words[1] == 0:
        return None
    if not labels and (words[2], words[3]) != (28, 28):
        return None
    payload = np.frombuffer(content[4 + 4 * ndim:], np.uint8)
    if payload.size != int(np.prod(words[1:].astype(np.int64))):
        return None
    if labels and payload.max() > 9:
        return None
    return payload.reshape(words[1:].astype(np.int64))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(idx_files())
def test_idx_reader_on_random_and_mutated_files(tmp_path, case):
    labels, content, gz = case
    path = write_file(tmp_path / ("f.gz" if gz else "f"), content, gz=gz)
    expected = expected_array(labels, content)
    tracemalloc.start()
    try:
        result = (mnist_data.read_labels if labels else mnist_data.read_images)(path)
    except DataError as err:
        assert expected is None, f"rejected a valid file: {err}"
    else:
        assert expected is not None, "accepted an invalid file"
        np.testing.assert_array_equal(result, expected)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * len(content) + 4 * 2**20  # the file's size, plus one read chunk and change


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_gz_reader_on_random_bytes(tmp_path, junk):
    path = write_file(tmp_path / "junk.gz", junk)  # not gzip-compressed: any bytes in a .gz name
    with pytest.raises(DataError):
        mnist_data.read_images(path)


# --- Arguments -------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "fast"),
    ("--epochs", "0"), ("--epochs", "2.5"), ("--batch-size", "0"), ("--train-subset", "0"),
    ("--mu", "1"), ("--mu", "-0.1"), ("--rho", "1.0"), ("--beta1", "1"), ("--beta2", "1.5"),
    ("--eps", "0"), ("--eps", "-1e-8"), ("--optimizer", "adagrad"),
]


@pytest.mark.parametrize("flag,value", BAD_ARGUMENTS)
def test_bad_argument(capsys, flag, value):
    status, lines = run_main(capsys, flag, value)
    assert status == 2
    assert lines[0].startswith("usage:") and f"argument {flag}" in lines[-1], lines


@pytest.mark.parametrize("optimizer, flag", [("sgd", "--mu"), ("adam", "--mu"), ("momentum", "--eps"),
                                             ("rmsprop", "--beta1")])
def test_a_hyperparameter_the_optimizer_does_not_take(capsys, optimizer, flag):
    """--optimizer adam --mu 0.5 used to run Adam and record mu; now: a usage error that names what adam takes."""
    status, lines = run_main(capsys, "--optimizer", optimizer, flag, "0.5")
    assert status == 2 and lines[0].startswith("usage:")
    assert f"argument {flag}: {optimizer} takes no {flag[2:]} (it takes lr" in lines[-1], lines


def test_batch_larger_than_training_set(tmp_path, capsys):
    write_fake_mnist(tmp_path, n_train=300)
    status, lines = run_main(capsys, "--data-dir", str(tmp_path), "--batch-size", "128", "--train-subset", "100")
    assert status == 2 and "argument --batch-size" in lines[-1] and "100 training images" in lines[-1]


# --- Outputs -----------------------------------------------------------------------------


def test_out_folder_with_earlier_results_is_refused(tmp_path, capsys):
    write_fake_mnist(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier results")
    status, lines = run_main(capsys, "--data-dir", str(tmp_path / "data"), "--out", str(out))
    assert status == 2 and len(lines) == 1 and "--out" in lines[0] and "metrics.json" in lines[0]
    assert (out / "metrics.json").read_text() == "earlier results"
    assert os.listdir(out) == ["metrics.json"]


def test_out_is_a_file(tmp_path, capsys):
    write_fake_mnist(tmp_path)
    (tmp_path / "out").write_text("keep me")
    status, lines = run_main(capsys, "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert status == 2 and "--out" in lines[0] and (tmp_path / "out").read_text() == "keep me"


def test_failed_write_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"epochs": [1, 2]})

    def fail_halfway(f):
        f.write(b'{"epochs": [1, 2, 3')
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(str(path), fail_halfway)
    assert json.loads(path.read_text())["epochs"] == [1, 2]
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left behind


def test_failed_plot_keeps_the_metrics(tmp_path, capsys, monkeypatch):
    """A disk that fills up (or a folder that turns read-only) after training: one line, exit 2,
    and metrics.json, written before the plots, stays."""
    write_fake_mnist(tmp_path / "data")
    out = tmp_path / "out"

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_confusion", disk_full)
    status, lines = run_main(capsys, "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--out", str(out))
    assert status == 2 and len(lines) == 1
    assert "No space left on device" in lines[0] and "metrics.json" in lines[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["completed_epochs"] == 1


def test_divergence_keeps_the_completed_epochs(tmp_path, monkeypatch):
    """The loop's bookkeeping: a NaN loss in epoch 2 stops the run with epoch 1 kept."""
    write_fake_mnist(tmp_path, n_train=256)
    train_set, _, test_set = mnist_data.load_mnist(str(tmp_path))
    real_step, calls = mlp_mnist.train_step, []

    class NaNFromStep3:  # 256 images in batches of 128: step 3 opens epoch 2
        lower = real_step.lower

        def __call__(self, *args, **kwargs):
            params, opt_state, batch_loss = real_step(*args, **kwargs)
            calls.append(1)
            return params, opt_state, batch_loss * (np.nan if len(calls) >= 3 else 1)

    monkeypatch.setattr(mlp_mnist, "train_step", NaNFromStep3())
    saved = []
    run = mlp_mnist.train(config_for("sgd", epochs=5), train_set, test_set,
                          on_epoch=lambda run: saved.append(list(run["records"])), log=lambda line: None)
    assert run["status"] == "diverged in epoch 2"
    assert [r["epoch"] for r in run["records"]] == [1] and saved[-1] == run["records"]


def test_disk_error_while_writing_metrics(tmp_path, capsys, monkeypatch):
    """metrics.json cannot be written (disk full): one line that says so and what is kept, exit 2."""
    write_fake_mnist(tmp_path / "data")
    out = tmp_path / "out"

    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_json", disk_full)
    status, lines = run_main(capsys, "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--out", str(out))
    assert status == 2 and len(lines) == 1
    assert "metrics.json" in lines[0] and "No space left on device" in lines[0]
    assert "checkpoint.npz holds the finished epochs" in lines[0]  # written before metrics.json, atomically
    assert os.listdir(out) == ["checkpoint.npz"]


def test_disk_error_while_writing_the_summary(tmp_path, capsys, monkeypatch):
    import compare_optimizers

    write_fake_mnist(tmp_path / "data")

    def no_permission(path, obj):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "write_json", no_permission)
    with pytest.raises(SystemExit) as exit_info:
        compare_optimizers.main(["--configs", "sgd", "--seeds", "0", "--epochs", "1", "--data-dir",
                                 str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "Permission denied" in lines[0]


def test_ctrl_c_during_a_runs_setup_keeps_the_completed_runs(tmp_path, capsys, monkeypatch):
    """compare_optimizers.py: Ctrl-C while the second run initialises its parameters (before its
    epochs start) still writes the first, completed run; the message counts it right."""
    import compare_optimizers

    write_fake_mnist(tmp_path / "data")
    real_init, calls = mlp_mnist.init_params, []

    def interrupted_second_time(key):
        if isinstance(key, jax.core.Tracer):  # jax.eval_shape's look at the shapes, not a model made
            return real_init(key)
        calls.append(key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_init(key)

    monkeypatch.setattr(mlp_mnist, "init_params", interrupted_second_time)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        compare_optimizers.main(["--configs", "sgd", "--seeds", "0", "1", "--epochs", "1", "--data-dir",
                                 str(tmp_path / "data"), "--out", str(out)])
    assert exit_info.value.code == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert [(r["seed"], r["status"], len(r["records"])) for r in summary["runs"]] == [
        (0, "completed", 1), (1, "interrupted", 0)]
    assert "holds the 1 completed runs" in capsys.readouterr().err


def test_an_out_folder_that_holds_files_is_kept(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    files.claim_out_dir(str(tmp_path / "made" / "deep"))
    files.claim_out_dir(str(kept))  # existed, empty: accepted, and not ours to remove
    (tmp_path / "made" / "deep" / "metrics.json").write_text("{}")
    files.remove_unused_out_dirs()
    assert (tmp_path / "made" / "deep" / "metrics.json").exists() and kept.exists()


def test_the_default_out_folder_never_collides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(files, "RUNS_DIR", "runs")
    assert files.default_out_dir("paths") == os.path.join("runs", "paths")
    os.makedirs("runs/paths")
    assert files.default_out_dir("paths") == os.path.join("runs", "paths")  # empty: usable
    open("runs/paths/paths.png", "w").close()
    assert files.default_out_dir("paths") == os.path.join("runs", "paths-2")


# --- As a user runs it: subprocesses -------------------------------------------------


# Runs a script with Ctrl-C raising KeyboardInterrupt even when this process was started with SIGINT
# ignored (a job that a non-interactive shell puts in the background inherits SIG_IGN; POSIX).
WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def script(*args, ctrl_c=False, **kwargs):
    prefix = [sys.executable, "-c", WITH_CTRL_C] if ctrl_c else [sys.executable]
    return subprocess.Popen([*prefix, os.path.join(ROOT, "mlp_mnist.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, out, err.strip().splitlines()


def test_subprocess_bad_file_exits_2(tmp_path):
    write_fake_mnist(tmp_path)
    truncate(p(str(tmp_path), TRAIN_IMAGES), 1000)
    status, _, lines = finish(script("--data-dir", str(tmp_path)))
    assert status == 2 and len(lines) == 1 and TRAIN_IMAGES in lines[0] and "truncated" in lines[0]


@pytest.mark.parametrize("loader", cli.LOADERS)
def test_divergence_exits_3(mnist_dir, tmp_path, capsys, loader):
    """SGD at lr 1 on the real images blows up in epoch 1: status 3, one line, metrics.json (and the log) keep
    the run's settings and say so; no plots."""
    out = tmp_path / "out"
    status, lines = run_main(capsys, "--optimizer", "sgd", "--lr", "1", "--train-subset", "6000", "--loader", loader,
                             "--data-dir", mnist_dir, "--out", str(out))
    assert status == 3 and len(lines) == 1
    assert "diverged in epoch 1" in lines[0] and "smaller --lr" in lines[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged in epoch 1" and metrics["completed_epochs"] == 0
    assert sorted(os.listdir(out)) == ["log.txt", "metrics.json"]


def test_subprocess_ctrl_c_saves_completed_epochs(mnist_dir, tmp_path):
    """The real signal, to a real process (tests/test_contract.py raises KeyboardInterrupt in-process for every
    script)."""
    out = tmp_path / "out"
    proc = script("--optimizer", "adam", "--epochs", "1000", "--train-subset", "10000", "--data-dir", mnist_dir,
                  "--out", str(out), ctrl_c=True)
    deadline = time.time() + 240
    while not (out / "metrics.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "metrics.json").exists(), "no epoch finished in time"
    proc.send_signal(signal.SIGINT)
    status, stdout, lines = finish(proc)
    assert status == 130
    assert "interrupted" in lines[-1] and "metrics.json" in lines[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["completed_epochs"] >= 1
    assert len(metrics["epochs"]) == metrics["completed_epochs"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
