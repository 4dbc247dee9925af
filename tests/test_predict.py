"""predict.py: a trained model measured again on the test set, to the last bit; the digits in image files.

One short real run (1 epoch of Adam on 10,000 images) is trained in this process for the module. The
bad inputs run predict.py as a subprocess, so that the exit status and stderr are a user's; they need
no MNIST, only an untrained model file.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import checkpoint
import mlp_mnist
import mnist_data
import predict
from conftest import ROOT, run_script
from train_utils import LAYER_SIZES, init_params

SEVEN, TWO_LARGE = os.path.join(ROOT, "docs", "digits", "7.png"), os.path.join(ROOT, "docs", "digits", "2-large.png")


@pytest.fixture(scope="module")
def trained_run(mnist_dir, tmp_path_factory):
    """A folder that mlp_mnist.py wrote: 1 epoch of Adam on the first 10,000 training images."""
    out = str(tmp_path_factory.mktemp("predict") / "run")
    mlp_mnist.main(["--optimizer", "adam", "--epochs", "1", "--train-subset", "10000", "--loader", "device",
                    "--data-dir", mnist_dir, "--out", out])
    return out


def last_test_accuracy(run):
    with open(os.path.join(run, "metrics.json")) as f:
        return json.load(f)["epochs"][-1]["test_accuracy"]


def printed_accuracy(out):
    """predict.py's output -> the test accuracy it printed, as a float."""
    (line,) = [line for line in out.splitlines() if line.startswith("test accuracy: ")]
    return float(line.split()[2])


def test_accuracy_equals_metrics_exactly(trained_run, mnist_dir):
    """As a user runs it: predict.py in a process of its own (no jit cache shared with the training)."""
    done = subprocess.run([sys.executable, "predict.py", trained_run, "--data-dir", mnist_dir], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert printed_accuracy(done.stdout) == last_test_accuracy(trained_run) > 0.9
    assert "-> equal" in done.stdout


def test_a_changed_model_fails_the_check(trained_run, mnist_dir, tmp_path, capsys):
    """The negative control: the same metrics.json beside params that differ (one bias of the last layer)."""
    with np.load(os.path.join(trained_run, "model.npz")) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["params/2/1"] = arrays["params/2/1"] + np.eye(10, dtype=np.float32)[0] * 10  # favour the digit 0
    np.savez(tmp_path / "model.npz", **arrays)
    shutil.copy(os.path.join(trained_run, "metrics.json"), tmp_path)
    status, out, err = run_script(predict.main, [str(tmp_path), "--data-dir", mnist_dir], capsys)
    assert status == 4 and "NOT EQUAL" in out
    assert len(err) == 1 and err[0].startswith("error: the test accuracy")
    assert printed_accuracy(out) < last_test_accuracy(trained_run)


def test_a_stopped_run_uses_its_checkpoint(trained_run, mnist_dir, tmp_path, capsys):
    for name in ("checkpoint.npz", "metrics.json"):
        shutil.copy(os.path.join(trained_run, name), tmp_path)
    status, out, err = run_script(predict.main, [str(tmp_path), "--data-dir", mnist_dir], capsys)
    assert status == 0, err
    assert "using checkpoint.npz, the run stopped after epoch 1" in out
    assert printed_accuracy(out) == last_test_accuracy(trained_run)


def test_the_shipped_digits(trained_run, capsys):
    status, out, err = run_script(predict.main, [trained_run, SEVEN, TWO_LARGE], capsys)
    assert status == 0, err
    seven, seven_probs, two, two_probs = out.splitlines()
    assert seven.startswith(f"{SEVEN}: 7 (") and "converted" not in seven
    assert two.startswith(f"{TWO_LARGE}: 2 (") and "converted: RGB 112x112 -> grayscale 28x28" in two
    assert "inverted: dark digit on light background" in two
    for probs in (seven_probs, two_probs):
        percents = [float(field.rstrip("%")) for field in probs.split()[1::2]]
        assert len(percents) == 10 and abs(sum(percents) - 100) < 1


def test_the_printed_probabilities_are_the_softmax_of_the_logits():
    """predict.probabilities (what predict.py prints) against jax.nn.softmax of the logits, on an untrained model
    (no MNIST needed): each row sums to 1, and the most likely digit is the one predicted."""
    params = init_params(jax.random.key(0))
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    h = images.reshape(8, -1).astype(np.float32)
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    logits = h @ params[-1][0] + params[-1][1]
    probs = predict.probabilities(params, images)
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(probs, axis=1), mlp_mnist.predicted_digits(params, images))


