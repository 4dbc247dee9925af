"""Train a 784-512-512-10 MLP on MNIST, from scratch in JAX, with a hand-written optimizer.

    python mlp_mnist.py --optimizer adam --lr 0.001
    python mlp_mnist.py --optimizer momentum --loader device      # each epoch one compiled program

Read it top to bottom: the data, one jitted training step, the epoch, evaluation, the loop,
the command line. The model, the loss and plain SGD are in train_utils.py, the other four
optimizers in optimized_sgd.py; many_models.py runs this same epoch under jax.vmap, for many
models at once. Writes metrics.json, log.txt and three plots into --out (default
runs/mlp_mnist). Exit status: 0 done, 2 bad input, 3 the loss diverged, 130 interrupted.
"""
import argparse
import math
import os
import sys
import time
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import mnist_data
import reporting
from optimized_sgd import OPTIMIZERS, hyperparameters, make_optimizer
from train_utils import LAYER_SIZES, batch_from_uint8, init_params, inputs_from_uint8, loss, predicted_class

# The recipe's defaults (10 epochs, batch 128, seed 0, each optimizer's lr) are the flags' defaults:
# python mlp_mnist.py --help lists them.
EVAL_CHUNK = 2_000  # images per evaluation call: 10,000 at once take longer (appendix A2 measures it)


# --- The data: uint8 images on the device, once -----------------------------------------


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


def device_data(train_set, val_set, test_set):
    """The datasets' images (and the training labels) put on the device once -> Data (None for a set not given)."""
    host = lambda dataset: (None, None) if dataset is None else (dataset.data.numpy(), dataset.targets.numpy())  # noqa
    (val_images, val_digits), (test_images, test_digits) = host(val_set), host(test_set)
    train_images, train_labels, val_images, test_images = jax.device_put(
        (train_set.data.numpy(), train_set.targets.numpy(), val_images, test_images))
    return Data(train_images, train_labels, val_images, test_images, train_set.targets.numpy(), val_digits,
                test_digits)


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


def predict_all(predict, params, images):
    """images (N, 28, 28) on the device -> predict(params, chunk) for every chunk of EVAL_CHUNK, joined (numpy)."""
    chunks = [predict(params, images[i:i + EVAL_CHUNK]) for i in range(0, len(images), EVAL_CHUNK)]
    return np.concatenate(jax.device_get(chunks), axis=-1)


def piece_sizes(n, size):
    """The sizes of the pieces that n items fall into, `size` at a time: each is one compiled shape."""
    return sorted({min(size, n)} | ({n % size} - {0}))


def compile_predictions(predict, params, data):
    """Compile predict for every chunk size evaluation will meet, before any clock starts: by calling it once on
    a real chunk of that size, so that it is compiled for the very shardings evaluation's slices have (under
    many_models' vmap, slices of images replicated across the devices)."""
    for images in (data.train_images, data.val_images, data.test_images):
        for size in piece_sizes(len(images), EVAL_CHUNK) if images is not None else ():
            jax.block_until_ready(predict(params, images[:size]))


def accuracy(predicted, row, digits):
    """predicted (S, N) digits of S models, or None (not measured) -> the accuracy of model `row` against the true
    digits (N,), or None."""
    return None if predicted is None else float(np.mean(predicted[row] == digits))


# --- The loop --------------------------------------------------------------------------


class Models(NamedTuple):
    """What the loop trains: S models of one optimizer (S = 1 here; many_models.py makes more)."""
    params: object  # a pytree; for S > 1 each leaf has a leading model axis of size S
    opt_state: object
    hyper: dict  # {"lr": float32 array, ...}: scalars, or (S,)
    run_epoch: Callable  # (params, opt_state, hyper, epoch) -> (params, opt_state, mean loss: scalar or (S,))
    predict_digits: Callable  # jitted (params, images (B, 28, 28)) -> digits (B,) or (S, B)


