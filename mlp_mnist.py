"""Train a 784-512-512-10 MLP on MNIST, from scratch in JAX, with a hand-written optimizer.

    python mlp_mnist.py --optimizer adam --lr 0.001
    python mlp_mnist.py --optimizer nesterov --data-dir /path/to/mnist --out runs/nesterov

    python mlp_mnist.py --optimizer momentum --loader device      # the JAX-native path

Data comes through torchvision.datasets.MNIST and a torch DataLoader (mnist_data.py), one
jitted step per batch; with --loader device the images go to the JAX device once and each
epoch is one compiled program over the same batches. The model and plain SGD are in
train_utils.py, the other optimizers in optimized_sgd.py.
Exit status: 0 done, 2 bad input (arguments, data files, --out), 3 the loss diverged,
130 interrupted (Ctrl-C).
"""
import argparse
import math
import os
import platform
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import torch
import torchvision
from tqdm import tqdm

import mnist_data
import reporting
from optimized_sgd import OPTIMIZERS, make_optimizer
from reporting import number_type, positive_float, positive_int, unit_interval  # noqa: F401 (the other scripts use them from here)
from train_utils import LAYER_SIZES, batch_from_uint8, init_params, inputs_from_uint8, loss, make_step, predicted_class

# --- Defaults: with these, each optimizer reproduces the table of docs/04 ---------------
EPOCHS = 10  # the recipe's runs are 10 epochs long
BATCH_SIZE = 128  # as in JAX's MNIST tutorial; the last batch of an epoch holds the rest (96)
SEED = 0  # seeds the initial weights (jax.random) and the batch order (torch.Generator)
MU = 0.9  # momentum and Nesterov: how much of the previous velocity is kept
RHO = 0.9  # RMSProp: decay of the moving average of g^2 (optax's and Hinton's choice)
BETA1, BETA2 = 0.9, 0.999  # Adam: decays of the moving averages of g and g^2 (the paper's)
EPS = 1e-8  # RMSProp and Adam: added to sqrt(.) so that a tiny gradient cannot blow up a step
EVAL_CHUNK = 2_000  # images per evaluation call: activations stay in cache (10,000 at once took 1.65x as long here)

non_negative_int = number_type(int, lambda v: v >= 0, "a whole number >= 0")

LOADERS = ("torch", "device")  # the DataLoader path is the default: the way JAX's tutorial feeds data

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


