"""Train a 784-512-512-10 MLP on MNIST, from scratch in JAX, with a hand-written optimizer.

    python mlp_mnist.py --optimizer adam --lr 0.001
    python mlp_mnist.py --optimizer momentum --loader device      # each epoch one compiled program

Read it top to bottom: the data, one jitted training step, the epoch, evaluation, the loop for
one model, the command line. The model, the loss and plain SGD are in train_utils.py, the other
four optimizers and their registry in optimized_sgd.py; many_models.py runs this same epoch under
jax.vmap, for many models at once. Writes metrics.json, log.txt, checkpoint.npz, model.npz and
three plots into --out (default runs/mlp_mnist; plumbing/run_folder.py writes them).
Exit status: 0 done, 2 bad input, 3 the loss diverged, 130 interrupted.
"""
import argparse
import math
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import mnist_data
from plumbing import cli, exits, files, provenance, run_folder, warm_up
from optimized_sgd import OPTIMIZERS, hyperparameters, make_optimizer
from train_utils import batch_from_uint8, init_params, inputs_from_uint8, loss, predicted_class

# The recipe's defaults (10 epochs, batch 128, seed 0, each optimizer's lr) are the flags' defaults:
# python mlp_mnist.py --help lists them.
EVAL_CHUNK = 2_000  # images per evaluation call: 10,000 at once take longer (appendix A2 measures it)


# --- One training step ------------------------------------------------------------------


def step(optimizer, loss_fn, params, opt_state, batch):
    """One step of `optimizer` on loss_fn(params, batch) -> (params, opt_state, loss).

    The gradient is taken at optimizer.grad_point(params, opt_state): the params, or Nesterov's
    look-ahead theta - mu v. The loss comes with that gradient, so it is the loss at that point,
    before the update. (optimizer_paths.py moves points on 2-D functions with this same step.)
    """
    loss_value, grads = jax.value_and_grad(loss_fn)(optimizer.grad_point(params, opt_state), batch)
    params, opt_state = optimizer.update(grads, opt_state, params)
    return params, opt_state, loss_value


@partial(jax.jit, static_argnames="name", donate_argnames=("params", "opt_state"))
def train_step(params, opt_state, hyper, images, labels, name):
    """images uint8 (B, 28, 28), labels uint8 (B,) -> (params, opt_state, loss): one step of optimizer `name`.

    hyper ({"lr": ..., "mu": ...}) holds float32 arrays: data to the compiled program, not constants
    in it, so one program per optimizer and batch shape serves every learning rate and seed.
    donate: called on its own, the new params may be written over the old ones' memory (the old ones are
    gone after the call); inside device_epoch's program, XLA manages that memory itself.
    """
    optimizer = make_optimizer(name, **hyper)
    return step(optimizer, loss, params, opt_state, batch_from_uint8(images, labels))


# --- One epoch ------------------------------------------------------------------------


def torch_epoch(params, opt_state, hyper, epoch, loader, name):
    """Epoch `epoch` through a torch DataLoader, one train_step call per batch -> (params, opt_state, mean loss)."""
    loader.sampler.epoch = epoch  # the order is a function of (seed, epoch): nothing else to carry or restore
    losses, sizes = [], []
    for images, labels in tqdm(loader, leave=False, disable=not sys.stderr.isatty()):
        params, opt_state, loss_value = train_step(params, opt_state, hyper, images.numpy(), labels.numpy(), name=name)
        losses.append(loss_value)  # stays on the device: Python does not wait for the step here
        sizes.append(len(labels))
    return params, opt_state, np.average(jax.device_get(losses), weights=sizes)


@partial(jax.jit, static_argnames=("name", "batch_size"), donate_argnames=("params", "opt_state"))
def device_epoch(params, opt_state, hyper, images, labels, order, name, batch_size):
    """One epoch as one compiled program, the images on the device -> (params, opt_state, mean loss).

    order int32 (n,): the epoch's image order (mnist_data.epoch_order), so that the batches are the
    DataLoader's. jax.lax.scan runs train_step over the full batches; the last, smaller batch gets
    one more step after it. As in torch_epoch, the mean loss weights each batch by its size.
    """
    full, rest = divmod(order.shape[0], batch_size)

    def one_batch(carry, indices):
        params, opt_state, loss_value = train_step(*carry, hyper, images[indices], labels[indices], name=name)
        return (params, opt_state), loss_value

    batches = order[:full * batch_size].reshape(full, batch_size)
    (params, opt_state), losses = jax.lax.scan(one_batch, (params, opt_state), batches)
    loss_sum = batch_size * jnp.sum(losses)
    if rest:
        last = order[full * batch_size:]
        params, opt_state, last_loss = train_step(params, opt_state, hyper, images[last], labels[last], name=name)
        loss_sum = loss_sum + rest * last_loss
    return params, opt_state, loss_sum / order.shape[0]


