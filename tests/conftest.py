"""Shared test setup: the repository root on sys.path, and where the real MNIST files are."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST files: $MNIST_DATA_DIR, else ../shared/datasets/mnist beside the repository."""
    path = os.environ.get("MNIST_DATA_DIR") or os.path.join(ROOT, "..", "shared", "datasets", "mnist")
    assert os.path.isdir(path), f"MNIST files not found at {path}: set MNIST_DATA_DIR"
    return path