def test_the_shipped_digits_are_mnist_test_images_0_and_1(mnist_dir):
    """7.png is test image 0 as it is; converting 2-large.png gives back (nearly) test image 1."""
    _, _, test_set = mnist_data.load_mnist(mnist_dir)
    images, labels = test_set.data.numpy(), test_set.targets.numpy()
    assert list(labels[:2]) == [7, 2]
    seven, note = predict.read_image(SEVEN)
    assert note == "" and np.array_equal(seven, images[0])
    two, note = predict.read_image(TWO_LARGE)
    assert "inverted" in note and np.abs(two.astype(int) - images[1]).mean() < 5


# image written -> (what read_image must say it did, the 28x28 pixels it must give)
DIGIT = np.zeros((28, 28), np.uint8)
DIGIT[6:22, 12:16] = 255  # a light "1" on black
CONVERSIONS = {
    "L 28x28: as it is": (Image.fromarray(DIGIT), "", DIGIT),
    "RGB 28x28, dark background": (Image.fromarray(DIGIT).convert("RGB"), "converted: RGB 28x28 -> grayscale 28x28",
                                   DIGIT),
    "L 56x56, light background": (Image.fromarray(255 - np.kron(DIGIT, np.ones((2, 2), np.uint8))),
                                  "converted: L 56x56 -> grayscale 28x28, inverted: dark digit on light background",
                                  None),
}


@pytest.mark.parametrize("case", CONVERSIONS)
def test_read_image_converts_only_what_is_not_mnist_like(case, tmp_path):
    image, note, pixels = CONVERSIONS[case]
    image.save(tmp_path / "digit.png")
    got, got_note = predict.read_image(str(tmp_path / "digit.png"))
    assert got.shape == (28, 28) and got.dtype == np.uint8 and got_note == note
    if pixels is not None:
        assert np.array_equal(got, pixels)
    assert got[0, 0] < 30 and got[14, 14] > 200  # a light digit on black, whatever it came as


# --- Bad input: one line, exit 2, no traceback (a real process) ------------------------------------


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A folder holding an untrained model.npz: what the bad-input cases need beside their one bad thing."""
    folder = tmp_path_factory.mktemp("untrained")
    params = init_params(jax.random.key(0))
    checkpoint.save(str(folder / "model.npz"), dict(params=params), dict(kind="ML_in_JAX model", epoch=0,
                                                                       layer_sizes=list(LAYER_SIZES)))
    return folder


def no_model(run, tmp):
    return [str(tmp)]


def truncated_model(run, tmp):
    (tmp / "model.npz").write_bytes((run / "model.npz").read_bytes()[:1000])
    return [str(tmp)]


def model_axis(run, tmp):
    """A checkpoint.npz of two models (many_models.py's kind): every params leaf with a leading axis of 2."""
    with np.load(run / "model.npz") as npz:
        arrays = {name: npz[name] if name == checkpoint.META else np.stack([npz[name]] * 2) for name in npz.files}
    np.savez(tmp / "checkpoint.npz", **arrays)
    return [str(tmp)]


def text_png(run, tmp):
    (tmp / "x.png").write_text("not an image\n")
    return [str(run), str(tmp / "x.png")]


def missing_png(run, tmp):
    return [str(run), str(tmp / "missing.png")]


# case -> (argv of predict.py, given the good run folder and an empty folder; words in the error line)
BAD_INPUTS = {
    "a folder with no model": (no_model, "holds no model.npz and no checkpoint.npz"),
    "a truncated model.npz": (truncated_model, "truncated or corrupt"),
    "a checkpoint with a model axis": (model_axis, "(2, 784, 512)"),
    "a text file named x.png": (text_png, "not an image"),
    "a png that does not exist": (missing_png, "no such file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(case, untrained_run, tmp_path):
    make_argv, words = BAD_INPUTS[case]
    empty = tmp_path / "case"
    empty.mkdir()
    done = subprocess.run([sys.executable, "predict.py", *make_argv(untrained_run, empty)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and words in line