# --- Evaluation ------------------------------------------------------------------------


@jax.jit
def predicted_digits(params, images):
    """images uint8 (B, 28, 28) -> predicted digits (B,) int32."""
    return predicted_class(params, inputs_from_uint8(images))


def predict_all(predict, params, images, fetch=jax.device_get):
    """images (N, 28, 28) on the device -> predict(params, chunk) for every chunk of EVAL_CHUNK, fetched to the host
    and joined (numpy)."""
    chunks = [predict(params, images[i:i + EVAL_CHUNK]) for i in range(0, len(images), EVAL_CHUNK)]
    return np.concatenate(fetch(chunks), axis=-1)


def evaluate(predict, params, data, train_accuracy=True, fetch=jax.device_get):
    """The digits predict(params, ...) gives for every split -> {"train", "val", "test": (..., N) or None}: None
    for a split that is not there, or, with train_accuracy=False, not looked at."""
    digits_of = lambda images: None if images is None else predict_all(predict, params, images, fetch)  # noqa
    return dict(train=digits_of(data.train_images) if train_accuracy else None, val=digits_of(data.val_images),
                test=digits_of(data.test_images))


def epoch_record(epoch, train_seconds, eval_seconds, loss_value, digits, data):
    """One epoch of one model -> its record: seconds, mean training loss, and each split's accuracy (or None)."""
    accuracy = lambda predicted, true: None if predicted is None else float(np.mean(predicted == true))  # noqa
    return dict(epoch=epoch, train_seconds=train_seconds, eval_seconds=eval_seconds, train_loss=float(loss_value),
                train_accuracy=accuracy(digits["train"], data.train_digits),
                val_accuracy=accuracy(digits["val"], data.val_digits),
                test_accuracy=accuracy(digits["test"], data.test_digits))


HEADER = "epoch  train s  eval s  train loss  train acc  val acc  test acc"


def log_line(record):
    percent = lambda key: "-" if record[key] is None else f"{100 * record[key]:.2f}%"  # noqa: E731
    return (f"{record['epoch']:>5}  {record['train_seconds']:>7.2f}  {record['eval_seconds']:>6.2f}  "
            f"{record['train_loss']:>10.5f}  {percent('train_accuracy'):>9}  {percent('val_accuracy'):>7}  "
            f"{percent('test_accuracy'):>8}")


# --- The loop --------------------------------------------------------------------------


def initial_state(name, hyper, seed):
    """A new model and its optimizer's state -> {"params", "opt_state"}: what a checkpoint holds."""
    params = init_params(jax.random.key(seed))
    return dict(params=params, opt_state=make_optimizer(name, **hyper).init(params))


def compiled_epoch(config, train_set, data, params, opt_state, hyper):
    """-> run_epoch(params, opt_state, epoch) for config's loader, its programs compiled now, before any clock
    starts, for every batch shape the epoch meets (plumbing/warm_up.py)."""
    name, batch_size, seed, n = config["optimizer"], config["batch_size"], config["seed"], len(train_set)
    if config["loader"] == "torch":
        warm_up.compile_steps(train_step, params, opt_state, hyper, n, batch_size, name=name)
        loader = mnist_data.train_loader(train_set, batch_size, seed)
        return lambda params, opt_state, epoch: torch_epoch(params, opt_state, hyper, epoch, loader, name)
    order = jax.ShapeDtypeStruct((n,), jnp.int32)
    device_epoch.lower(params, opt_state, hyper, data.train_images, data.train_labels, order, name=name,
                       batch_size=batch_size).compile()  # as warm_up does: compiled, not run
    return lambda params, opt_state, epoch: device_epoch(
        params, opt_state, hyper, data.train_images, data.train_labels, mnist_data.epoch_order(n, seed, epoch),
        name=name, batch_size=batch_size)


