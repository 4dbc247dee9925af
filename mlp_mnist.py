"""Train a 784-512-512-10 MLP on MNIST, from scratch in JAX, with a hand-written optimizer.

    python mlp_mnist.py --optimizer adam --lr 0.001
    python mlp_mnist.py --optimizer nesterov --data-dir ../shared/datasets/mnist --out runs/nesterov

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
from reporting import positive_float, positive_int, unit_interval  # noqa: F401 (the other scripts use them from here)
from train_utils import LAYER_SIZES, batch_from_uint8, init_params, inputs_from_uint8, loss, make_step, predicted_class

# --- Defaults: with these, each optimizer reproduces the README's table ----------------
EPOCHS = 10  # the README's runs are 10 epochs long
BATCH_SIZE = 128  # as in JAX's MNIST tutorial; the last batch of an epoch holds the rest (96)
SEED = 0  # seeds the initial weights (jax.random) and the batch order (torch.Generator)
MU = 0.9  # momentum and Nesterov: how much of the previous velocity is kept
RHO = 0.9  # RMSProp: decay of the moving average of g^2 (optax's and Hinton's choice)
BETA1, BETA2 = 0.9, 0.999  # Adam: decays of the moving averages of g and g^2 (the paper's)
EPS = 1e-8  # RMSProp and Adam: added to sqrt(.) so that a tiny gradient cannot blow up a step
EVAL_CHUNK = 2_000  # images per evaluation call: activations stay in cache (10,000 at once took 1.65x as long here)

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


def predicted_class_uint8(params, images):
    """images uint8 (B, 28, 28) -> predicted digits (B,) int32."""
    return predicted_class(params, inputs_from_uint8(images))


_predict_chunk = jax.jit(predicted_class_uint8)
_predict_chunk_per_seed = jax.jit(jax.vmap(predicted_class_uint8, in_axes=(0, None)))  # params (S, ...)


def predict_all(params, images, seed_axis=False, chunk=None):
    """images uint8 (N, 28, 28) on the device -> predicted digits (N,) numpy, `chunk` (EVAL_CHUNK) at a time.

    With seed_axis, params carry a leading axis of S models and the result is (S, N).
    """
    predict = _predict_chunk_per_seed if seed_axis else _predict_chunk
    chunk = chunk or EVAL_CHUNK
    chunks = [predict(params, images[i:i + chunk]) for i in range(0, len(images), chunk)]
    return np.concatenate(jax.device_get(chunks), axis=-1)


def seed_shardings(num_seeds):
    """-> (sharding of arrays with a leading seed axis, sharding of arrays every seed shares).

    The seed axis is split over as many JAX devices as divide num_seeds (all of them when
    they can): the seeds never exchange anything, so each device trains its own.
    """
    devices = jax.devices()
    used = max(d for d in range(1, len(devices) + 1) if num_seeds % d == 0)
    mesh = jax.sharding.Mesh(np.array(devices[:used]), ("seed",))
    return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seed")),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def stack_trees(trees):
    """[pytree, ...] (S of them, same structure) -> one pytree whose leaves have a leading axis S."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def train(config, train_set, test_set, on_epoch=lambda records: None, log=print):
    """Train one model as `config` says -> dict(status, records, compile_seconds, test_predictions).

    config["loader"] picks how batches reach the step: "torch" (the torch DataLoader, one
    jitted step per batch) or "device" (the images on the device, one jitted program per
    epoch); both give the same batches in the same order. status is "completed",
    "diverged in epoch N" (the mean training loss of epoch N is NaN or infinite; training
    stops there) or "interrupted" (Ctrl-C). records holds one dict per completed epoch;
    on_epoch(records) is called after each, so the caller can save them.
    """
    (run,) = _train(config, [config["seed"]], train_set, test_set,
                    on_epoch=lambda records_per_seed: on_epoch(records_per_seed[0]), log=log, seed_axis=False)
    return run


