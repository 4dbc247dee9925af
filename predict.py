"""Use a trained model: measure it on the MNIST test set again, or read the digits in your own images.

    python predict.py runs/mlp_mnist                                        # its test accuracy, checked
    python predict.py runs/mlp_mnist docs/digits/7.png docs/digits/2-large.png   # the digit in each image

RUN is a folder that mlp_mnist.py wrote: its model.npz, or, for a run that stopped early, its
checkpoint.npz (the params after its last finished epoch). Without images the model is evaluated
on the 10,000 test images exactly as training evaluated it (the same jitted predicted_digits, the
same chunks), so the accuracy must equal the one in metrics.json to the last bit; else exit 4.
A 28x28 grayscale image is used as it is, like MNIST's; any other is converted to grayscale and
resized to 28x28, and inverted when its background is light: the model has only seen light
digits on black. Exit status: 0 done, 2 bad input, 4 the accuracy differs from metrics.json.
"""
import argparse
import os

import jax
import numpy as np
from PIL import Image

import checkpoint
import mlp_mnist
import mnist_data
from plumbing import cli, exits, files, provenance
from train_utils import batched_predict, inputs_from_uint8


def load_params(run):
    """A run folder -> its params [(w, b), ...] on the device; says so when they come from checkpoint.npz."""
    if not os.path.isdir(run):
        exits.fail(f"{run}: no such folder")
    name = "model.npz" if os.path.exists(os.path.join(run, "model.npz")) else "checkpoint.npz"
    if not os.path.exists(os.path.join(run, name)):
        exits.fail(f"{run}: holds no model.npz and no checkpoint.npz (a folder that mlp_mnist.py wrote?)")
    try:
        params, meta = checkpoint.load_model(os.path.join(run, name))
    except checkpoint.CheckpointError as err:
        exits.fail(err)
    if name == "checkpoint.npz":
        print(f"{run} has no model.npz: using checkpoint.npz, the run stopped after epoch {meta['epoch']}")
    return jax.device_put(params), meta.get("epoch")


def measured_accuracy(params, test_set):
    """params, the MNIST test set -> the fraction of its images predicted right, as training measures it."""
    images = jax.device_put(test_set.data.numpy())  # uint8 (10000, 28, 28) on the device, as in training
    predicted = mlp_mnist.predict_all(mlp_mnist.predicted_digits, params, images)  # (10000,)
    return float(np.mean(predicted == test_set.targets.numpy()))


def recorded_accuracy(run, epoch):
    """-> the test_accuracy that metrics.json recorded for `epoch` (None: its last), or None when it has none."""
    metrics = files.read_json_or_none(os.path.join(run, "metrics.json")) or {}
    records = [r for r in metrics.get("epochs", []) if isinstance(r, dict) and epoch in (None, r.get("epoch"))]
    return records[-1].get("test_accuracy") if records else None


def read_image(path):
    """An image file -> (uint8 (28, 28), light digit on dark, what was done to it: "" for nothing)."""
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        exits.fail(f"{path}: no such file")
    except OSError as err:  # PIL.UnidentifiedImageError (not an image), a truncated file, a folder, ...
        exits.fail(f"{path}: not an image that PIL can read ({err})")
    if image.mode == "L" and image.size == (28, 28):
        return np.asarray(image), ""
    pixels = np.asarray(image.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    note = f"converted: {image.mode} {image.width}x{image.height} -> grayscale 28x28"
    if light_background(pixels):
        pixels, note = 255 - pixels, note + ", inverted: dark digit on light background"
    return pixels, note


def light_background(pixels):
    """uint8 (28, 28) -> whether the mean of its border pixels is above 127."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return border.mean() > 127


def probabilities(params, images):
    """uint8 (B, 28, 28) -> the model's probabilities of the ten digits (B, 10)."""
    return np.exp(np.asarray(batched_predict(params, inputs_from_uint8(images))))


def evaluate(run, params, epoch, data_dir):
    """Print the test accuracy beside metrics.json's; exit 4 when they differ."""
    try:
        _, _, test_set = mnist_data.load_mnist(data_dir)
    except mnist_data.DataError as err:
        exits.fail(err)
    measured, recorded = measured_accuracy(params, test_set), recorded_accuracy(run, epoch)
    print(f"test accuracy: {measured!r} ({round(measured * len(test_set))} of {len(test_set)} test images)")
    if recorded is None:
        print(f"metrics.json: no test accuracy recorded for epoch {epoch}, nothing to check against")
        return
    print(f"metrics.json, epoch {epoch}: {recorded!r} -> {'equal' if measured == recorded else 'NOT EQUAL'}")
    if measured != recorded:
        exits.fail(f"the test accuracy {measured!r} is not metrics.json's {recorded!r}: not the model that run "
                   f"evaluated, or not evaluated the same way", exits.EXIT_CHECK_FAILED)


def build_parser():
    p = argparse.ArgumentParser(
        description="Evaluate a trained MLP on the MNIST test set, or predict the digit in image files.",
        epilog="Exit status: 0 done, 2 bad input, 4 the test accuracy differs from metrics.json.")
    p.add_argument("run", metavar="RUN", help="a folder that mlp_mnist.py wrote (model.npz or checkpoint.npz)")
    p.add_argument("images", metavar="IMAGE", nargs="*",
                   help="image files (PNG, ...) to read a digit from (default: none, evaluate on the test set)")
    cli.add_flags(p, "--data-dir")
    return p


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    args = build_parser().parse_args(argv)
    params, epoch = load_params(args.run)
    if not args.images:
        return evaluate(args.run, params, epoch, args.data_dir)
    images, notes = zip(*[read_image(path) for path in args.images])
    digits = np.asarray(mlp_mnist.predicted_digits(params, np.stack(images)))
    for path, digit, probs, note in zip(args.images, digits, probabilities(params, np.stack(images)), notes):
        print(f"{path}: {digit} ({100 * probs[digit]:.1f}%)" + (f"  ({note})" if note else ""))
        print("  " + "  ".join(f"{d}: {100 * p:.1f}%" for d, p in enumerate(probs)))


if __name__ == "__main__":
    exits.run_script(main)
