"""Reading MNIST: IDX files the tests write themselves, the real files, and the DataLoader."""
import os

import numpy as np
import pytest
import torch

import conftest
import mnist_data
from conftest import write_fake_mnist
from mnist_data import ALL_FILES

TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # ../shared README
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_reads_files_written_here_in_every_naming_style(tmp_path, gz, dotted):
    content = write_fake_mnist(tmp_path, gz=gz, dotted=dotted)
    files = mnist_data.locate_mnist(str(tmp_path), download=False)
    assert sorted(files) == sorted(ALL_FILES)
    assert all(path.endswith(".gz") == gz for path in files.values())
    train_set, _, test_set = mnist_data.load_mnist(str(tmp_path))
    for dataset, (images, labels) in ((train_set, content["train"]), (test_set, content["test"])):
        assert dataset.data.dtype == torch.uint8 and dataset.targets.dtype == torch.uint8
        np.testing.assert_array_equal(dataset.data.numpy(), images)
        np.testing.assert_array_equal(dataset.targets.numpy(), labels)


def test_finds_torchvisions_download_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_fake_mnist(raw)
    files = mnist_data.locate_mnist(str(tmp_path), download=False)
    assert all(os.path.dirname(p) == str(raw) for p in files.values())


def test_train_subset_keeps_the_first_images(tmp_path):
    content = write_fake_mnist(tmp_path)
    train_set, _, _ = mnist_data.load_mnist(str(tmp_path), train_subset=100)
    assert len(train_set) == 100
    np.testing.assert_array_equal(train_set.data.numpy(), content["train"][0][:100])


def test_validation_split_is_the_last_images_whatever_the_subset(tmp_path):
    content = write_fake_mnist(tmp_path, n_train=300)
    images = content["train"][0]
    for subset in (None, 100, 500):
        train_set, val_set, test_set = mnist_data.load_mnist(str(tmp_path), train_subset=subset, val_size=50)
        np.testing.assert_array_equal(val_set.data.numpy(), images[250:])  # the last 50, every time
        np.testing.assert_array_equal(train_set.data.numpy(), images[:min(250, subset or 250)])
        assert len(test_set) == 50
    train_set, val_set, _ = mnist_data.load_mnist(str(tmp_path))
    assert val_set is None and len(train_set) == 300  # no split: all of them, the recipe's default
    with pytest.raises(mnist_data.DataError, match="--val-size 300"):
        mnist_data.load_mnist(str(tmp_path), val_size=300)


def test_real_mnist_files(mnist_dir):
    train_set, _, test_set = mnist_data.load_mnist(mnist_dir)
    assert tuple(train_set.data.shape) == (60000, 28, 28) and tuple(test_set.data.shape) == (10000, 28, 28)
    assert train_set.data.dtype == torch.uint8 and train_set.targets.dtype == torch.uint8
    assert torch.bincount(train_set.targets.long()).tolist() == TRAIN_LABEL_COUNTS
    assert torch.bincount(test_set.targets.long()).tolist() == TEST_LABEL_COUNTS
    assert int(train_set.data.max()) == 255 and int(train_set.data.min()) == 0
    # one item: (image uint8 (28, 28), label)
    image, label = train_set[0]
    assert tuple(image.shape) == (28, 28) and int(label) == 5 and len(train_set) == 60000


def test_loader_gives_whole_uint8_batches_in_a_seeded_order(tmp_path):
    write_fake_mnist(tmp_path, n_train=300)
    train_set, _, _ = mnist_data.load_mnist(str(tmp_path))

    def epoch_labels(loader):
        batches = list(loader)
        assert [len(labels) for _, labels in batches] == [128, 128, 44]
        assert all(images.dtype == torch.uint8 and images.shape[1:] == (28, 28) for images, _ in batches)
        return torch.cat([labels for _, labels in batches])

    loader = mnist_data.train_loader(train_set, 128, seed=0)
    first, second = epoch_labels(loader), epoch_labels(loader)
    assert not torch.equal(first, second)  # reshuffled every epoch
    assert torch.equal(torch.sort(first).values, torch.sort(train_set.targets).values)  # each image once
    again = mnist_data.train_loader(train_set, 128, seed=0)
    assert torch.equal(epoch_labels(again), first)  # same seed, same order
    assert not torch.equal(epoch_labels(mnist_data.train_loader(train_set, 128, seed=1)), first)


def test_batches_match_the_images_they_index(tmp_path):
    write_fake_mnist(tmp_path)
    train_set, _, _ = mnist_data.load_mnist(str(tmp_path))
    images, labels = train_set.__getitems__([5, 0, 7])
    np.testing.assert_array_equal(images.numpy(), train_set.data.numpy()[[5, 0, 7]])
    np.testing.assert_array_equal(labels.numpy(), train_set.targets.numpy()[[5, 0, 7]])


