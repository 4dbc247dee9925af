"""MNIST from a folder of IDX files, through a torch Dataset and DataLoader, or on the JAX device (on_device).

The folder (--data-dir) holds the four IDX files, gzipped or not, named either
`train-images-idx3-ubyte` or `train-images.idx3-ubyte` (likewise the other three); the
layout torchvision downloads into, DIR/MNIST/raw/, is searched too. The folder is only
ever read: .gz files are decompressed in memory, nothing is extracted, so a read-only
folder works. Only when none of the four files is there
does torchvision download them (into DIR/MNIST/raw/).

Every file is checked before it is trusted (magic number, dimensions, size against the
header, label range); any problem raises DataError, whose message names the file.
Memory stays bounded by the real size of the data, whatever a header claims. The files are
read by this module's own reader into a small torch Dataset of uint8 tensors; torchvision
is used only through its public MNIST class, to download the files on a first run.
"""
import gzip
import os
import struct
import zlib
from typing import NamedTuple

import jax
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
IMAGES_MAGIC = 0x00000803  # IDX: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 0x00000801  # IDX: unsigned bytes, 1 dimension (count)
SPLIT_FILES = {  # split -> (images file, labels file), as torchvision names them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = [name for pair in SPLIT_FILES.values() for name in pair]
READ_CHUNK = 1 << 20  # read 1 MiB at a time: never allocate what a header merely claims


class DataError(Exception):
    """A problem with the MNIST files, meant to be shown to the user as one line."""


def default_data_dir():
    """$MNIST_DATA_DIR when set, else ./data."""
    return os.environ.get("MNIST_DATA_DIR") or "data"


# --- Reading one IDX file ------------------------------------------------------------


def _describe_magic(magic):
    known = {IMAGES_MAGIC: "an image file", LABELS_MAGIC: "a label file"}
    return f"0x{magic:08X} ({known.get(magic, 'not an MNIST IDX file')})"


def _read_at_most(stream, limit):
    """Read up to `limit` bytes in READ_CHUNK pieces (memory follows the data, not `limit`)."""
    pieces, remaining = [], limit
    while remaining > 0:
        piece = stream.read(min(READ_CHUNK, remaining))
        if not piece:
            break
        pieces.append(piece)
        remaining -= len(piece)
    return b"".join(pieces)


def read_idx(path, magic, item_shape):
    """Read an unsigned-byte IDX file -> uint8 array (count, *item_shape), fully checked."""
    ndim = 1 + len(item_shape)
    header_size = 4 + 4 * ndim
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty")
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
            header = _read_at_most(stream, header_size)
            if len(header) < 4:
                raise DataError(f"{path}: too short to hold an IDX header ({len(header)} bytes)")
            (found_magic,) = struct.unpack(">I", header[:4])
            if found_magic != magic:
                raise DataError(f"{path}: wrong magic number {_describe_magic(found_magic)}, "
                                f"expected {_describe_magic(magic)}")
            if len(header) < header_size:
                raise DataError(f"{path}: header cut short ({len(header)} of {header_size} bytes)")
            dims = struct.unpack(f">{ndim}I", header[4:])
            if dims[0] == 0 or tuple(dims[1:]) != tuple(item_shape):
                want = "x".join(["N"] + [str(d) for d in item_shape])
                raise DataError(f"{path}: impossible dimensions {'x'.join(map(str, dims))} "
                                f"in the header (expected {want} with N >= 1)")
            payload_size = int(np.prod(dims, dtype=np.int64))
            if stream is raw:  # an uncompressed file: check its size before reading anything
                actual = os.path.getsize(path) - header_size
                if actual != payload_size:
                    raise DataError(_size_message(path, actual, payload_size))
            payload = _read_at_most(stream, payload_size + 1)  # one extra byte detects trailing data
            if len(payload) != payload_size:
                raise DataError(_size_message(path, len(payload), payload_size))
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path}: not a valid gzip file ({err})") from None
    except EOFError:
        raise DataError(f"{path}: the gzip stream is cut short (incomplete download?)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _size_message(path, actual, promised):
    what = "truncated" if actual < promised else "has trailing bytes"
    return f"{path}: {what}: {actual} bytes of data after the header, which promises {promised}"


def read_images(path):
    """IDX image file -> uint8 array (N, 28, 28)."""
    return read_idx(path, IMAGES_MAGIC, IMAGE_SHAPE)


def read_labels(path):
    """IDX label file -> uint8 array (N,), every label checked to be 0-9."""
    labels = read_idx(path, LABELS_MAGIC, ())
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{path}: label {labels[bad]} at index {bad} is outside 0-9")
    return labels


# --- Finding the four files ----------------------------------------------------------


def _candidates(folder, name):
    """The names one file may go by: raw first (fastest), then gzipped; both styles."""
    dotted = name.replace("-idx", ".idx")  # train-images-idx3-ubyte -> train-images.idx3-ubyte
    for base in (name, dotted):
        for suffix in ("", ".gz"):
            yield os.path.join(folder, base + suffix)


def find_mnist_files(data_dir):
    """data_dir -> {torchvision file name: path found}, for the files present (maybe none)."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir}: is a file, not a folder")
    found = {}
    for folder in (data_dir, os.path.join(data_dir, "MNIST", "raw")):
        for name in ALL_FILES:
            if not found.get(name):
                found[name] = next((p for p in _candidates(folder, name) if os.path.lexists(p)), None)
    return {name: path for name, path in found.items() if path}


def _missing_message(data_dir, reason):
    names = ", ".join(f"{name}[.gz]" for name in ALL_FILES)
    return (f"MNIST not found in {data_dir} ({reason}): put the four IDX files {names} "
            f"there, or point --data-dir (or $MNIST_DATA_DIR) at the folder that holds them")


def locate_mnist(data_dir, download=True):
    """The four files' paths in data_dir; when none is there, let torchvision download them."""
    found = find_mnist_files(data_dir)
    if not found and download:
        created = [d for d in (data_dir, os.path.join(data_dir, "MNIST"),
                               os.path.join(data_dir, "MNIST", "raw")) if not os.path.exists(d)]
        try:  # torchvision writes into data_dir/MNIST/raw/ (and leaves the .gz beside the raw files)
            torchvision.datasets.MNIST(data_dir, train=True, download=True)
        except Exception as err:  # no network, read-only folder, ...: all end the same way
            for folder in reversed(created):  # take back the empty folders the attempt made
                if os.path.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)
            lines = [line for line in str(err).splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else type(err).__name__
            raise DataError(_missing_message(data_dir, f"download failed: {reason}")) from None
        found = find_mnist_files(data_dir)
    if not found:
        raise DataError(_missing_message(data_dir, "no IDX files there"))
    missing = [name for name in ALL_FILES if name not in found]
    if missing:
        raise DataError(f"{os.path.join(data_dir, missing[0])}[.gz]: missing from {data_dir} "
                        f"(the other MNIST files are there)")
    return found


# --- The dataset and its loader ------------------------------------------------------


class MNIST(torch.utils.data.Dataset):
    """One split of MNIST as uint8 tensors: data (N, 28, 28) and targets (N,), the files' own bytes.

    dataset[i] -> (image (28, 28), label); a list of indices (`__getitems__`, which the DataLoader
    uses) -> a whole batch (images (B, 28, 28), labels (B,)): no per-image objects. `rows` cuts
    out a part (the training images before the validation split, or the split itself).
    """

    def __init__(self, images, labels):
        self.data, self.targets = torch.from_numpy(images), torch.from_numpy(labels)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.data[index], self.targets[index]

    def __getitems__(self, indices):
        """A list of B indices -> (images uint8 (B, 28, 28), labels uint8 (B,))."""
        index = torch.as_tensor(indices)
        return self.data[index], self.targets[index]

    def rows(self, start, stop):
        """The images start .. stop-1 as a dataset of their own (the memory is shared)."""
        part = MNIST.__new__(MNIST)
        part.data, part.targets = self.data[start:stop], self.targets[start:stop]
        return part


def read_split(files, split):
    """The found files ({name: path}), "train" or "test" -> MNIST dataset; DataError on any problem."""
    image_name, label_name = SPLIT_FILES[split]
    images, labels = read_images(files[image_name]), read_labels(files[label_name])
    if len(images) != len(labels):
        raise DataError(f"{files[label_name]}: {len(labels)} labels for the {len(images)} images in "
                        f"{files[image_name]}")
    return MNIST(images.copy(), labels.copy())  # copies: frombuffer's arrays are read-only


def whole_batch(batch):
    """collate_fn for a dataset that returns whole batches: keep the batch as it is."""
    return batch


def epoch_order(n, seed, epoch):
    """The order in which epoch `epoch` (1, 2, ...) of a run with `seed` visits n images -> int32 (n,).

    A function of (seed, epoch) alone, with no generator carried from one epoch to the next: a run
    resumed at epoch k draws epoch k's order at once, without replaying epochs 1 .. k-1.
    """
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


class EpochSampler(torch.utils.data.Sampler):
    """The DataLoader's order: epoch_order(n, seed, self.epoch). mlp_mnist.py sets .epoch before each
    pass; a pass that was not told moves on by itself, so a plain loop over the loader gets epoch 1's
    order, then epoch 2's, ..."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 1

    def __len__(self):
        return self.n

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        self.epoch += 1
        return iter(order.tolist())


def train_loader(dataset, batch_size, seed):
    """Batches of `dataset`, batch_size at a time, in epoch_order's order (its .sampler.epoch says which epoch)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed),
                      collate_fn=whole_batch)