# --- Command line --------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a 784-512-512-10 MLP on MNIST with a hand-written optimizer (JAX).",
        epilog="Exit status: 0 done, 2 bad input, 3 the training loss diverged, 130 interrupted.")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="the update rule (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: the recipe's for the optimizer: "
                        + ", ".join(f"{name} {lr}" for name, (_, lr, _) in OPTIMIZERS.items()) + ")")
    p.add_argument("--epochs", type=positive_int, default=EPOCHS, help="passes over the training set (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help="images per step (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seeds the initial weights and the batch order (default: %(default)s)")
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only, for quick runs "
                        "(default: all 60,000); train accuracy is then measured on those N")
    p.add_argument("--mu", type=unit_interval, default=MU, help="momentum, nesterov: velocity decay (default: %(default)s)")
    p.add_argument("--rho", type=unit_interval, default=RHO, help="rmsprop: decay of the mean of g^2 (default: %(default)s)")
    p.add_argument("--beta1", type=unit_interval, default=BETA1, help="adam: decay of the mean of g (default: %(default)s)")
    p.add_argument("--beta2", type=unit_interval, default=BETA2, help="adam: decay of the mean of g^2 (default: %(default)s)")
    p.add_argument("--eps", type=positive_float, default=EPS,
                   help="rmsprop, adam: added to sqrt(mean of g^2) (default: %(default)s)")
    add_val_size_argument(p)
    add_loader_argument(p)
    add_data_dir_argument(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write metrics.json and plots (curves.png, confusion.png, misclassified.png) "
                        "here; DIR must be new or empty: a run refuses a folder that holds files")
    return p


def add_loader_argument(parser):
    """--loader, the same in every script that trains."""
    parser.add_argument("--loader", choices=LOADERS, default=LOADERS[0],
                        help="how batches reach the training step: 'torch', a torch DataLoader feeding one "
                             "jitted step per batch, or 'device', the images kept on the JAX device and each "
                             "epoch one compiled program (jax.lax.scan over the batches); both train on the "
                             "same batches in the same order (default: %(default)s)")


def add_data_dir_argument(parser):
    """--data-dir, the same in every script of this repository."""
    parser.add_argument("--data-dir", default=mnist_data.default_data_dir(), metavar="DIR",
                        help="folder with the four MNIST IDX files, gzipped or not, read-only is fine; "
                             "when none is there torchvision downloads them into DIR/MNIST/raw "
                             "(default: $MNIST_DATA_DIR if set, else ./data; now: %(default)s)")


def load_data_or_exit(parser, data_dir, train_subset=None, batch_size=1, out=None):
    """Claim --out (if given), load MNIST, check --batch-size against it -> (train_set, test_set)."""
    train_set, _, test_set = load_splits_or_exit(parser, data_dir, train_subset, 0, batch_size, out)
    return train_set, test_set


def load_splits_or_exit(parser, data_dir, train_subset=None, val_size=0, batch_size=1, out=None):
    """Claim --out (if given), load MNIST, check --batch-size -> (train_set, val_set or None, test_set).

    The validation split is the last val_size of the 60,000 training images (the same for
    every seed); training uses the images before it. Any bad input ends the program with
    one line and exit status 2.
    """
    try:
        if out:
            reporting.claim_out_dir(out)
        train_set, val_set, test_set = mnist_data.load_mnist_splits(data_dir, train_subset, val_size)
    except (mnist_data.DataError, reporting.OutDirError) as err:
        fail(err, EXIT_BAD_INPUT)
    if batch_size > len(train_set):
        parser.error(f"argument --batch-size: {batch_size} is larger than the {len(train_set)} training images")
    return train_set, val_set, test_set


def add_val_size_argument(parser, default=0):
    """--val-size, the same in every script that trains."""
    parser.add_argument("--val-size", type=non_negative_int, default=default, metavar="N",
                        help="hold out the LAST N of the 60,000 training images as a validation set (the same "
                             "for every seed) and train on the images before them; each epoch then records "
                             "val_accuracy (default: %(default)s)")


def resolve_config(args):
    """argparse namespace -> plain dict of the run's settings, the learning rate filled in."""
    config = dict(vars(args))
    if config["lr"] is None:
        config["lr"] = OPTIMIZERS[config["optimizer"]][1]
    return config


def optimizer_from_config(config):
    """The Optimizer a config names, with its learning rate and hyperparameters."""
    return make_optimizer(config["optimizer"], config["lr"], mu=config["mu"], rho=config["rho"],
                          beta1=config["beta1"], beta2=config["beta2"], eps=config["eps"])


# --- Training ------------------------------------------------------------------------


def make_train_step(optimizer):
    """The training step all five optimizers share, as a pure function (the callers jit it).

    (params, opt_state, images uint8 (B, 28, 28), labels uint8 (B,)) -> (params, opt_state, loss).
    The gradient is taken at optimizer.grad_point(params, opt_state): the params themselves,
    or, for Nesterov, the look-ahead point theta - mu * v. The loss returned comes free with
    that gradient, so it is the loss at the same point, before the update: a Nesterov run
    reports its training loss at theta - mu * v (the point optax calls its parameters) and
    its accuracies at theta.
    """
    step = make_step(optimizer, loss)

    def train_step(params, opt_state, images, labels):
        return step(params, opt_state, batch_from_uint8(images, labels))

    return train_step


def piece_sizes(n, size):
    """The distinct sizes of the pieces that n items fall into, `size` at a time (one compile each)."""
    return sorted({min(size, n)} | ({n % size} - {0}))


def uint8_spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.uint8)


def compile_train_steps(optimizer, params, opt_state, batch_sizes):
    """The torch loader's step: jitted and compiled ahead of time, once per batch size -> {size: step}."""
    step = jax.jit(make_train_step(optimizer), donate_argnums=(0, 1))  # update params and state in place
    return {b: step.lower(params, opt_state, uint8_spec(b, 28, 28), uint8_spec(b)).compile()
            for b in batch_sizes}