def loop(setup, count, data, epochs, log=print, on_epoch=lambda results: None, train_accuracy=True, done=0,
         results=None, save_checkpoint=lambda epoch, params, opt_state, results: None):
    """setup() -> Models (count of them), then epochs done+1 .. `epochs` of training and evaluation -> one dict
    per model: status ("completed", "diverged in epoch N", "interrupted"), records (one dict per completed
    epoch), compile_seconds (setup's), test_predictions (N,).

    A resumed run passes the epochs it has `done` and their `results`; save_checkpoint(epoch, params,
    opt_state, results) saves each finished epoch before the next one starts. A model whose mean loss
    is NaN or infinite stops recording; the others go on. Ctrl-C, wherever it lands (setup included),
    ends the loop with what was completed. Written for S models so that many_models.py runs this same
    loop; for mlp_mnist.py's one model (count 1) the mean loss is one number and the predictions one
    row, which np.atleast_1d and np.atleast_2d turn into S = 1 of each.
    """
    results = results or [dict(status="completed", records=[], compile_seconds=None, test_predictions=None)
                          for _ in range(count)]
    try:
        start = time.perf_counter()
        models = setup()  # the model, the optimizer, every program compiled
        for result in results:
            result["compile_seconds"] = time.perf_counter() - start
        params, opt_state = models.params, models.opt_state
        log(f"{'model  ' if count > 1 else ''}epoch  train s  eval s  train loss  train acc  val acc  test acc")
        for epoch in range(done + 1, epochs + 1):
            start = time.perf_counter()
            params, opt_state, losses = models.run_epoch(params, opt_state, models.hyper, epoch)
            losses = np.atleast_1d(jax.device_get(losses))  # waits for the epoch's last step
            train_seconds = time.perf_counter() - start
            for result, loss_value in zip(results, losses):
                if result["status"] == "completed" and not math.isfinite(loss_value):
                    result["status"] = f"diverged in epoch {epoch}"
            if all(r["status"] != "completed" for r in results):
                break
            start = time.perf_counter()
            digits_of = lambda images: None if images is None else np.atleast_2d(  # noqa: E731
                predict_all(models.predict_digits, params, images))  # (count, N)
            train_digits = digits_of(data.train_images) if train_accuracy else None
            val_digits, test_digits = digits_of(data.val_images), digits_of(data.test_images)
            eval_seconds = time.perf_counter() - start
            for i, result in enumerate(results):
                if result["status"] == "completed":
                    result["records"].append(dict(
                        epoch=epoch, train_seconds=train_seconds, eval_seconds=eval_seconds,
                        train_loss=float(losses[i]), train_accuracy=accuracy(train_digits, i, data.train_digits),
                        val_accuracy=accuracy(val_digits, i, data.val_digits),
                        test_accuracy=accuracy(test_digits, i, data.test_digits)))
                    result["test_predictions"] = None if test_digits is None else test_digits[i]
                    log(log_line(result["records"][-1], f"{i:>5}  " if count > 1 else ""))
            save_checkpoint(epoch, params, opt_state, results)  # before the next epoch donates their memory
            on_epoch(results)
    except KeyboardInterrupt:
        for result in results:
            result["status"] = "interrupted" if result["status"] == "completed" else result["status"]
    return results


def log_line(record, first_column=""):
    percent = lambda key: "-" if record[key] is None else f"{100 * record[key]:.2f}%"  # noqa: E731
    return (f"{first_column}{record['epoch']:>5}  {record['train_seconds']:>7.2f}  {record['eval_seconds']:>6.2f}  "
            f"{record['train_loss']:>10.5f}  {percent('train_accuracy'):>9}  {percent('val_accuracy'):>7}  "
            f"{percent('test_accuracy'):>8}")


def hyper_arrays(config):
    """The optimizer's hyperparameters from a config, as float32 arrays -> {"lr": ..., ...}."""
    return {key: jnp.float32(config[key]) for key in hyperparameters(config["optimizer"])}


def initial_state(name, hyper, seed):
    """A new model and its optimizer's state -> {"params", "opt_state"}: what a checkpoint holds."""
    params = init_params(jax.random.key(seed))
    return dict(params=params, opt_state=make_optimizer(name, **hyper).init(params))


