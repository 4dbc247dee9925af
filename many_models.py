"""Many models as one program: mlp_mnist's epoch, written for one model, under jax.vmap.

mlp_mnist.py trains one model. Here S models of one optimizer train at once, each with its own
seed (initial weights and batch order) and its own hyperparameters (lr, mu, rho, beta1, beta2,
eps). The epoch is mlp_mnist.device_epoch, written for one model, unchanged; the loop here is
mlp_mnist.train's, for S models: S losses, S rows of predictions, each model's own records.

    jax.vmap(mlp_mnist.device_epoch, in_axes=(0, 0, 0, None, None, 0))

maps the epoch over a leading model axis of its first three arguments, the params, the
optimizer state and the hyperparameters, and of its last, the batch order; `None` means the
images and labels are shared, not mapped. The hyperparameters are float32 arrays, data like
the params, so one compiled program serves every grid of them.

With several JAX devices (GPUs, or JAX_NUM_CPU_DEVICES=N, JAX's own setting, on a
CPU) the model axis is split across them: the models never exchange anything, so each device
trains its share. The axis is padded to a multiple of the device count with copies of the
last model, whose results are dropped.
"""
import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import checkpoint
import mlp_mnist
import mnist_data
from plumbing import processes, warm_up
from optimized_sgd import hyperparameters

SAME_FOR_ALL = ("optimizer", "epochs", "batch_size", "train_subset", "val_size")  # what one program shares