def make_device_epoch(optimizer, n, batch_size):
    """The device loader's whole epoch as one pure function (the callers jit it, or vmap it first).

    (params, opt_state, images uint8 (N, 28, 28), labels uint8 (N,), order int32 (n,))
    -> (params, opt_state, mean training loss). images and labels stay on the device; `order`
    is the epoch's image order from mnist_data.epoch_orders, so the batches are the torch
    DataLoader's. jax.lax.scan runs the shared step over the full batches; the last, partial
    batch (a different shape) gets one more step after the scan. As in the torch loop, the
    mean loss weights each batch by its size.
    """
    step = make_train_step(optimizer)
    full_batches, rest = divmod(n, batch_size)

    def epoch(params, opt_state, images, labels, order):
        def one_batch(carry, batch_indices):
            params, opt_state, batch_loss = step(*carry, images[batch_indices], labels[batch_indices])
            return (params, opt_state), batch_loss

        batches = order[:full_batches * batch_size].reshape(full_batches, batch_size)
        (params, opt_state), batch_losses = jax.lax.scan(one_batch, (params, opt_state), batches)
        loss_sum = batch_size * jnp.sum(batch_losses)
        if rest:
            last = order[full_batches * batch_size:]
            params, opt_state, last_loss = step(params, opt_state, images[last], labels[last])
            loss_sum = loss_sum + rest * last_loss
        return params, opt_state, loss_sum / n

    return epoch


def torch_loader_epochs(optimizer, params, opt_state, train_set, config):
    """The torch loader: -> run_epoch(params, opt_state) -> (params, opt_state, mean loss), one step per batch."""
    steps = compile_train_steps(optimizer, params, opt_state, piece_sizes(len(train_set), config["batch_size"]))
    loader = mnist_data.train_loader(train_set, config["batch_size"], config["seed"])

    def run_epoch(params, opt_state):
        batch_losses, batch_sizes = [], []
        for images, labels in tqdm(loader, leave=False, disable=not sys.stderr.isatty()):
            params, opt_state, batch_loss = steps[len(labels)](params, opt_state, images.numpy(), labels.numpy())
            batch_losses.append(batch_loss)  # stays on the device: no wait for the step here
            batch_sizes.append(len(labels))
        return params, opt_state, np.average(jax.device_get(batch_losses), weights=batch_sizes)

    return run_epoch


def device_loader_epochs(optimizer, params, opt_state, data, config):
    """The device loader: -> run_epoch(params, opt_state) -> (params, opt_state, mean loss), one call per epoch."""
    n = len(data.train_labels)
    epoch = jax.jit(make_device_epoch(optimizer, n, config["batch_size"]), donate_argnums=(0, 1))
    compiled = epoch.lower(params, opt_state, data.train_images, data.train_labels,
                           jax.ShapeDtypeStruct((n,), jnp.int32)).compile()
    orders = mnist_data.epoch_orders(n, config["batch_size"], config["seed"])

    def run_epoch(params, opt_state):
        return compiled(params, opt_state, data.train_images, data.train_labels, next(orders))

    return run_epoch


# --- Evaluation ----------------------------------------------------------------------


class DeviceData(NamedTuple):
    """The uint8 images on the JAX device (val_images None without a validation split), labels on the host."""
    train_images: jax.Array
    train_labels: jax.Array
    val_images: object
    test_images: jax.Array
    train_targets: np.ndarray
    val_targets: object
    test_targets: np.ndarray


def device_data(train_set, val_set, test_set, sharding=None):
    """The datasets' images (and the training labels) put on the device once -> DeviceData."""
    val_images = val_set.data.numpy() if val_set is not None else None
    train_images, train_labels, val_images, test_images = jax.device_put(
        (train_set.data.numpy(), train_set.targets.numpy(), val_images, test_set.data.numpy()), sharding)
    return DeviceData(train_images, train_labels, val_images, test_images, train_set.targets.numpy(),
                      None if val_set is None else val_set.targets.numpy(), test_set.targets.numpy())


def predicted_class_uint8(params, images):
    """images uint8 (B, 28, 28) -> predicted digits (B,) int32."""
    return predicted_class(params, inputs_from_uint8(images))


_predict_chunk = jax.jit(predicted_class_uint8)


def predict_all(params, images, chunk=None, predict_chunk=_predict_chunk):
    """images uint8 (N, 28, 28) on the device -> predicted digits (N,) numpy, `chunk` (EVAL_CHUNK) at a time.

    predict_chunk(params, images) does one chunk; many_models passes one that maps over models.
    """
    chunk = chunk or EVAL_CHUNK
    chunks = [predict_chunk(params, images[i:i + chunk]) for i in range(0, len(images), chunk)]
    return np.concatenate(jax.device_get(chunks), axis=-1)