def train(config, train_set, test_set, val_set=None, log=print, on_epoch=lambda results: None, train_accuracy=True,
          checkpoint_path=None):
    """Train one model as `config` says -> dict(status, records, compile_seconds, test_predictions) (see loop).

    config["loader"]: "torch" (a DataLoader, one jitted step per batch) or "device" (each epoch one
    compiled program); both train on the same batches in the same order. With checkpoint_path, the
    params and optimizer state are saved there after every epoch, and a checkpoint already there is
    resumed (checkpoint.load_run checks that it is this run's), bit for bit as if never stopped.
    """
    name, batch_size, seed = config["optimizer"], config["batch_size"], config["seed"]
    hyper = hyper_arrays(config)
    template = jax.eval_shape(lambda: initial_state(name, hyper, seed))  # shapes and dtypes, nothing computed
    done, saved, results = resume_point(checkpoint_path, [config], template)
    if done == config["epochs"]:
        return results[0]  # nothing left to train
    data = device_data(train_set, val_set, test_set)

    def save_checkpoint(epoch, params, opt_state, results):
        if checkpoint_path:
            checkpoint.save_run(checkpoint_path, dict(params=params, opt_state=opt_state), epoch, [config], results)

    def setup():
        state = jax.device_put(saved) if saved else initial_state(name, hyper, seed)
        params, opt_state = state["params"], state["opt_state"]
        if config["loader"] == "torch":  # compiled now, before any clock starts: lower + compile fills jit's cache
            loader = mnist_data.train_loader(train_set, batch_size, seed)
            run_epoch = partial(torch_epoch, loader=loader, name=name)
            for size in piece_sizes(len(train_set), batch_size):
                images = jax.ShapeDtypeStruct((size, 28, 28), jnp.uint8)
                labels = jax.ShapeDtypeStruct((size,), jnp.uint8)
                train_step.lower(params, opt_state, hyper, images, labels, name=name).compile()
        else:
            run_epoch = lambda params, opt_state, hyper, epoch: device_epoch(  # noqa: E731
                params, opt_state, hyper, data.train_images, data.train_labels,
                mnist_data.epoch_order(len(train_set), seed, epoch), name=name, batch_size=batch_size)
            device_epoch.lower(params, opt_state, hyper, data.train_images, data.train_labels,
                               jax.ShapeDtypeStruct((len(train_set),), jnp.int32), name=name,
                               batch_size=batch_size).compile()
        compile_predictions(predicted_digits, params, data)
        return Models(params, opt_state, hyper, run_epoch, predicted_digits)

    return loop(setup, 1, data, config["epochs"], log, on_epoch, train_accuracy, done, results, save_checkpoint)[0]


def resume_point(path, configs, template):
    """Where training starts -> (epochs done, the saved state or None, the results so far or None): from the
    checkpoint at path when there is one (checkpoint.load_run; CheckpointError when it is not these models'),
    else from the start."""
    if not path or not os.path.exists(path):
        return 0, None, None
    return checkpoint.load_run(path, configs, template)


# --- The command line ----------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a 784-512-512-10 MLP on MNIST with a hand-written optimizer (JAX).",
        epilog="Exit status: 0 done, 2 bad input, 3 the training loss diverged, 130 interrupted.")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd",
                   help="the update rule (default: %(default)s)")
    reporting.add_hyperparameter_flags(p)
    reporting.add_flags(p, "--epochs", "--batch-size", "--seed", "--train-subset", "--val-size", "--loader",
                        "--data-dir", "--out", "--resume")
    return p


def resumed_config(parser, argv, args):
    """--resume DIR -> the run's config, from DIR/checkpoint.npz, with --epochs (which may grow) and --data-dir as
    given now. Any other flag given must agree with the run's; anything amiss ends with one line, exit 2."""
    out = args.resume
    if not os.path.isfile(f"{out}/checkpoint.npz"):
        reporting.fail(f"--resume {out}: holds no run to resume (no checkpoint.npz there)")
    try:
        _, meta = checkpoint.read_run(f"{out}/checkpoint.npz")
    except checkpoint.CheckpointError as err:
        reporting.fail(f"--resume: {err}")
    config = reporting.check_resumed_flags(parser, argv, meta["configs"][0], f"--resume {out}")
    metrics = reporting.read_json_or_none(f"{out}/metrics.json")
    status, records = (metrics.get("status"), metrics.get("epochs")) if isinstance(metrics, dict) else (None, None)
    if str(status).startswith("diverged"):
        reporting.fail(f"--resume {out}: the run {status}; resuming would only repeat it: start a new run with a "
                       f"smaller --lr")
    if isinstance(records, list) and len(records) > meta["epoch"]:
        reporting.fail(f"--resume {out}: metrics.json holds {len(records)} epochs, checkpoint.npz only "
                       f"{meta['epoch']}: resuming would lose epochs (was checkpoint.npz replaced?)")
    if meta["epoch"] >= config["epochs"] and os.path.exists(f"{out}/model.npz"):
        reporting.fail(f"--resume {out}: the run already has its {meta['epoch']} epochs; give --epochs N (more) to "
                       f"train on")
    return dict(config, data_dir=args.data_dir, out=out, resume=out)


