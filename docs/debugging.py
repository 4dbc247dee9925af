"""JAX's own debugging tools, one small demo each (docs/09-when-it-goes-wrong.md walks through them).

    python docs/debugging.py nans      # jax_debug_nans finds the operation that made the first NaN
    python docs/debugging.py print     # jax.debug.print inside jit, against Python's print
    python docs/debugging.py tracer    # a Python `if` on a traced value, and three fixes
    python docs/debugging.py jaxpr     # jax.make_jaxpr: the program jit compiles
    python docs/debugging.py profile --out runs/profile   # jax.profiler.trace around a few steps

Every demo runs on a small synthetic batch (no MNIST) in seconds, with the repository's model
(train_utils.py). Each ends with status 0 and prints what a learner should look at.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import train_utils  # noqa: E402  the model: init_params, batched_layer_inputs, loss


def synthetic_batch(n=128, seed=0):
    """n images like MNIST's, raw pixels 0-255: ten random sparse "digits", 10% of each image's strokes dropped."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    digits = 255.0 * (rng.random((10, 784)) < 0.2)
    return (digits[labels] * (rng.random((n, 784)) < 0.9)).astype(np.float32), labels


def logits(params, images):
    """images (B, 784) -> logits (B, 10): the repository's network, before its log-softmax."""
    w, b = params[-1]
    return train_utils.batched_layer_inputs(params, images)[-1] @ w + b


def textbook_loss(params, images, labels):
    """The usual cross-entropy, as a textbook writes it: the log of the softmax."""
    probabilities = jax.nn.softmax(logits(params, images))
    return -jnp.mean(jnp.sum(jax.nn.one_hot(labels, 10) * jnp.log(probabilities), axis=1))


def stable_loss(params, images, labels):
    """The same cross-entropy from log_softmax (logits - logsumexp): no log(0), ever."""
    return -jnp.mean(jnp.sum(jax.nn.one_hot(labels, 10) * jax.nn.log_softmax(logits(params, images)), axis=1))


def recipe_loss(params, images, labels):
    """The repository's loss, train_utils.loss: cross-entropy / 10."""
    return train_utils.loss(params, (images, jax.nn.one_hot(labels, 10)))


def sgd_step(loss, lr):
    """-> step(params, images, labels) -> (new params, the loss before the step): one plain SGD step."""
    def step(params, images, labels):
        value, grads = jax.value_and_grad(loss)(params, images, labels)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), value
    return step


def global_norm(tree):
    """The Euclidean norm of all the leaves of a pytree together."""
    return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(tree)))


def train(step, steps=6):
    """Run `step` from the same initial params on the same batch; print each loss; stop after the first NaN."""
    params, (images, labels) = train_utils.init_params(jax.random.key(0)), synthetic_batch()
    for number in range(1, steps + 1):
        params, value = step(params, images, labels)
        print(f"   step {number}: loss {float(value):.4g}")  # 4 digits: float32's last bits can vary by machine
        if np.isnan(value):
            return


# --- nans ---------------------------------------------------------------------------------------


def nans(args):
    print("The textbook cross-entropy at lr 1.0 on raw 0-255 pixels, with jax_debug_nans on, under jax.disable_jit():")
    jax.config.update("jax_debug_nans", True)  # check the values every operation makes; raise at the first NaN
    try:
        with jax.disable_jit():  # run operation by operation, each one checked
            train(sgd_step(textbook_loss, 1.0))
        print("   no NaN was found")
    except FloatingPointError as err:
        print(f"   FloatingPointError: {err}")
        ours = [frame for frame in traceback.extract_tb(err.__traceback__) if frame.filename == __file__]
        print(f"   raised in {ours[-1].name}(), line {ours[-1].lineno}: {ours[-1].line}")
        if "in mul" in str(err):
            print("   mul is one_hot * log(p): a probability p underflowed to 0, log(0) = -inf, and 0 * -inf = nan.")
        print()

    print("The same steps, the flag still on, the step jitted:")
    try:
        train(jax.jit(sgd_step(textbook_loss, 1.0)))
        print("   no error: the check missed it; look for NaNs under jax.disable_jit(), as above\n")
    except FloatingPointError as err:
        print(f"   FloatingPointError: {str(err).splitlines()[0][:100]}\n")
    jax.config.update("jax_debug_nans", False)

    print("Fix 1: log_softmax instead of log(softmax). Still at lr 1.0, the loss now explodes before its NaN:")
    train(jax.jit(sgd_step(stable_loss, 1.0)))
    print("Fix 2: the recipe's loss, cross-entropy / 10, at lr 0.1 (the rate chapter 6 chose for plain SGD):")
    train(jax.jit(sgd_step(recipe_loss, 0.1)))


# --- print --------------------------------------------------------------------------------------


@jax.jit
def printing_step(params, images, labels):
    value, grads = jax.value_and_grad(recipe_loss)(params, images, labels)
    print(f"   Python's print, while jit traces the step: loss = {value}")
    jax.debug.print("   jax.debug.print, as the step runs: loss {value:.4f}, gradient norm {norm:.4f}",
                    value=value, norm=global_norm(grads))
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)


