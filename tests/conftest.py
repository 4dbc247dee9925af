"""Shared test setup: the repository root on sys.path, and where the real MNIST files are.

The real-data tests look for MNIST where the scripts do: $MNIST_DATA_DIR, else ./data
(torchvision's ./data/MNIST/raw/ included); when neither holds it, torchvision downloads it
into ./data, as a first run of mlp_mnist.py does. Only when that fails too (offline, no
files) are those tests skipped, and never under CI=true, where missing data is a failure.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mnist_data  # noqa: E402


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


@pytest.fixture(scope="session")
def mnist_dir():
    """The folder of the real MNIST files (see the module docstring)."""
    return real_mnist_or_skip(os.environ, ROOT)