# --- Where the tests find the real MNIST (tests/conftest.py) -----------------------------


def no_download(monkeypatch):
    """Make torchvision's download fail at once, as it does offline."""
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")
    monkeypatch.setattr(mnist_data.torchvision.datasets, "MNIST", offline)


def test_tests_find_mnist_in_mnist_data_dir(tmp_path, monkeypatch):
    no_download(monkeypatch)
    write_fake_mnist(tmp_path / "mine", gz=True)
    assert conftest.find_real_mnist({"MNIST_DATA_DIR": str(tmp_path / "mine")}, str(tmp_path / "repo")) == (
        str(tmp_path / "mine"), None)


def test_tests_find_mnist_where_torchvision_downloaded_it(tmp_path, monkeypatch):
    """A learner's clone: no $MNIST_DATA_DIR, the raw files in ./data/MNIST/raw/."""
    no_download(monkeypatch)
    write_fake_mnist(tmp_path / "data" / "MNIST" / "raw")
    assert conftest.find_real_mnist({}, str(tmp_path)) == (str(tmp_path / "data"), None)


def test_tests_skip_without_mnist_offline_but_fail_under_ci(tmp_path, monkeypatch):
    no_download(monkeypatch)
    path, why = conftest.find_real_mnist({}, str(tmp_path))
    assert path is None and "download failed" in why and "no network" in why
    assert not os.path.exists(tmp_path / "data")  # the failed download leaves no empty folders
    with pytest.raises(pytest.skip.Exception, match="MNIST_DATA_DIR"):
        conftest.real_mnist_or_skip({}, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="real MNIST unavailable"):
        conftest.real_mnist_or_skip({"CI": "true"}, str(tmp_path))


def test_tests_do_not_skip_a_broken_download(tmp_path, monkeypatch):
    no_download(monkeypatch)
    write_fake_mnist(tmp_path / "data")
    os.remove(tmp_path / "data" / "t10k-labels-idx1-ubyte")
    with pytest.raises(mnist_data.DataError, match="missing"):
        conftest.find_real_mnist({}, str(tmp_path))


def test_epoch_order_is_the_data_loaders_batches(tmp_path):
    """The device loader's order (mnist_data.epoch_order) is the torch DataLoader's, epoch after epoch, and a
    loader told to start at epoch 3 (a resumed run) gives epoch 3's batches without drawing epochs 1 and 2."""
    write_fake_mnist(tmp_path, n_train=300)
    train_set, _, _ = mnist_data.load_mnist(str(tmp_path))
    loader = mnist_data.train_loader(train_set, 128, seed=4)
    orders = [mnist_data.epoch_order(300, 4, epoch) for epoch in (1, 2, 3)]
    for order in orders:
        assert order.dtype == np.int32 and sorted(order) == list(range(300))
        images = torch.cat([batch_images for batch_images, _ in loader]).numpy()
        np.testing.assert_array_equal(images, train_set.data.numpy()[order])
    assert not np.array_equal(orders[0], orders[1])  # a fresh order every epoch
    resumed = mnist_data.train_loader(train_set, 128, seed=4)
    resumed.sampler.epoch = 3
    np.testing.assert_array_equal(torch.cat([labels for _, labels in resumed]).numpy(),
                                  train_set.targets.numpy()[orders[2]])
    np.testing.assert_array_equal(orders[2], np.random.default_rng([4, 3]).permutation(300))  # (seed, epoch) alone


def test_the_dataset_uses_no_private_torchvision_api(fake_dir, monkeypatch):
    """mnist_data reads the IDX files itself into a plain torch Dataset: with torchvision's private MNIST methods
    made to fail, and its constructor too (it is used only to download), the files still load, as written."""
    assert not issubclass(mnist_data.MNIST, mnist_data.torchvision.datasets.MNIST)

    def private(*args, **kwargs):
        raise AssertionError("torchvision's private API was called")

    for name in ("_check_exists", "_check_legacy_exist", "_load_data", "__init__"):
        monkeypatch.setattr(mnist_data.torchvision.datasets.MNIST, name, private)
    train_set, _, test_set = mnist_data.load_mnist(fake_dir)
    written = write_fake_mnist(os.path.join(os.path.dirname(fake_dir), "again"))  # the same seed: the same files
    for dataset, split in ((train_set, "train"), (test_set, "test")):
        np.testing.assert_array_equal(dataset.data.numpy(), written[split][0])
        np.testing.assert_array_equal(dataset.targets.numpy(), written[split][1])