def print_demo(args):
    params, (images, labels) = train_utils.init_params(jax.random.key(0)), synthetic_batch()
    for number in range(1, 4):
        print(f"calling the jitted step, time {number}:")
        params = jax.block_until_ready(printing_step(params, images, labels))  # wait: the step prints as it runs


# --- tracer -------------------------------------------------------------------------------------


def clip_with_if(grads, max_norm):
    """Scale the gradients down to max_norm when their norm is larger: with a Python `if` (wrong under jit)."""
    norm = global_norm(grads)
    if norm > max_norm:
        return jax.tree.map(lambda g: g * max_norm / norm, grads)
    return grads


def clip_with_where(grads, max_norm):
    """The same, with jnp.where: both branches computed, one chosen element by element."""
    norm = global_norm(grads)
    return jax.tree.map(lambda g: g * jnp.where(norm > max_norm, max_norm / norm, 1.0), grads)


def clip_with_cond(grads, max_norm):
    """The same, with jax.lax.cond: one branch chosen, as the program runs."""
    norm = global_norm(grads)
    return jax.lax.cond(norm > max_norm, lambda g: jax.tree.map(lambda x: x * max_norm / norm, g), lambda g: g, grads)


def maybe_clip(grads, max_norm, clip):
    """`clip` is a Python bool: declared static, it is part of the program and a Python `if` on it is fine."""
    return clip_with_where(grads, max_norm) if clip else grads


def tracer(args):
    params, (images, labels) = train_utils.init_params(jax.random.key(0)), synthetic_batch()
    grads = jax.grad(recipe_loss)(params, images, labels)
    print(f"the gradient norm: {float(global_norm(grads)):.4f}; clip it to 1.0")
    try:
        jax.jit(clip_with_if)(grads, 1.0)
    except jax.errors.TracerBoolConversionError as err:  # a ConcretizationTypeError
        print(f"jax.jit(clip_with_if): {type(err).__name__}: {str(err).splitlines()[0]}")
    for fix in (clip_with_where, clip_with_cond):
        print(f"jax.jit({fix.__name__}): norm after clipping {float(global_norm(jax.jit(fix)(grads, 1.0))):.4f}")
    static = jax.jit(maybe_clip, static_argnames="clip")
    for clip in (True, False):
        print(f"jax.jit(maybe_clip, static_argnames='clip'), clip={clip}: "
              f"norm {float(global_norm(static(grads, 1.0, clip=clip))):.4f}")


# --- jaxpr --------------------------------------------------------------------------------------


def jaxpr(args):
    params, (images, labels) = train_utils.init_params(jax.random.key(0)), synthetic_batch(n=4)
    print("jax.make_jaxpr(train_utils.predict)(params, image), the model for one image:")
    print(jax.make_jaxpr(train_utils.predict)(params, images[0]))
    step = jax.make_jaxpr(sgd_step(recipe_loss, 0.1))(params, images, labels)
    counts = collections.Counter(equation.primitive.name for equation in step.jaxpr.eqns)
    print(f"\nthe SGD step (loss, gradient, update) on a batch of {len(images)}: "
          f"{len(step.jaxpr.eqns)} equations at its top level:")
    print("   " + ", ".join(f"{name} {count}" for name, count in counts.most_common()))


# --- profile ------------------------------------------------------------------------------------


def profile(args):
    params, (images, labels) = train_utils.init_params(jax.random.key(0)), synthetic_batch()
    train_step = jax.jit(sgd_step(recipe_loss, 0.1))
    params, _ = train_step(params, images, labels)  # compile before tracing: the trace then shows the steps
    with jax.profiler.trace(args.out, create_perfetto_trace=True):
        for _ in range(5):
            params, value = train_step(params, images, labels)
        value.block_until_ready()  # wait for the last step to finish inside the trace
    written = sorted(glob.glob(os.path.join(args.out, "**", "*.*"), recursive=True))
    print(f"jax.profiler.trace wrote {len(written)} files under {args.out}:")
    for path in written:
        print(f"   {path}")
    for path in (p for p in written if p.endswith(".trace.json.gz")):
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
        calls = sum(1 for event in events if event.get("name") == "PjitFunction(step)")
        print(f"{os.path.basename(path)}: {len(events)} events, {calls} of them named PjitFunction(step), "
              "the jitted step")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    demos = parser.add_subparsers(dest="demo", required=True)
    for name, run, what in (("nans", nans, "jax_debug_nans finds the first NaN"),
                            ("print", print_demo, "jax.debug.print inside jit"),
                            ("tracer", tracer, "a Python if on a traced value, and the fixes"),
                            ("jaxpr", jaxpr, "jax.make_jaxpr of the model and of the training step"),
                            ("profile", profile, "jax.profiler.trace around a few training steps")):
        demo = demos.add_parser(name, help=what)
        demo.set_defaults(run=run)
        if name == "profile":
            demo.add_argument("--out", default=os.path.join("runs", "profile"),
                              help="the folder the trace goes into (default: runs/profile, which git ignores)")
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
