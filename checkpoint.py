"""Save a pytree to one .npz file and put it back: the checkpoint every epoch, and the trained model.

A pytree (the params: a list of (w, b) pairs; an optimizer state: a NamedTuple of such lists) is
flattened with the path to each leaf, jax.tree_util.tree_flatten_with_path, and each leaf is
stored under its path as its name: "params/0/0" is layer 1's w, "opt_state/mean/2/1" Adam's m of
the last layer's b, "opt_state/step" Adam's int32 step count. So NumPy alone reads the file:

    np.load("runs/mlp_mnist/model.npz")["params/0/0"]    # layer 1's weights, float32 (784, 512)

Restoring goes the other way, onto a template: the tree the run would build, its shapes and
dtypes from jax.eval_shape (nothing computed). Every leaf is checked against it, so a file cannot
hand a run an array of another shape or dtype, nor leave one out, nor slip in one it does not use.
A JSON text rides along under the name "meta": the epoch, the configs, the records, provenance.
"""
import json
import os
import sys
import zipfile

import jax
import numpy as np

from plumbing import files, provenance
from train_utils import LAYER_SIZES, init_params

META = "meta"  # the name of the JSON text beside the arrays


class CheckpointError(Exception):
    """A checkpoint or model file that cannot be used; the message is one line for the user."""


def leaf_name(path):
    """A leaf's path in its pytree -> its name in the file: [GetAttrKey('mean'), SequenceKey(2)] -> 'mean/2'."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def save(path, tree, meta):
    """tree (a pytree of arrays) and meta (a dict that JSON can write) -> one .npz at path, written atomically.

    np.asarray copies each leaf to the host and waits for it: call this before the arrays are donated.
    """
    arrays = {leaf_name(p): np.asarray(leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    arrays[META] = np.array(json.dumps(meta))
    files.write_npz(path, arrays)


def read(path):
    """An .npz that save() wrote -> ({name: array}, meta); CheckpointError when it is missing or damaged."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reads every array now: a bad one fails here
        meta = json.loads(str(arrays.pop(META)))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except KeyError:
        raise CheckpointError(f"{path}: not a checkpoint of this repository (no '{META}' in it)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: cannot be read, truncated or corrupt ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this repository (its '{META}' is not a JSON object)")
    return arrays, meta


