"""Train a 784-512-512-10 MLP on MNIST, from scratch in JAX, with a hand-written optimizer.

    python mlp_mnist.py --optimizer adam --lr 0.001
    python mlp_mnist.py --optimizer nesterov --data-dir ../shared/datasets/mnist --out runs/nesterov

Data comes through torchvision.datasets.MNIST and a torch DataLoader (mnist_data.py); the
model and plain SGD are in train_utils.py, the other optimizers in optimized_sgd.py.
Exit status: 0 done, 2 bad input (arguments, data files, --out), 3 the loss diverged,
130 interrupted (Ctrl-C).
"""
import argparse
import math
import platform
import sys
import time

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
from train_utils import LAYER_SIZES, batch_from_uint8, init_params, loss, predicted_class

# --- Defaults: with these, each optimizer reproduces the README's table ----------------
EPOCHS = 10  # the README's runs are 10 epochs long
BATCH_SIZE = 128  # as in JAX's MNIST tutorial; the last batch of an epoch holds the rest (96)
SEED = 0  # seeds the initial weights (jax.random) and the batch order (torch.Generator)
MU = 0.9  # momentum and Nesterov: how much of the previous velocity is kept
RHO = 0.9  # RMSProp: decay of the moving average of g^2 (optax's and Hinton's choice)
BETA1, BETA2 = 0.9, 0.999  # Adam: decays of the moving averages of g and g^2 (the paper's)
EPS = 1e-8  # RMSProp and Adam: added to sqrt(.) so that a tiny gradient cannot blow up a step
EVAL_CHUNK = 2_000  # images per evaluation call: activations stay in cache (~20% faster than 10,000 here)

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


# --- Command line --------------------------------------------------------------------


def _number(text, kind, check, requirement):
    """An argparse type: parse `text` with `kind`, require check(value), else a usage error."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not check(value):
        raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
    return value


def positive_float(text):
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")


def positive_int(text):
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1")


def unit_interval(text):
    return _number(text, float, lambda v: 0 <= v < 1, "in [0, 1)")


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a 784-512-512-10 MLP on MNIST with a hand-written optimizer (JAX).",
        epilog="Exit status: 0 done, 2 bad input, 3 the training loss diverged, 130 interrupted.")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="the update rule (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: the README's for the optimizer: "
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
    add_data_dir_argument(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write metrics.json and plots (curves.png, confusion.png, misclassified.png) "
                        "here; DIR must be new or empty: a run refuses a folder that holds files")
    return p


def add_data_dir_argument(parser):
    """--data-dir, the same in every script of this repository."""
    parser.add_argument("--data-dir", default=mnist_data.default_data_dir(), metavar="DIR",
                        help="folder with the four MNIST IDX files, gzipped or not, read-only is fine; "
                             "when none is there torchvision downloads them into DIR/MNIST/raw "
                             "(default: $MNIST_DATA_DIR if set, else ./data; now: %(default)s)")


def load_data_or_exit(parser, data_dir, train_subset=None, batch_size=1, out=None):
    """Claim --out (if given), load MNIST, check --batch-size against it -> (train_set, test_set).

    Any bad input ends the program with one line and exit status 2.
    """
    try:
        if out:
            reporting.claim_out_dir(out)
        train_set, test_set = mnist_data.load_mnist(data_dir, train_subset)
    except (mnist_data.DataError, reporting.OutDirError) as err:
        fail(err, EXIT_BAD_INPUT)
    if batch_size > len(train_set):
        parser.error(f"argument --batch-size: {batch_size} is larger than the {len(train_set)} training images")
    return train_set, test_set


def resolve_config(args):
    """argparse namespace -> plain dict of the run's settings, the learning rate filled in."""
    config = dict(vars(args))
    if config["lr"] is None:
        config["lr"] = OPTIMIZERS[config["optimizer"]][1]
    return config


# --- Training ------------------------------------------------------------------------


def make_train_step(optimizer):
    """The jitted training step all five optimizers share.

    (params, opt_state, images uint8 (B, 28, 28), labels uint8 (B,)) -> (params, opt_state, loss).
    The gradient is taken at optimizer.grad_point (the params, or Nesterov's look-ahead),
    so the reported loss is the loss at that point, before the update.
    """

    def train_step(params, opt_state, images, labels):
        batch = batch_from_uint8(images, labels)
        batch_loss, grads = jax.value_and_grad(loss)(optimizer.grad_point(params, opt_state), batch)
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, opt_state, batch_loss

    return jax.jit(train_step, donate_argnums=(0, 1))  # update params and state in place


def piece_sizes(n, size):
    """The distinct sizes of the pieces that n items fall into, `size` at a time (one compile each)."""
    return sorted({min(size, n)} | ({n % size} - {0}))


def uint8_spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.uint8)


def compile_train_steps(optimizer, params, opt_state, batch_sizes):
    """Compile the shared train step ahead of time, once per batch size -> {batch size: step}."""
    step = make_train_step(optimizer)
    return {b: step.lower(params, opt_state, uint8_spec(b, 28, 28), uint8_spec(b)).compile()
            for b in batch_sizes}


@jax.jit
def _predicted_class_uint8(params, images):
    return predicted_class(params, images.reshape(images.shape[0], -1).astype(jnp.float32))


def predict_all(params, images):
    """images uint8 (N, 28, 28) on the device -> predicted digits (N,) numpy, EVAL_CHUNK at a time."""
    chunks = [_predicted_class_uint8(params, images[i:i + EVAL_CHUNK])
              for i in range(0, len(images), EVAL_CHUNK)]
    return np.concatenate(jax.device_get(chunks))