def warm_up_predictions(params, data, predict_chunk=_predict_chunk):
    """Compile the evaluation for every chunk size it will meet, before any clock starts."""
    for images in (data.train_images, data.val_images, data.test_images):
        if images is not None:
            for size in piece_sizes(len(images), EVAL_CHUNK):
                predict_all(params, images[:size], predict_chunk=predict_chunk)


def evaluate(params, data, predict_chunk=_predict_chunk, train_accuracy=True):
    """-> predicted digits for (train or None, val or None, test) images, each (N,) (or (S, N) for S models)."""
    predict = lambda images: None if images is None else predict_all(params, images, predict_chunk=predict_chunk)  # noqa: E731
    return predict(data.train_images if train_accuracy else None), predict(data.val_images), predict(data.test_images)


def epoch_record(epoch, train_seconds, eval_seconds, train_loss, predictions, data):
    """One epoch of one model -> the dict metrics.json keeps (an accuracy not measured is None).

    predictions: that model's (train, val or None, test) predicted digits, as evaluate() returns them.
    """
    train_pred, val_pred, test_pred = predictions
    return dict(epoch=epoch, train_seconds=train_seconds, eval_seconds=eval_seconds, train_loss=float(train_loss),
                train_accuracy=None if train_pred is None else float(np.mean(train_pred == data.train_targets)),
                val_accuracy=None if val_pred is None else float(np.mean(val_pred == data.val_targets)),
                test_accuracy=float(np.mean(test_pred == data.test_targets)))


def log_header(first_column=""):
    return (f"{first_column}{'epoch':>5}  {'train s':>7}  {'eval s':>6}  {'train loss':>10}  {'train acc':>9}  "
            f"{'val acc':>7}  {'test acc':>8}")


def log_line(record, first_column=""):
    def percent(key):
        return "-" if record[key] is None else f"{100 * record[key]:.2f}%"

    return (f"{first_column}{record['epoch']:>5}  {record['train_seconds']:>7.2f}  {record['eval_seconds']:>6.2f}  "
            f"{record['train_loss']:>10.5f}  {percent('train_accuracy'):>9}  {percent('val_accuracy'):>7}  "
            f"{percent('test_accuracy'):>8}")


# --- The training loop ---------------------------------------------------------------


def train(config, train_set, test_set, val_set=None, on_epoch=lambda records: None, log=print, train_accuracy=True):
    """Train one model as `config` says -> dict(status, records, compile_seconds, test_predictions).

    config["loader"] picks how batches reach the step: "torch" (the torch DataLoader, one
    jitted step per batch) or "device" (the images on the device, one jitted program per
    epoch); both give the same batches in the same order. status is "completed",
    "diverged in epoch N" (the mean training loss of epoch N is NaN or infinite; training
    stops there) or "interrupted" (Ctrl-C, wherever it lands, setup included). records
    holds one dict per completed epoch; on_epoch(records) is called after each, so the
    caller can save them. train_accuracy=False skips the accuracy on the training images.
    """
    status, records, compile_seconds, test_predictions = "completed", [], None, None
    try:
        # Setup: the model, the optimizer, the data on the device, everything compiled.
        start = time.perf_counter()
        optimizer = optimizer_from_config(config)
        params = init_params(jax.random.PRNGKey(config["seed"]))
        opt_state = optimizer.init(params)
        data = device_data(train_set, val_set, test_set)
        if config["loader"] == "torch":
            run_epoch = torch_loader_epochs(optimizer, params, opt_state, train_set, config)
        else:
            run_epoch = device_loader_epochs(optimizer, params, opt_state, data, config)
        warm_up_predictions(params, data)
        compile_seconds = time.perf_counter() - start

        # The loop: an epoch of training steps, then evaluation.
        log(log_header())
        for epoch in range(1, config["epochs"] + 1):
            start = time.perf_counter()
            params, opt_state, train_loss = run_epoch(params, opt_state)
            train_loss = float(train_loss)  # waits for the epoch's last step
            train_seconds = time.perf_counter() - start
            if not math.isfinite(train_loss):
                status = f"diverged in epoch {epoch}"
                break
            start = time.perf_counter()
            predictions = evaluate(params, data, train_accuracy=train_accuracy)
            record = epoch_record(epoch, train_seconds, time.perf_counter() - start, train_loss, predictions, data)
            test_predictions = predictions[2]
            records.append(record)
            log(log_line(record))
            on_epoch(records)
    except KeyboardInterrupt:
        status = "interrupted"
    return dict(status=status, records=records, compile_seconds=compile_seconds, test_predictions=test_predictions)