def load_mnist(data_dir, train_subset=None, val_size=0):
    """-> (train, validation or None, test) datasets; raises DataError on any problem with the files.

    The validation split is the LAST val_size of the 60,000 training images, the same for
    every seed; training uses the images before it (the first train_subset of them, if given).
    """
    files = locate_mnist(data_dir)
    full_train = read_split(files, "train")
    n = len(full_train)
    if not 0 <= val_size < n:
        raise DataError(f"--val-size {val_size}: must leave training images (the training set has {n})")
    train_set = full_train.rows(0, min(n - val_size, train_subset or n))
    val_set = full_train.rows(n - val_size, n) if val_size else None
    return train_set, val_set, read_split(files, "test")


# --- The images on the JAX device, once ----------------------------------------------------


class Data(NamedTuple):
    """The images uint8 (N, 28, 28) and the training labels (N,) on the JAX device, for the steps; every split's
    true digits (N,) on the host, to score the predictions against."""
    train_images: jax.Array
    train_labels: jax.Array
    val_images: object  # None without a validation split
    test_images: object  # None when the test set is not to be looked at (tune_optimizers.py's selection)
    train_digits: np.ndarray
    val_digits: object
    test_digits: object


def on_device(train_set, val_set, test_set):
    """The datasets' images (and the training labels) put on the device once -> Data (None for a set not given)."""
    host = lambda dataset: (None, None) if dataset is None else (dataset.data.numpy(), dataset.targets.numpy())  # noqa
    (val_images, val_digits), (test_images, test_digits) = host(val_set), host(test_set)
    train_images, train_labels, val_images, test_images = jax.device_put(
        (train_set.data.numpy(), train_set.targets.numpy(), val_images, test_images))
    return Data(train_images, train_labels, val_images, test_images, train_set.targets.numpy(), val_digits,
                test_digits)