def train(config, train_set, test_set, on_epoch=lambda records: None, log=print):
    """Train one model as `config` says -> dict(status, records, compile_seconds, test_predictions).

    status is "completed", "diverged in epoch N" (the mean training loss of epoch N is NaN
    or infinite; training stops there) or "interrupted" (Ctrl-C). records holds one dict
    per completed epoch; on_epoch(records) is called after each, so the caller can save them.
    """
    optimizer = make_optimizer(config["optimizer"], config["lr"], mu=config["mu"], rho=config["rho"],
                               beta1=config["beta1"], beta2=config["beta2"], eps=config["eps"])
    params = init_params(jax.random.PRNGKey(config["seed"]))
    opt_state = optimizer.init(params)
    loader = mnist_data.train_loader(train_set, config["batch_size"], config["seed"])
    train_images, test_images = jax.device_put((train_set.data.numpy(), test_set.data.numpy()))  # for evaluation

    # Compile before the clock starts: one executable per batch shape, the evaluation warmed up.
    start = time.perf_counter()
    steps = compile_train_steps(optimizer, params, opt_state, piece_sizes(len(train_set), config["batch_size"]))
    for images in (train_images, test_images):
        for size in piece_sizes(len(images), EVAL_CHUNK):
            _predicted_class_uint8(params, images[:size]).block_until_ready()
    compile_seconds = time.perf_counter() - start

    log(f"{'epoch':>5}  {'train s':>7}  {'eval s':>6}  {'train loss':>10}  {'train acc':>9}  {'test acc':>8}")
    records, status, test_predictions = [], "completed", None
    try:
        for epoch in range(1, config["epochs"] + 1):
            start = time.perf_counter()
            batch_losses, batch_sizes = [], []
            for images, labels in tqdm(loader, desc=f"epoch {epoch}", leave=False,
                                       disable=not sys.stderr.isatty()):
                params, opt_state, batch_loss = steps[len(labels)](params, opt_state, images.numpy(),
                                                                   labels.numpy())
                batch_losses.append(batch_loss)  # stays on the device: no wait for the step here
                batch_sizes.append(len(labels))
            train_loss = float(np.average(jax.device_get(batch_losses), weights=batch_sizes))
            train_seconds = time.perf_counter() - start
            if not math.isfinite(train_loss):
                status = f"diverged in epoch {epoch}"
                break

            start = time.perf_counter()
            train_accuracy = float(np.mean(predict_all(params, train_images) == train_set.targets.numpy()))
            test_predictions = predict_all(params, test_images)
            test_accuracy = float(np.mean(test_predictions == test_set.targets.numpy()))
            eval_seconds = time.perf_counter() - start

            records.append(dict(epoch=epoch, train_seconds=train_seconds, eval_seconds=eval_seconds,
                                train_loss=train_loss, train_accuracy=train_accuracy,
                                test_accuracy=test_accuracy))
            log(f"{epoch:>5}  {train_seconds:>7.2f}  {eval_seconds:>6.2f}  {train_loss:>10.5f}  "
                f"{100 * train_accuracy:>8.2f}%  {100 * test_accuracy:>7.2f}%")
            on_epoch(records)
    except KeyboardInterrupt:
        status = "interrupted"
    return dict(status=status, records=records, compile_seconds=compile_seconds,
                test_predictions=test_predictions)


# --- Metrics and the command-line entry point --------------------------------------------


def environment():
    """What ran the training: library versions and the JAX device."""
    device = jax.devices()[0]
    return dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                torch=torch.__version__, torchvision=torchvision.__version__, numpy=np.__version__,
                device=str(device), device_kind=device.device_kind, platform=platform.platform())


def metrics(config, status, records, compile_seconds=None):
    """The content of metrics.json."""
    return dict(config=config, environment=environment(), layer_sizes=list(LAYER_SIZES),
                status=status, completed_epochs=len(records), compile_seconds=compile_seconds,
                epochs=records)


def fail(message, code):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv=None):
    parser = build_parser()
    config = resolve_config(parser.parse_args(argv))
    torch.set_num_threads(1)  # torch only indexes batches; leave the cores to XLA's thread pool
    train_set, test_set = load_data_or_exit(parser, config["data_dir"], config["train_subset"],
                                            config["batch_size"], config["out"])

    out = config["out"]
    save = (lambda records: reporting.write_json(f"{out}/metrics.json", metrics(config, "running", records))
            ) if out else (lambda records: None)
    print(f"{config['optimizer']}, lr {config['lr']}, {len(train_set)} training images, "
          f"batch {config['batch_size']}, seed {config['seed']}, on {jax.devices()[0]}")
    run = train(config, train_set, test_set, on_epoch=save)
    if out:
        reporting.write_json(f"{out}/metrics.json",
                             metrics(config, run["status"], run["records"], run["compile_seconds"]))
    if run["status"].startswith("diverged"):
        saved = f"; {out}/metrics.json holds the {len(run['records'])} epochs before it" if out else ""
        fail(f"the training loss {run['status']} (NaN or infinite): try a smaller --lr than "
             f"{config['lr']}{saved}", EXIT_DIVERGED)
    if run["status"] == "interrupted":
        where = f"; {out}/metrics.json holds them" if out else ""
        print(f"interrupted after {len(run['records'])} completed epochs{where}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if out:
        title = f"{config['optimizer']}, lr {config['lr']}, seed {config['seed']}"
        test_labels = test_set.targets.numpy()
        reporting.plot_run_curves(run["records"], title, f"{out}/curves.png")
        reporting.plot_confusion(test_labels, run["test_predictions"], f"test set, {title}",
                                 f"{out}/confusion.png")
        reporting.plot_misclassified(test_set.data.numpy(), test_labels, run["test_predictions"],
                                     f"{out}/misclassified.png")
        print(f"wrote {out}/metrics.json, curves.png, confusion.png, misclassified.png")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before or after training (during it, train() handles it)
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