def restore(arrays, template, prefix=""):
    """The arrays read() returned, onto template (a pytree of jax.ShapeDtypeStruct, from jax.eval_shape) -> the
    pytree, its leaves NumPy arrays. Only names under `prefix` ("params/" for a model) count. Any leaf missing,
    left over, or of another shape or dtype raises CheckpointError naming it."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [prefix + leaf_name(p) for p, _ in leaves]
    extra = sorted(name for name in arrays if name.startswith(prefix) and name not in names)
    if extra:
        raise CheckpointError(f"holds {extra[0]}, which this run has no use for (another optimizer or model?)")
    restored = []
    for name, (_, want) in zip(names, leaves):
        if name not in arrays:
            raise CheckpointError(f"has no {name}, which this run needs (another optimizer or model?)")
        array = arrays[name]
        if array.shape != want.shape or array.dtype != want.dtype:
            raise CheckpointError(f"{name} is {array.dtype} {array.shape}, this run's is {want.dtype} {want.shape} "
                                  f"(other layer sizes or another number of models?)")
        restored.append(array)
    return jax.tree_util.tree_unflatten(treedef, restored)


# --- A run's checkpoint: the state after its last finished epoch --------------------------------
# {"params": ..., "opt_state": ...} as above, for one model, or for S models with a leading model axis on every
# leaf (many_models.py). meta: the epoch, each model's config and what it recorded, provenance.

MAY_CHANGE_ON_RESUME = ("epochs", "data_dir", "out", "resume")  # the rest of a config must be the run's


def save_run(path, state, epoch, configs, results):
    """state {"params", "opt_state"} after `epoch` epochs of the models `configs`, and their results -> path."""
    runs = [dict(status=r["status"], records=r["records"], compile_seconds=r["compile_seconds"]) for r in results]
    save(path, state, dict(kind="ML_in_JAX checkpoint", epoch=epoch, configs=configs, runs=runs,
                           layer_sizes=list(LAYER_SIZES), provenance=provenance.provenance()))


def read_run(path):
    """A training checkpoint -> (arrays, meta); CheckpointError when it is missing, damaged or something else."""
    arrays, meta = read(path)
    try:
        usable = (meta["kind"] == "ML_in_JAX checkpoint" and len(meta["runs"]) == len(meta["configs"]) >= 1
                  and type(meta["epoch"]) is int and meta["epoch"] >= 0
                  and all(type(c) is dict and type(c.get("epochs")) is int for c in meta["configs"])
                  and all(type(r) is dict and type(r.get("records")) is list and type(r.get("status")) is str
                          for r in meta["runs"])
                  and isinstance(meta["provenance"]["code"]["files"], dict))
    except (KeyError, TypeError):
        usable = False
    if not usable:
        raise CheckpointError(f"{path}: not a training checkpoint (a model file? a run resumes from its "
                              f"checkpoint.npz)")
    return arrays, meta


def load_run(path, configs, template):
    """The checkpoint at path, for the models `configs` -> (epochs done, state on template, their results).

    Refused (CheckpointError) when it is not a checkpoint of these models: other settings (an optimizer, a
    learning rate, a seed, ...; only epochs may grow), another number of models, other code (a .py file the
    training imports has changed since: bit for bit needs the same program), or arrays that do not fit."""
    arrays, meta = read_run(path)
    saved, epoch, then = meta["configs"], meta["epoch"], meta["provenance"]["code"]["files"]
    if len(saved) != len(configs):
        raise CheckpointError(f"{path}: holds {len(saved)} models, this run trains {len(configs)}")
    for old, new in zip(saved, json.loads(json.dumps(configs))):  # as JSON has them: tuples become lists
        for key in sorted((set(old) | set(new)) - set(MAY_CHANGE_ON_RESUME)):
            if old.get(key) != new.get(key):
                raise CheckpointError(f"{path}: is from a run with {key} {old.get(key)}, not {new.get(key)} "
                                      f"(only --epochs may change)")
        if epoch > new["epochs"]:
            raise CheckpointError(f"{path}: already holds {epoch} epochs, more than --epochs {new['epochs']}")
    now = provenance.code_version()["files"]
    changed = sorted(name for name in set(then) & set(now) if then[name] != now[name])
    if changed:
        raise CheckpointError(f"{path}: was written by other code: {', '.join(changed)} changed since, so the run "
                              f"would not go on as it began (check out the code that wrote it, or start anew)")
    warn_if_elsewhere(path, meta["provenance"], provenance.provenance())
    try:
        state = restore(arrays, template)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return epoch, state, [dict(r, test_predictions=None) for r in meta["runs"]]


def compiled_for(info):
    """What of a provenance() decides the code XLA compiles: the library versions, the devices, the CPU's AVX-512."""
    versions, device, machine = info.get("versions") or {}, info.get("device") or {}, info.get("machine") or {}
    return {"jax": versions.get("jax"), "jaxlib": versions.get("jaxlib"), "device count": device.get("count"),
            "device kind": device.get("kind"), "AVX-512": machine.get("avx512")}


def warn_if_elsewhere(path, then, now):
    """A note on stderr when a run resumes with other library versions, devices or CPU instructions than it began
    with: it goes on, but XLA may compile other code, which may round differently (then not bit for bit)."""
    before, after = compiled_for(then), compiled_for(now)
    differ = [f"{key} {before[key]} (now {after[key]})" for key in before if before[key] != after[key]]
    if differ:
        print(f"note: {path} was written with {', '.join(differ)}: the run goes on, but not necessarily bit for "
              f"bit", file=sys.stderr)


# --- The trained model: the params alone ----------------------------------------------------------


def save_model(checkpoint_path, path, **info):
    """The params of the one-model checkpoint at checkpoint_path -> path (model.npz), with the run's config, its
    epochs, the layer sizes and `info` (the test accuracy) in meta."""
    arrays, meta = read(checkpoint_path)
    params = {name: array for name, array in arrays.items() if name.startswith("params/")}
    params[META] = np.array(json.dumps(dict(kind="ML_in_JAX model", config=meta["configs"][0], epoch=meta["epoch"],
                                            layer_sizes=list(LAYER_SIZES), provenance=provenance.provenance(), **info)))
    files.write_npz(path, params)


def load_model(path):
    """A model.npz (or a one-model checkpoint.npz) -> (params, meta): exactly a model of meta's layer sizes."""
    arrays, meta = read(path)
    try:
        sizes = tuple(meta.get("layer_sizes", LAYER_SIZES))
        return restore(arrays, jax.eval_shape(lambda: init_params(jax.random.key(0), sizes)), prefix="params/"), meta
    except (CheckpointError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def resume_point(path, configs, template):
    """Where training starts -> (epochs done, the saved state or None, the results so far or None): from the
    checkpoint at path when there is one (load_run; CheckpointError when it is not these models'), else from
    the start."""
    if not path or not os.path.exists(path):
        return 0, None, None
    return load_run(path, configs, template)