# --- Metrics and the command-line entry point --------------------------------------------


def environment():
    """What ran the training: library versions, the JAX device, the CPU and memory."""
    device = jax.devices()[0]
    return dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                torch=torch.__version__, torchvision=torchvision.__version__, numpy=np.__version__,
                device=str(device), device_kind=device.device_kind, device_count=jax.device_count(),
                platform=platform.platform(), **reporting.machine())


def metrics(config, status, records, compile_seconds=None):
    """The content of metrics.json."""
    return dict(config=config, environment=environment(), layer_sizes=list(LAYER_SIZES),
                status=status, completed_epochs=len(records), compile_seconds=compile_seconds,
                epochs=records)


def fail(message, code):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def write_or_fail(path, write, kept):
    """write(path) -> what it returns; a disk error (full, no permission) ends the program with one line, exit 2."""
    try:
        return write(path)
    except OSError as err:
        fail(f"cannot write {path} ({err.strerror or err}); {kept}", EXIT_BAD_INPUT)


def main(argv=None):
    parser = build_parser()
    config = resolve_config(parser.parse_args(argv))
    torch.set_num_threads(1)  # torch only indexes batches; leave the cores to XLA's thread pool
    train_set, val_set, test_set = load_splits_or_exit(parser, config["data_dir"], config["train_subset"],
                                                       config["val_size"], config["batch_size"], config["out"])

    out = config["out"]
    metrics_path = f"{out}/metrics.json"

    def save(records, status="running", compile_seconds=None):
        if out:
            kept = (f"{metrics_path} keeps what it held before" if os.path.exists(metrics_path)
                    else "nothing was saved")
            write_or_fail(metrics_path, lambda path: reporting.write_json(
                path, metrics(config, status, records, compile_seconds)), kept)

    held_out = f", {len(val_set)} held out for validation" if val_set is not None else ""
    print(f"{config['optimizer']}, lr {config['lr']}, {len(train_set)} training images{held_out}, "
          f"batch {config['batch_size']}, seed {config['seed']}, {config['loader']} loader, on {jax.devices()[0]}")
    run = train(config, train_set, test_set, val_set, on_epoch=save)
    save(run["records"], run["status"], run["compile_seconds"])
    if run["status"].startswith("diverged"):
        saved = f"; {metrics_path} holds the {len(run['records'])} epochs before it" if out else ""
        fail(f"the training loss {run['status']} (NaN or infinite): try a smaller --lr than "
             f"{config['lr']}{saved}", EXIT_DIVERGED)
    if run["status"] == "interrupted":
        where = f"; {metrics_path} holds them" if out else ""
        print(f"interrupted after {len(run['records'])} completed epochs{where}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if out:
        title = f"{config['optimizer']}, lr {config['lr']}, seed {config['seed']}"
        test_labels = test_set.targets.numpy()
        try:
            note = " (at the look-ahead theta - mu v)" if config["optimizer"] == "nesterov" else ""
            reporting.plot_run_curves(run["records"], title, f"{out}/curves.png", loss_note=note)
            reporting.plot_confusion(test_labels, run["test_predictions"], f"test set, {title}",
                                     f"{out}/confusion.png")
            reporting.plot_misclassified(test_set.data.numpy(), test_labels, run["test_predictions"],
                                         f"{out}/misclassified.png")
        except OSError as err:  # disk full, no permission, ...: the metrics are safe already
            fail(f"cannot write the plots into {out} ({err.strerror or err}); {metrics_path} "
                 f"holds the results", EXIT_BAD_INPUT)
        print(f"wrote {metrics_path}, curves.png, confusion.png, misclassified.png")


def run_script(main):
    """Run a script's main(); Ctrl-C before or after training (during it, train() handles it) exits with 130."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    run_script(main)
