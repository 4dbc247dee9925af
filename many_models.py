"""Many models as one program: seeds and hyperparameters under jax.vmap, sharded across devices.

mlp_mnist.py trains one model. Here S models of one optimizer train at once, each with its
own seed (initial weights and batch order) and its own hyperparameters (lr, mu, rho, beta1,
beta2, eps): the device loader's epoch (mlp_mnist.make_device_epoch) under jax.vmap, over a
leading model axis of the params, the optimizer state, the hyperparameters and the batch
orders. The images are shared. The hyperparameters are data, arrays mapped over like the
params: the optimizer is built inside the mapped function, from traced numbers, so the
optimizers themselves need no change.

With several JAX devices (GPUs, or XLA_FLAGS=--xla_force_host_platform_device_count=N on a
CPU) the model axis is split across them: the models never exchange anything, so each device
trains its share. The axis is padded to a multiple of the device count with copies of the
last model, whose results are dropped.

Each model's steps equal those of mlp_mnist.train with its config, to float rounding; over
many steps Adam can turn rounding differences into visible ones (see docs/04). A model whose
loss diverges stops recording; the others go on.
"""
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import mlp_mnist
import mnist_data
from optimized_sgd import make_optimizer
from train_utils import init_params

HYPERPARAMETERS = ("lr", "mu", "rho", "beta1", "beta2", "eps")  # mapped over, one value per model
SAME_FOR_ALL = ("optimizer", "epochs", "batch_size", "train_subset", "val_size")  # what one program shares


def model_shardings(num_models):
    """-> (sharding of arrays with a leading model axis, sharding of shared arrays, padded model count)."""
    devices = jax.devices()
    padded = math.ceil(num_models / len(devices)) * len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("model",))
    return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model")),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), padded)


def stack_trees(trees):
    """[pytree, ...] (S of them, same structure) -> one pytree whose leaves have a leading axis S."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


_predict_chunk_per_model = jax.jit(jax.vmap(mlp_mnist.predicted_class_uint8, in_axes=(0, None)))  # (S, ...) params


def train_many(configs, train_set, test_set, val_set=None, log=print, train_accuracy=True):
    """Train one model per config, all at once -> [the dict mlp_mnist.train returns, one per config].

    The configs are mlp_mnist configs that differ only in seed and HYPERPARAMETERS (the
    loader is the device loader, whatever they say). train_accuracy=False skips measuring
    the accuracy on the training images each epoch (records hold None): a study that chooses
    on validation data saves that time.
    """
    for key in SAME_FOR_ALL:
        if len({c[key] for c in configs}) > 1:
            raise ValueError(f"train_many: every config must have the same {key}")
    num_models, name, n, batch_size = len(configs), configs[0]["optimizer"], len(train_set), configs[0]["batch_size"]
    statuses, records = ["completed"] * num_models, [[] for _ in configs]
    compile_seconds, test_predictions = None, [None] * num_models
    try:
        start = time.perf_counter()
        per_model, shared, padded = model_shardings(num_models)
        configs = configs + [configs[-1]] * (padded - num_models)
        hyper = jax.device_put({k: np.array([c[k] for c in configs], np.float32) for k in HYPERPARAMETERS}, per_model)
        params = jax.device_put(stack_trees([init_params(jax.random.PRNGKey(c["seed"])) for c in configs]), per_model)
        opt_state = jax.jit(jax.vmap(lambda p, h: make_optimizer(name, **h).init(p)))(params, hyper)
        data = mlp_mnist.device_data(train_set, val_set, test_set, shared)

        def epoch(params, opt_state, hyper, images, labels, order):
            optimizer = make_optimizer(name, **hyper)  # lr, eps, ... traced: one model's numbers
            return mlp_mnist.make_device_epoch(optimizer, n, batch_size)(params, opt_state, images, labels, order)

        order_spec = jax.ShapeDtypeStruct((padded, n), jnp.int32, sharding=per_model)
        compiled = jax.jit(jax.vmap(epoch, in_axes=(0, 0, 0, None, None, 0)), donate_argnums=(0, 1)).lower(
            params, opt_state, hyper, data.train_images, data.train_labels, order_spec).compile()
        orders = [mnist_data.epoch_orders(n, batch_size, c["seed"]) for c in configs]
        mlp_mnist.warm_up_predictions(params, data, _predict_chunk_per_model)
        compile_seconds = time.perf_counter() - start

        log(mlp_mnist.log_header(f"{'model':>5}  "))
        for epoch_number in range(1, configs[0]["epochs"] + 1):
            start = time.perf_counter()
            order = jax.device_put(np.stack([next(o) for o in orders]), per_model)  # every model's batches
            params, opt_state, train_losses = compiled(params, opt_state, hyper, data.train_images,
                                                       data.train_labels, order)
            train_losses = jax.device_get(train_losses)  # waits for the epoch
            train_seconds = time.perf_counter() - start
            for i in range(num_models):
                if statuses[i] == "completed" and not math.isfinite(train_losses[i]):
                    statuses[i] = f"diverged in epoch {epoch_number}"
            if "completed" not in statuses:
                break
            start = time.perf_counter()
            predictions = mlp_mnist.evaluate(params, data, _predict_chunk_per_model, train_accuracy)
            eval_seconds = time.perf_counter() - start
            for i in range(num_models):
                if statuses[i] != "completed":
                    continue
                mine = tuple(None if p is None else p[i] for p in predictions)
                records[i].append(mlp_mnist.epoch_record(epoch_number, train_seconds, eval_seconds,
                                                         train_losses[i], mine, data))
                test_predictions[i] = mine[2]
                log(mlp_mnist.log_line(records[i][-1], f"{i:>5}  "))
    except KeyboardInterrupt:
        statuses = ["interrupted" if status == "completed" else status for status in statuses]
    return [dict(status=status, records=model_records, compile_seconds=compile_seconds, test_predictions=predicted)
            for status, model_records, predicted in zip(statuses, records, test_predictions)]
