"""Compile before the clock starts: every shape a run will meet is compiled first, so that an epoch's seconds are
training and evaluation, not compilation (appendix A1 says why). jax.jit compiles at a function's first call with
each new shape; f.lower(...).compile() does it ahead, without running anything, and fills jit's cache."""
import jax
import jax.numpy as jnp


def piece_sizes(n, size):
    """The sizes of the pieces that n items fall into, `size` at a time: each is one compiled shape."""
    return sorted({min(size, n)} | ({n % size} - {0}))


def compile_steps(train_step, params, opt_state, hyper, n, batch_size, **static):
    """Compile train_step(params, opt_state, hyper, images uint8 (B, 28, 28), labels uint8 (B,), **static) for every
    batch size B that an epoch of n images falls into."""
    for size in piece_sizes(n, batch_size):
        images, labels = jax.ShapeDtypeStruct((size, 28, 28), jnp.uint8), jax.ShapeDtypeStruct((size,), jnp.uint8)
        train_step.lower(params, opt_state, hyper, images, labels, **static).compile()


def compile_predictions(predict, params, splits, chunk):
    """Compile predict(params, images) for every chunk size that evaluating `splits` (image arrays, None for a split
    not there) `chunk` images at a time meets: by calling it once on a real chunk of that size, so that it is
    compiled for the very shardings evaluation's slices have (under many_models' vmap, slices of images replicated
    across the devices)."""
    for images in splits:
        for size in piece_sizes(len(images), chunk) if images is not None else ():
            jax.block_until_ready(predict(params, images[:size]))