def model_shardings(num_models):
    """-> (sharding of arrays with a leading model axis, sharding of shared arrays, padded model count)."""
    devices = jax.devices()
    padded = -(-num_models // len(devices)) * len(devices)
    mesh = jax.make_mesh((len(devices),), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model")),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), padded)


@partial(jax.jit, static_argnames=("name", "batch_size"), donate_argnames=("params", "opt_state"))
def many_epochs(params, opt_state, hyper, images, labels, orders, name, batch_size):
    """mlp_mnist.device_epoch for S models at once: params, opt_state, hyper and orders (S, n) have a model axis."""
    one_model = lambda p, s, h, i, l, o: mlp_mnist.device_epoch(p, s, h, i, l, o, name=name,  # noqa: E731
                                                                batch_size=batch_size)
    return jax.vmap(one_model, in_axes=(0, 0, 0, None, None, 0))(params, opt_state, hyper, images, labels, orders)


many_predictions = jax.jit(jax.vmap(mlp_mnist.predicted_digits, in_axes=(0, None)))  # params (S, ...) -> (S, B)


def initial_states(name, hyper, seeds):
    """S new models and their optimizer states -> {"params", "opt_state"}, NumPy leaves with a model axis (S, ...).

    hyper: {key: (S,)}; seeds: S ints. Each model is made by mlp_mnist.initial_state, one at a time and op by op,
    exactly as a model trained alone is made: the same draw compiled as one program (jit, or vmap under jit)
    rounds about a quarter of the weights differently in the last bit, and the models would then no longer
    be the ones mlp_mnist.py trains (tests/test_training.py compares the two)."""
    made = [jax.device_get(mlp_mnist.initial_state(name, {k: v[i] for k, v in hyper.items()}, int(seed)))
            for i, seed in enumerate(seeds)]
    return jax.tree.map(lambda *leaves: np.stack(leaves), *made)


def with_model_axis(name, hyper, count):
    """The shapes and dtypes of initial_states' result for `count` models, nothing computed (a checkpoint's
    template). hyper: one model's {key: value}."""
    one = jax.eval_shape(lambda: mlp_mnist.initial_state(name, hyper, 0))
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((count, *leaf.shape), leaf.dtype), one)


def train_many(configs, train_set, test_set, val_set=None, log=print, on_epoch=lambda runs: None,
               train_accuracy=True, checkpoint_path=None):
    """Train one model per config, all at once -> [the dict mlp_mnist.train returns, one per config].

    The configs are mlp_mnist configs that differ only in seed and hyperparameters (the loader is
    the device loader, whatever they say). train_accuracy=False skips the accuracy on the training
    images (records hold None): a study that chooses on validation data saves that time. A model
    whose loss turns NaN or infinite stops recording; the others go on. on_epoch(runs) after every
    epoch; with checkpoint_path, as mlp_mnist.train: one checkpoint for all of them, every leaf with
    the model axis. Ctrl-C, wherever it lands, ends training with the epochs completed.
    """
    for key in SAME_FOR_ALL:
        if len({c[key] for c in configs}) > 1:
            raise ValueError(f"train_many: every config must have the same {key}")
    name, batch_size, n, count = configs[0]["optimizer"], configs[0]["batch_size"], len(train_set), len(configs)
    hyper_of = lambda configs: {key: np.array([c[key] for c in configs], np.float32)  # noqa: E731
                                for key in hyperparameters(name)}
    template = with_model_axis(name, {k: v[0] for k, v in hyper_of(configs).items()}, count)
    done, saved, runs = checkpoint.resume_point(checkpoint_path, configs, template)
    runs = runs or [dict(status="completed", records=[], compile_seconds=None, test_predictions=None)
                    for _ in configs]
    if done == configs[0]["epochs"]:
        return runs  # nothing left to train
    per_model, shared, padded = model_shardings(count)
    padded_configs = configs + [configs[-1]] * (padded - count)  # copies of the last model; their results dropped
    data = mnist_data.on_device(train_set, val_set, test_set)
    data = data._replace(**{field: processes.put(np.asarray(getattr(data, field)), shared)  # every device: all
                            for field in ("train_images", "train_labels", "val_images", "test_images")
                            if getattr(data, field) is not None})
    try:
        start = time.perf_counter()
        hyper = jax.tree.map(lambda leaf: processes.put(leaf, per_model), hyper_of(padded_configs))
        if saved:  # the padding models: copies of the last one, as it is now (they always were its copies)
            pad = lambda leaf: np.concatenate([leaf] + [leaf[-1:]] * (padded - count))  # noqa: E731
            state = jax.tree.map(lambda leaf: processes.put(pad(leaf), per_model), saved)
        else:  # every process makes every model (milliseconds each), then places its own devices' part
            state = jax.tree.map(lambda leaf: processes.put(leaf, per_model),
                                 initial_states(name, hyper_of(padded_configs), [c["seed"] for c in padded_configs]))
        params, opt_state = state["params"], state["opt_state"]
        order_spec = jax.ShapeDtypeStruct((padded, n), jnp.int32, sharding=per_model)
        many_epochs.lower(params, opt_state, hyper, data.train_images, data.train_labels, order_spec, name=name,
                          batch_size=batch_size).compile()  # now, before any clock starts
        warm_up.compile_predictions(many_predictions, params, (data.train_images, data.val_images, data.test_images),
                                    mlp_mnist.EVAL_CHUNK)
        for run in runs:
            run["compile_seconds"] = time.perf_counter() - start
        log(f"model  {mlp_mnist.HEADER}")
        for epoch in range(done + 1, configs[0]["epochs"] + 1):
            start = time.perf_counter()
            orders = processes.put_rows((padded, n), per_model, lambda start, stop, epoch=epoch: np.stack(
                [mnist_data.epoch_order(n, c["seed"], epoch) for c in padded_configs[start:stop]]))  # own rows only
            params, opt_state, losses = many_epochs(params, opt_state, hyper, data.train_images, data.train_labels,
                                                    orders, name=name, batch_size=batch_size)
            losses = processes.gather(losses)[:count]  # waits for the epoch's last step
            train_seconds = time.perf_counter() - start
            for run, loss_value in zip(runs, losses):
                if run["status"] == "completed" and not math.isfinite(loss_value):
                    run["status"] = f"diverged in epoch {epoch}"
            if all(run["status"] != "completed" for run in runs):
                break
            start = time.perf_counter()
            digits = mlp_mnist.evaluate(many_predictions, params, data, train_accuracy,  # each (padded, N) or None
                                        fetch=processes.gather)
            eval_seconds = time.perf_counter() - start
            for i, run in enumerate(runs):
                if run["status"] == "completed":
                    mine = {split: None if d is None else d[i] for split, d in digits.items()}
                    run["records"].append(mlp_mnist.epoch_record(epoch, train_seconds, eval_seconds, losses[i], mine,
                                                                 data))
                    run["test_predictions"] = mine["test"]
                    log(f"{i:>5}  {mlp_mnist.log_line(run['records'][-1])}")
            if checkpoint_path:  # the real models only, before the next epoch donates their memory
                state = jax.tree.map(lambda leaf: leaf[:count], processes.gather(dict(params=params,
                                                                                        opt_state=opt_state)))
                checkpoint.save_run(checkpoint_path, state, epoch, configs, runs)
            on_epoch(runs)
    except KeyboardInterrupt:
        for run in runs:
            run["status"] = "interrupted" if run["status"] == "completed" else run["status"]
    return runs
