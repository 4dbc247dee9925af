"""The model and loss in train_utils.py against jax.nn, optax and finite differences."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train_utils import (LAYER_SIZES, batch_from_uint8, batched_predict, init_params, log_softmax, loss, predict,
                         predicted_class, relu)


def reference_logits(params, inputs):
    """The forward pass written with jax.nn, up to the logits (no log-softmax)."""
    h = inputs
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])  # 1000: exp() would overflow if done naively
def test_log_softmax_matches_jax_nn(scale):
    logits = scale * jax.random.normal(jax.random.key(0), (16, 10))
    np.testing.assert_allclose(log_softmax(logits), jax.nn.log_softmax(logits), rtol=1e-6, atol=1e-4)
    assert np.all(np.isfinite(log_softmax(logits)))


def test_relu_matches_jax_nn():
    x = jnp.linspace(-3, 3, 101)
    np.testing.assert_array_equal(relu(x), jax.nn.relu(x))


def random_batch(key, n=32, sizes=LAYER_SIZES, pixel_scale=255.0):
    k_x, k_y = jax.random.split(key)
    inputs = pixel_scale * jax.random.uniform(k_x, (n, sizes[0]))
    targets = jax.nn.one_hot(jax.random.randint(k_y, (n,), 0, sizes[-1]), sizes[-1])
    return inputs, targets


def test_predict_and_loss_match_jax_nn_and_optax():
    """predict = log_softmax(logits); loss = optax's mean softmax cross-entropy / 10."""
    params = init_params(jax.random.key(1))
    inputs, targets = random_batch(jax.random.key(2))
    logits = reference_logits(params, inputs)
    np.testing.assert_allclose(batched_predict(params, inputs), jax.nn.log_softmax(logits), rtol=1e-5, atol=1e-5)
    expected = jnp.mean(optax.softmax_cross_entropy(logits, targets)) / 10
    np.testing.assert_allclose(loss(params, (inputs, targets)), expected, rtol=1e-5)


def test_loss_gradient_matches_central_finite_differences():
    """Every parameter of a small float64 network, h = 1e-6."""
    sizes = (6, 5, 4, 10)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64) * 30,
                                        init_params(jax.random.key(3), sizes))
        inputs, targets = random_batch(jax.random.key(4), n=8, sizes=sizes, pixel_scale=1.0)
        batch = (inputs.astype(jnp.float64), targets.astype(jnp.float64))
        grads = jax.grad(loss)(params, batch)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        flat_grads, _ = jax.flatten_util.ravel_pytree(grads)
        flat_loss = jax.jit(lambda f: loss(unravel(f), batch))
        h = 1e-6
        steps = h * np.eye(flat.size)
        numeric = np.array([(flat_loss(flat + e) - flat_loss(flat - e)) / (2 * h) for e in steps])
    assert flat.dtype == jnp.float64 and flat.size == 6 * 5 + 5 + 5 * 4 + 4 + 4 * 10 + 10
    assert np.abs(numeric).max() > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(flat_grads, numeric, rtol=1e-5, atol=1e-9)


def test_init_params_shapes_scale_and_seed():
    params = init_params(jax.random.key(0))
    assert [(w.shape, b.shape) for w, b in params] == [((784, 512), (512,)), ((512, 512), (512,)),
                                                       ((512, 10), (10,))]
    all_weights = np.concatenate([np.ravel(w) for w, _ in params])
    assert abs(all_weights.std() - 0.01) < 2e-4 and abs(all_weights.mean()) < 2e-4
    again = init_params(jax.random.key(0))
    other = init_params(jax.random.key(1))
    for (w, _), (w2, _), (w3, _) in zip(params, again, other):
        np.testing.assert_array_equal(w, w2)
        assert not np.allclose(w, w3)
    # one key per layer: the two 512-wide layers do not start from the same numbers
    assert not np.allclose(params[1][0][:10, :10], params[0][0][:10, :10])


def test_batch_from_uint8_keeps_raw_pixels_and_one_hot_labels():
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28) % 256
    inputs, targets = batch_from_uint8(jnp.asarray(images, jnp.uint8), jnp.asarray([3, 9], jnp.uint8))
    assert inputs.shape == (2, 784) and inputs.dtype == jnp.float32
    np.testing.assert_array_equal(inputs, images.reshape(2, 784).astype(np.float32))
    np.testing.assert_array_equal(targets, np.eye(10, dtype=np.float32)[[3, 9]])


def test_predict_is_written_for_one_image_and_vmapped_for_a_batch():
    """predict takes one image (784,); batched_predict, jax.vmap of it, is predict on each image in turn."""
    params = init_params(jax.random.key(7))
    inputs, _ = random_batch(jax.random.key(8), n=5)
    one_by_one = np.stack([predict(params, image) for image in inputs])
    assert predict(params, inputs[0]).shape == (10,)
    np.testing.assert_allclose(batched_predict(params, inputs), one_by_one, rtol=1e-6, atol=1e-6)
    assert not np.allclose(one_by_one[0], one_by_one[1])  # different images, different answers


def test_predicted_class_is_argmax_of_probabilities_that_sum_to_one():
    """The argmax alone cannot tell log-probabilities from logits (log-softmax keeps the order): the
    log-probabilities it is taken of must also be jax.nn.log_softmax's, their exponentials summing to 1."""
    params = init_params(jax.random.key(5))
    inputs, _ = random_batch(jax.random.key(6))
    logits = reference_logits(params, inputs)
    np.testing.assert_array_equal(predicted_class(params, inputs), np.argmax(logits, axis=1))
    log_probabilities = batched_predict(params, inputs)
    np.testing.assert_allclose(np.exp(log_probabilities).sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(log_probabilities, jax.nn.log_softmax(logits), rtol=1e-5, atol=1e-5)