def train_seeds(config, seeds, train_set, test_set, log=print):
    """Train one model per seed, all at once -> [the dict train() returns, one per seed].

    The device loader's epoch under jax.vmap: params, optimizer state and batch orders gain
    a leading seed axis, the images are shared. With several JAX devices the seed axis is
    sharded across them (seed_shardings). Each seed's steps equal those of a train() run with
    that seed, to float rounding; over many steps Adam can turn those rounding differences
    into visible ones (see the README). A seed whose loss diverges stops recording; the
    others go on.
    """
    return _train(dict(config, loader="device"), list(seeds), train_set, test_set,
                  on_epoch=lambda records_per_seed: None, log=log, seed_axis=True)


def _train(config, seeds, train_set, test_set, on_epoch, log, seed_axis):
    """train() and train_seeds(): S = len(seeds) models; without seed_axis, S is 1 and no axis is added."""
    optimizer = make_optimizer(config["optimizer"], config["lr"], mu=config["mu"], rho=config["rho"],
                               beta1=config["beta1"], beta2=config["beta2"], eps=config["eps"])
    if seed_axis:
        per_seed, shared = seed_shardings(len(seeds))
        params = jax.device_put(stack_trees([init_params(jax.random.PRNGKey(s)) for s in seeds]), per_seed)
        opt_state = jax.device_put(jax.vmap(optimizer.init)(params), per_seed)
    else:
        per_seed, shared = None, None
        params = init_params(jax.random.PRNGKey(seeds[0]))
        opt_state = optimizer.init(params)
    train_images, train_labels, test_images = jax.device_put(
        (train_set.data.numpy(), train_set.targets.numpy(), test_set.data.numpy()), shared)
    train_targets, test_targets = train_set.targets.numpy(), test_set.targets.numpy()

    # Compile before the clock starts, the evaluation warmed up too.
    start = time.perf_counter()
    if config["loader"] == "torch":
        run_epoch = _torch_loader_epochs(optimizer, params, opt_state, train_set, config)
    else:
        run_epoch = _device_epochs(optimizer, params, opt_state, train_images, train_labels, config, seeds,
                                   per_seed, seed_axis)
    for images in (train_images, test_images):
        for size in piece_sizes(len(images), EVAL_CHUNK):
            predict_all(params, images[:size], seed_axis)
    compile_seconds = time.perf_counter() - start

    seed_column = f"{'seed':>4}  " if seed_axis else ""
    log(f"{seed_column}{'epoch':>5}  {'train s':>7}  {'eval s':>6}  {'train loss':>10}  {'train acc':>9}  "
        f"{'test acc':>8}")
    statuses = ["completed"] * len(seeds)
    records, test_predictions = [[] for _ in seeds], [None] * len(seeds)
    try:
        for epoch in range(1, config["epochs"] + 1):
            start = time.perf_counter()
            params, opt_state, train_losses = run_epoch(params, opt_state)
            train_losses = np.reshape(jax.device_get(train_losses), len(seeds))  # waits for the epoch
            train_seconds = time.perf_counter() - start
            for i, train_loss in enumerate(train_losses):
                if statuses[i] == "completed" and not math.isfinite(train_loss):
                    statuses[i] = f"diverged in epoch {epoch}"
            if "completed" not in statuses:
                break

            start = time.perf_counter()
            train_correct = predict_all(params, train_images, seed_axis).reshape(len(seeds), -1) == train_targets
            predictions = predict_all(params, test_images, seed_axis).reshape(len(seeds), -1)
            eval_seconds = time.perf_counter() - start
            for i, seed in enumerate(seeds):
                if statuses[i] != "completed":
                    continue
                test_predictions[i] = predictions[i]
                record = dict(epoch=epoch, train_seconds=train_seconds, eval_seconds=eval_seconds,
                              train_loss=float(train_losses[i]), train_accuracy=float(np.mean(train_correct[i])),
                              test_accuracy=float(np.mean(predictions[i] == test_targets)))
                records[i].append(record)
                log(f"{f'{seed:>4}  ' if seed_axis else ''}{epoch:>5}  {train_seconds:>7.2f}  {eval_seconds:>6.2f}  "
                    f"{record['train_loss']:>10.5f}  {100 * record['train_accuracy']:>8.2f}%  "
                    f"{100 * record['test_accuracy']:>7.2f}%")
            on_epoch(records)
    except KeyboardInterrupt:
        statuses = ["interrupted" if status == "completed" else status for status in statuses]
    return [dict(status=status, records=seed_records, compile_seconds=compile_seconds, test_predictions=predicted)
            for status, seed_records, predicted in zip(statuses, records, test_predictions)]


