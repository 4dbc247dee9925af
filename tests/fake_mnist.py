"""Writing small IDX files and MNIST folders for the tests."""
import gzip
import os
import struct

import numpy as np

import mnist_data
from mnist_data import IMAGES_MAGIC, LABELS_MAGIC


def idx_bytes(array, magic):
    """The IDX encoding of a uint8 array: magic, big-endian dimensions, then the bytes."""
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_file(path, content, gz=False):
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(content)
    return str(path)


def fake_split(rng, n):
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_fake_mnist(folder, n_train=300, n_test=50, gz=False, dotted=False, seed=0):
    """The four files in `folder`, small; -> {split: (images, labels)} of what was written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    content = {"train": fake_split(rng, n_train), "test": fake_split(rng, n_test)}
    for split, (image_name, label_name) in mnist_data.SPLIT_FILES.items():
        images, labels = content[split]
        for name, array, magic in ((image_name, images, IMAGES_MAGIC), (label_name, labels, LABELS_MAGIC)):
            file_name = name.replace("-idx", ".idx") if dotted else name
            write_file(os.path.join(folder, file_name + (".gz" if gz else "")), idx_bytes(array, magic), gz)
    return content