def main(argv=None):
    argv = reporting.record_command(__file__, argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        config = resumed_config(parser, argv, args)
    else:
        config = reporting.resolve_hyperparameters(parser, vars(args))
        config["out"] = config["out"] or reporting.default_out_dir("mlp_mnist")
    out = config["out"]
    torch.set_num_threads(1)  # torch only indexes batches; the cores are XLA's
    train_set, val_set, test_set = reporting.load_data_or_exit(parser, argparse.Namespace(**config),
                                                               config["batch_size"])
    lines = reporting.read_log_lines(f"{out}/log.txt") if args.resume else []
    log = lambda line: (print(line), lines.append(line))  # noqa: E731

    def save(results):
        run = results[0]
        kept = (f"{out}/metrics.json keeps what it held before" if os.path.exists(f"{out}/metrics.json")
                else f"{out}/checkpoint.npz holds the finished epochs" if os.path.exists(f"{out}/checkpoint.npz")
                else "nothing was saved")
        reporting.write_or_fail(f"{out}/metrics.json", lambda path: reporting.write_json(path, dict(
            config=config, layer_sizes=list(LAYER_SIZES), status=run["status"], completed_epochs=len(run["records"]),
            compile_seconds=run["compile_seconds"], epochs=run["records"])), kept)
        reporting.write_or_fail(f"{out}/log.txt", lambda path: reporting.write_text(path, "\n".join(lines)), kept)

    held_out = f", {len(val_set)} held out for validation" if val_set is not None else ""
    log(f"{config['optimizer']}, lr {config['lr']}, {len(train_set)} training images{held_out}, "
        f"batch {config['batch_size']}, seed {config['seed']}, {config['loader']} loader, on {jax.devices()[0]}"
        + (f"; resumed from {out}/checkpoint.npz" if args.resume else ""))
    try:
        run = train(config, train_set, test_set, val_set, log=log, on_epoch=save,
                    checkpoint_path=f"{out}/checkpoint.npz")
    except checkpoint.CheckpointError as err:
        reporting.fail(f"--resume: {err}")
    save([run])
    if run["status"].startswith("diverged"):
        reporting.fail(f"the training loss {run['status']} (NaN or infinite): try a smaller --lr than {config['lr']}; "
                       f"{out}/metrics.json holds the {len(run['records'])} epochs before it", reporting.EXIT_DIVERGED)
    if run["status"] == "interrupted":
        print(f"interrupted after {len(run['records'])} completed epochs; {out}/metrics.json holds them, and "
              f"python mlp_mnist.py --resume {out} --epochs {config['epochs']} goes on from checkpoint.npz",
              file=sys.stderr)
        sys.exit(reporting.EXIT_INTERRUPTED)
    reporting.write_or_fail(f"{out}/model.npz", lambda path: checkpoint.save_model(
        f"{out}/checkpoint.npz", path, test_accuracy=run["records"][-1]["test_accuracy"]),
        f"{out}/checkpoint.npz holds the trained params")
    title = f"{config['optimizer']}, lr {config['lr']:g}, seed {config['seed']}"
    note = " (at the look-ahead theta - mu v)" if config["optimizer"] == "nesterov" else ""
    images, labels = test_set.data.numpy(), test_set.targets.numpy()
    if run["test_predictions"] is None:  # a run resumed only to finish its files: predict with the saved params
        params, _ = checkpoint.load_model(f"{out}/model.npz")
        run["test_predictions"] = predict_all(predicted_digits, jax.device_put(params), jax.device_put(images))

    def plots(out):
        reporting.plot_run_curves(run["records"], title, f"{out}/curves.png", loss_note=note)
        reporting.plot_confusion(labels, run["test_predictions"], f"test set, {title}", f"{out}/confusion.png")
        reporting.plot_misclassified(images, labels, run["test_predictions"], f"{out}/misclassified.png")

    reporting.write_or_fail(out, plots, f"{out}/metrics.json holds the results")
    print(f"wrote {out}/metrics.json, log.txt, checkpoint.npz, model.npz, curves.png, confusion.png, "
          f"misclassified.png")


if __name__ == "__main__":
    reporting.run_script(main)
