"""Shared test setup: the repository root on sys.path, where the real MNIST files are, small fake MNIST
folders, and the helpers several test modules use (test modules never import one another).

The real-data tests look for MNIST where the scripts do: $MNIST_DATA_DIR, else ./data
(torchvision's ./data/MNIST/raw/ included); when neither holds it, torchvision downloads it
into ./data, as a first run of mlp_mnist.py does. Only when that fails too (offline, no
files) are those tests skipped, and never under CI=true, where missing data is a failure.
"""
import gzip
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mnist_data  # noqa: E402
import reporting  # noqa: E402
from mnist_data import IMAGES_MAGIC, LABELS_MAGIC  # noqa: E402


def find_real_mnist(environ, root):
    """-> (folder holding the four MNIST files, None) or (None, why they could not be had).

    environ: the environment ($MNIST_DATA_DIR); root: the repository, whose ./data is the
    scripts' default. A folder with some of the files but not all raises DataError: a broken
    download is a problem to fix, not a reason to skip.
    """
    data_dir = environ.get("MNIST_DATA_DIR") or os.path.join(root, "data")
    try:
        mnist_data.locate_mnist(data_dir)  # downloads into data_dir/MNIST/raw when nothing is there
    except mnist_data.DataError as err:
        if mnist_data.find_mnist_files(data_dir):
            raise
        return None, str(err)
    return data_dir, None


def real_mnist_or_skip(environ, root):
    """find_real_mnist, or skip the test that needs it; under CI=true, fail it instead."""
    path, why = find_real_mnist(environ, root)
    if path is None:
        message = (f"real MNIST unavailable: {why}. Run `python mlp_mnist.py` once online (it downloads "
                   f"into ./data), or set MNIST_DATA_DIR")
        if environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def default_out_in_tmp(tmp_path, monkeypatch):
    """A script run without --out writes into runs/ of a temporary folder, never into the repository's."""
    monkeypatch.setattr(reporting, "RUNS_DIR", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def mnist_dir():
    """The folder of the real MNIST files (see the module docstring)."""
    return real_mnist_or_skip(os.environ, ROOT)


# --- Small fake MNIST folders -----------------------------------------------------------------


def idx_bytes(array, magic):
    """The IDX encoding of a uint8 array: magic, big-endian dimensions, then the bytes."""
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_file(path, content, gz=False):
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(content)
    return str(path)


def write_fake_mnist(folder, n_train=300, n_test=50, gz=False, dotted=False, seed=0):
    """The four IDX files in `folder`, random images and labels; -> {split: (images, labels)} written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    content = {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
               for split, n in (("train", n_train), ("test", n_test))}
    for split, (image_name, label_name) in mnist_data.SPLIT_FILES.items():
        images, labels = content[split]
        for name, array, magic in ((image_name, images, IMAGES_MAGIC), (label_name, labels, LABELS_MAGIC)):
            file_name = name.replace("-idx", ".idx") if dotted else name
            write_file(os.path.join(folder, file_name + (".gz" if gz else "")), idx_bytes(array, magic), gz)
    return content


@pytest.fixture(scope="session")
def fake_dir(tmp_path_factory):
    """A folder of fake MNIST: 300 training images (batches of 128, 128 and 44) and 50 test images."""
    folder = tmp_path_factory.mktemp("fake-mnist")
    write_fake_mnist(folder)
    return str(folder)


@pytest.fixture(scope="session")
def fake_data(fake_dir):
    """fake_dir's (train, validation None, test) datasets."""
    return mnist_data.load_mnist(fake_dir)


# --- The optimizers' references ------------------------------------------------------------------

LR = 0.01
HYPER = dict(mu=0.9, rho=0.9, beta1=0.9, beta2=0.999, eps=1e-8)


def optax_reference(name, lr=LR, hyper=HYPER):
    """The optax transformation that must follow the same trajectory as our optimizer `name`."""
    import optax

    return {"sgd": lambda: optax.sgd(lr),
            "momentum": lambda: optax.sgd(lr, momentum=hyper["mu"]),
            "nesterov": lambda: optax.sgd(lr, momentum=hyper["mu"], nesterov=True),
            "rmsprop": lambda: optax.rmsprop(lr, decay=hyper["rho"], eps=hyper["eps"], eps_in_sqrt=False),
            "adam": lambda: optax.adam(lr, b1=hyper["beta1"], b2=hyper["beta2"], eps=hyper["eps"])}[name]()


def takes(name, hyper=HYPER):
    """The hyperparameters of HYPER that optimizer `name` takes."""
    from optimized_sgd import hyperparameters

    return {key: value for key, value in hyper.items() if key in hyperparameters(name)}


# --- Runs and scripts ----------------------------------------------------------------------------


def config_for(optimizer="sgd", epochs=2, **overrides):
    """mlp_mnist's configuration for a run: its defaults (the optimizer's own hyperparameters), then `overrides`."""
    import mlp_mnist

    parser = mlp_mnist.build_parser()
    config = reporting.resolve_hyperparameters(parser, vars(parser.parse_args(
        ["--optimizer", optimizer, "--epochs", str(epochs)])))
    return dict(config, **overrides)


def without_seconds(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def run_script(main, argv, capsys):
    """reporting.run_script(main, argv), as a script's __main__ runs it -> (exit status, stdout, stderr lines).

    It must end with SystemExit or return (status 0), never raise anything else."""
    try:
        reporting.run_script(main, list(argv))
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code or 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err.strip().splitlines()


def offline_env():
    """This process's environment with the network unreachable for urllib (torchvision's download)."""
    return dict(os.environ, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
                HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")


def characteristic_polynomial(name, lr, mu, h):
    """The coefficients (highest power first) of the polynomial whose roots are the factors by which one step of
    gd ("sgd"), heavy ball ("momentum") or "nesterov" multiplies the error along a direction of curvature h
    (docs/02-optimizers.md derives them)."""
    shrink = 1 - lr * h  # what one plain gradient step does along that direction
    return {"sgd": [1, -shrink],
            "momentum": [1, -(1 + mu - lr * h), mu],
            "nesterov": [1, -(1 + mu) * shrink, mu * shrink]}[name]
