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

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mnist_data  # noqa: E402
from plumbing import cli, exits, files  # noqa: E402
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
    monkeypatch.setattr(files, "RUNS_DIR", str(tmp_path / "runs"))


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


def learnable_images(labels, rng):
    """Digits a model can learn: faint noise (0-63), and a bright 6x6 square whose place says the label (two rows
    of five places) -> uint8 (N, 28, 28)."""
    images = rng.integers(0, 64, (len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        row, col = 4 + 12 * (label // 5), 2 + 5 * (label % 5)
        image[row:row + 6, col:col + 6] = 255
    return images


def write_fake_mnist(folder, n_train=300, n_test=50, gz=False, dotted=False, seed=0, learnable=False):
    """The four IDX files in `folder`, random labels and random images (learnable: learnable_images of the labels)
    -> {split: (images, labels)} written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    content = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        content[split] = (learnable_images(labels, rng) if learnable else images, labels)
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


@pytest.fixture(scope="session")
def learnable_dir(tmp_path_factory):
    """A folder of fake MNIST that can be learned (learnable_images): 600 training images, 200 test images."""
    folder = tmp_path_factory.mktemp("learnable-mnist")
    write_fake_mnist(folder, n_train=600, n_test=200, learnable=True)
    return str(folder)


@pytest.fixture(scope="session")
def learnable_data(learnable_dir):
    """learnable_dir's (train, validation None, test) datasets."""
    return mnist_data.load_mnist(learnable_dir)


# --- The optimizers' references ------------------------------------------------------------------

LR = 0.01
HYPER = dict(mu=0.9, rho=0.9, beta1=0.9, beta2=0.999, eps=1e-8)


def optax_reference(name, lr=LR, hyper=HYPER):
    """The optax transformation that must follow the same trajectory as our optimizer `name` (its registry entry's)."""
    import optax

    from optimized_sgd import OPTIMIZERS

    return OPTIMIZERS[name].optax(optax, lr, **takes(name, hyper))


def takes(name, hyper=HYPER):
    """The hyperparameters optimizer `name` takes besides lr: HYPER's value where it has one, else the default."""
    from optimized_sgd import hyperparameters

    return {key: hyper.get(key, default) for key, default in hyperparameters(name).items() if key != "lr"}


STEPS = 60
RTOL, ATOL = 2e-5, 2e-6  # float32: params are O(1) and each step moves them by <= ~lr
LEAF_GRAD_SCALES = (1.0, 1e-3, 1e-8)  # the last one is on the order of eps


def random_params(seed=0):
    """A model-shaped pytree: [(w (5, 4), b (4,)), (w (4, 3), b (3,)), (w (3, 2), b (2,))]."""
    keys = jax.random.split(jax.random.key(seed), 6)
    shapes = [(5, 4), (4,), (4, 3), (3,), (3, 2), (2,)]
    leaves = [jax.random.normal(k, s) for k, s in zip(keys, shapes)]
    return [(leaves[0], leaves[1]), (leaves[2], leaves[3]), (leaves[4], leaves[5])]


def make_loss(params, seed=1):
    """loss(point, step) -> a number whose gradient depends on the point and on the step.

    Elementwise, layer i's loss is LEAF_GRAD_SCALES[i] * (p^2 / 2 - cos(3 p) / 3 + noise_step * p),
    so its gradient is LEAF_GRAD_SCALES[i] * (p + sin(3 p) + noise_step).
    """
    leaves = jax.tree.leaves(params)
    noise_keys = jax.random.split(jax.random.key(seed), len(leaves))
    noises = [jax.random.normal(k, (STEPS,) + leaf.shape) for k, leaf in zip(noise_keys, leaves)]
    scales = [LEAF_GRAD_SCALES[i // 2] for i in range(len(leaves))]  # (w, b) of a layer share one

    def loss(point, step):
        return sum(jnp.sum(s * (p ** 2 / 2 - jnp.cos(3 * p) / 3 + n[step] * p))
                   for s, p, n in zip(scales, jax.tree.leaves(point), noises))

    return loss


def our_trajectory(name, params, loss, hyper_as=float):
    """The points where our optimizer takes its gradients, after each of STEPS steps of mlp_mnist.step, the
    step mlp_mnist.py trains with. hyper_as: how the hyperparameters are passed (float, or jnp.float32 arrays
    to a jitted step, as mlp_mnist.train_step takes them)."""
    import mlp_mnist
    from optimized_sgd import make_optimizer

    hyper = {key: hyper_as(value) for key, value in dict(lr=LR, **takes(name)).items()}
    one_step = jax.jit(lambda params, state, hyper, t: mlp_mnist.step(make_optimizer(name, **hyper), loss, params, state,
                                                                       t))
    opt = make_optimizer(name, **hyper)
    state = opt.init(params)
    points = []
    for t in range(STEPS):
        params, state, _ = one_step(params, state, hyper, t)
        points.append(opt.grad_point(params, state))
    return points


def optax_trajectory(tx, params, loss):
    """The points of optax transformation tx after each of STEPS steps on loss (its gradient at its params)."""
    import optax

    state = tx.init(params)
    points = []

    @jax.jit
    def step_fn(params, state, step):
        updates, state = tx.update(jax.grad(loss)(params, step), state, params)
        return optax.apply_updates(params, updates), state

    for step in range(STEPS):
        params, state = step_fn(params, state, step)
        points.append(params)
    return points


def assert_same_trajectory(ours, reference):
    for step, (a, b) in enumerate(zip(ours, reference), start=1):
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(leaf_a, leaf_b, rtol=RTOL, atol=ATOL, err_msg=f"step {step}")


# --- Runs and scripts ----------------------------------------------------------------------------


def config_for(optimizer="sgd", epochs=2, **overrides):
    """mlp_mnist's configuration for a run: its defaults (the optimizer's own hyperparameters), then `overrides`."""
    import mlp_mnist

    parser = mlp_mnist.build_parser()
    config = cli.resolve_hyperparameters(parser, vars(parser.parse_args(
        ["--optimizer", optimizer, "--epochs", str(epochs)])))
    return dict(config, **overrides)


def without_seconds(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def run_script(main, argv, capsys):
    """exits.run_script(main, argv), as a script's __main__ runs it -> (exit status, stdout, stderr lines).

    It must end with SystemExit or return (status 0), never raise anything else."""
    try:
        exits.run_script(main, list(argv))
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


# --- What a saved plot shows ----------------------------------------------------------------------


def coloured_fraction(path):
    """The fraction of a PNG's pixels in colour (channels apart by > 0.2): lines, markers and colour maps are in
    colour; axes, ticks and text are black and grey, so an empty plot has (nearly) none."""
    import matplotlib.image

    rgb = matplotlib.image.imread(path)[..., :3]
    return float(np.mean(rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2))


def dark_fraction(path):
    """The fraction of a PNG's pixels darker than mid-grey (digits drawn dark on white, say)."""
    import matplotlib.image

    return float(np.mean(matplotlib.image.imread(path)[..., :3].mean(axis=-1) < 0.5))