def _torch_loader_epochs(optimizer, params, opt_state, train_set, config):
    """The torch loader: -> run_epoch(params, opt_state) -> (params, opt_state, mean loss), one step per batch."""
    steps = compile_train_steps(optimizer, params, opt_state, piece_sizes(len(train_set), config["batch_size"]))
    loader = mnist_data.train_loader(train_set, config["batch_size"], config["seed"])
    epoch = 0

    def run_epoch(params, opt_state):
        nonlocal epoch
        epoch += 1
        batch_losses, batch_sizes = [], []
        for images, labels in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not sys.stderr.isatty()):
            params, opt_state, batch_loss = steps[len(labels)](params, opt_state, images.numpy(), labels.numpy())
            batch_losses.append(batch_loss)  # stays on the device: no wait for the step here
            batch_sizes.append(len(labels))
        return params, opt_state, np.average(jax.device_get(batch_losses), weights=batch_sizes)

    return run_epoch


def _device_epochs(optimizer, params, opt_state, images, labels, config, seeds, per_seed, seed_axis):
    """The device loader: -> run_epoch(params, opt_state) -> (params, opt_state, mean loss), one call per epoch."""
    n, batch_size = len(labels), config["batch_size"]
    epoch = make_device_epoch(optimizer, n, batch_size)
    if seed_axis:
        epoch = jax.vmap(epoch, in_axes=(0, 0, None, None, 0))  # images and labels are shared by the seeds
    order_shape = (len(seeds), n) if seed_axis else (n,)
    order_spec = jax.ShapeDtypeStruct(order_shape, jnp.int32, sharding=per_seed)
    compiled = jax.jit(epoch, donate_argnums=(0, 1)).lower(params, opt_state, images, labels, order_spec).compile()
    orders = [mnist_data.epoch_orders(n, batch_size, seed) for seed in seeds]

    def run_epoch(params, opt_state):
        order = np.stack([next(o) for o in orders]).reshape(order_shape)  # this epoch's batches, for every seed
        return compiled(params, opt_state, images, labels, jax.device_put(order, per_seed))

    return run_epoch


# --- Metrics and the command-line entry point --------------------------------------------


def environment():
    """What ran the training: library versions and the JAX device."""
    device = jax.devices()[0]
    return dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                torch=torch.__version__, torchvision=torchvision.__version__, numpy=np.__version__,
                device=str(device), device_kind=device.device_kind, device_count=jax.device_count(),
                platform=platform.platform())


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
          f"batch {config['batch_size']}, seed {config['seed']}, {config['loader']} loader, on {jax.devices()[0]}")
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
        try:
            reporting.plot_run_curves(run["records"], title, f"{out}/curves.png")
            reporting.plot_confusion(test_labels, run["test_predictions"], f"test set, {title}",
                                     f"{out}/confusion.png")
            reporting.plot_misclassified(test_set.data.numpy(), test_labels, run["test_predictions"],
                                         f"{out}/misclassified.png")
        except OSError as err:  # disk full, no permission, ...: the metrics are safe already
            fail(f"cannot write the plots into {out} ({err.strerror or err}); {out}/metrics.json "
                 f"holds the results", EXIT_BAD_INPUT)
        print(f"wrote {out}/metrics.json, curves.png, confusion.png, misclassified.png")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before or after training (during it, train() handles it)
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