def train(config, train_set, test_set, val_set=None, log=print, on_epoch=lambda run: None, train_accuracy=True,
          checkpoint_path=None):
    """Train one model as `config` says -> dict(status ("completed", "diverged in epoch N", "interrupted"),
    records (one dict per completed epoch), compile_seconds, test_predictions (N,)).

    config["loader"]: "torch" (a DataLoader, one jitted step per batch) or "device" (each epoch one
    compiled program); both train on the same batches in the same order. on_epoch(run) after every
    epoch. With checkpoint_path, the params and optimizer state are saved there after every epoch, and
    a checkpoint already there is resumed (checkpoint.load_run checks that it is this run's), bit for
    bit as if never stopped. Ctrl-C, wherever it lands, ends training with the epochs completed.
    """
    name, seed = config["optimizer"], config["seed"]
    hyper = {key: jnp.float32(config[key]) for key in hyperparameters(name)}  # data to the step, not constants
    template = jax.eval_shape(lambda: initial_state(name, hyper, seed))  # shapes and dtypes, nothing computed
    done, saved, results = checkpoint.resume_point(checkpoint_path, [config], template)
    run = results[0] if results else dict(status="completed", records=[], compile_seconds=None, test_predictions=None)
    if done == config["epochs"]:
        return run  # nothing left to train
    data = mnist_data.on_device(train_set, val_set, test_set)
    try:
        start = time.perf_counter()
        state = jax.device_put(saved) if saved else initial_state(name, hyper, seed)
        params, opt_state = state["params"], state["opt_state"]
        run_epoch = compiled_epoch(config, train_set, data, params, opt_state, hyper)
        warm_up.compile_predictions(predicted_digits, params, (data.train_images, data.val_images, data.test_images),
                                    EVAL_CHUNK)
        run["compile_seconds"] = time.perf_counter() - start
        log(HEADER)
        for epoch in range(done + 1, config["epochs"] + 1):
            start = time.perf_counter()
            params, opt_state, loss_value = run_epoch(params, opt_state, epoch)
            loss_value = float(loss_value)  # waits for the epoch's last step
            train_seconds = time.perf_counter() - start
            if not math.isfinite(loss_value):
                run["status"] = f"diverged in epoch {epoch}"
                break
            start = time.perf_counter()
            digits = evaluate(predicted_digits, params, data, train_accuracy)
            run["records"].append(epoch_record(epoch, train_seconds, time.perf_counter() - start, loss_value, digits,
                                               data))
            run["test_predictions"] = digits["test"]
            log(log_line(run["records"][-1]))
            if checkpoint_path:  # before the next epoch donates the params' memory
                checkpoint.save_run(checkpoint_path, dict(params=params, opt_state=opt_state), epoch, [config], [run])
            on_epoch(run)
    except KeyboardInterrupt:
        run["status"] = "interrupted" if run["status"] == "completed" else run["status"]
    return run


# --- The command line ----------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a 784-512-512-10 MLP on MNIST with a hand-written optimizer (JAX).",
        epilog="Exit status: 0 done, 2 bad input, 3 the training loss diverged, 130 interrupted.")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd",
                   help="the update rule (default: %(default)s)")
    cli.add_hyperparameter_flags(p)
    cli.add_flags(p, "--epochs", "--batch-size", "--seed", "--train-subset", "--val-size", "--loader",
                  "--data-dir", "--out", "--resume")
    return p


def main(argv=None):
    argv = provenance.record_command(__file__, argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        config = run_folder.resumed_config(parser, argv, args)
    else:
        config = cli.resolve_hyperparameters(parser, vars(args))
        config["out"] = config["out"] or files.default_out_dir("mlp_mnist")
    out = config["out"]
    torch.set_num_threads(1)  # torch only indexes batches; the cores are XLA's
    train_set, val_set, test_set = exits.load_data_or_exit(parser, argparse.Namespace(**config),
                                                           config["batch_size"])
    lines = files.read_log_lines(f"{out}/log.txt") if args.resume else []
    log = lambda line: (print(line), lines.append(line))  # noqa: E731
    save = lambda run: run_folder.save_progress(out, config, run, lines)  # noqa: E731  metrics.json, log.txt
    held_out = f", {len(val_set)} held out for validation" if val_set is not None else ""
    log(f"{config['optimizer']}, lr {config['lr']}, {len(train_set)} training images{held_out}, "
        f"batch {config['batch_size']}, seed {config['seed']}, {config['loader']} loader, on {jax.devices()[0]}"
        + (f"; resumed from {out}/checkpoint.npz" if args.resume else ""))
    try:
        run = train(config, train_set, test_set, val_set, log=log, on_epoch=save,
                    checkpoint_path=f"{out}/checkpoint.npz")
    except checkpoint.CheckpointError as err:
        exits.fail(f"--resume: {err}")
    save(run)
    run_folder.finish(out, config, run, test_set,  # exit 3 or 130 if it did not complete; else model.npz, plots
                      predict=lambda params, images: predict_all(predicted_digits, jax.device_put(params),
                                                                 jax.device_put(images)))


if __name__ == "__main__":
    exits.run_script(main)
