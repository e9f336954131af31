"""Conv, Dense and GroupNorm with product-form per-channel gradients (models/channelwise.py)
are Flax's layers: same parameter trees, same values, same first- and second-order
derivatives, on the CPU path (sums as matrix products) and the accelerator path."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score.models import channelwise

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(KEY, (3, 8, 8, 12))


def _layers(dtype=None):
    """(ours, Flax's) pairs built with the same hyperparameters."""
    return {
        "conv": (channelwise.Conv(6, (3, 3), dtype=dtype),
                 nn.Conv(6, (3, 3), padding="SAME", dtype=dtype)),
        "conv_stride2": (channelwise.Conv(6, (3, 3), strides=(2, 2), dtype=dtype),
                         nn.Conv(6, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype)),
        "dense": (channelwise.Dense(5, dtype=dtype), nn.Dense(5, dtype=dtype)),
        "group_norm": (channelwise.GroupNorm(4, dtype=dtype),
                       nn.GroupNorm(num_groups=4, epsilon=1e-6, dtype=dtype)),
    }


def _random_params(module, x):
    """Initial parameters with every leaf randomized (so biases and scales matter)."""
    params = module.init(KEY, x)["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return tree.unflatten([jax.random.normal(k, leaf.shape)
                           for k, leaf in zip(keys, leaves, strict=True)])


def _loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply({"params": params}, x)))


def _assert_trees_close(a, b, tol):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.fixture(params=["cpu path", "accelerator path"])
def path(request, monkeypatch):
    monkeypatch.setattr(channelwise, "sums_as_products",
                        lambda: request.param == "cpu path")
    monkeypatch.setattr(channelwise, "canonical_convs", lambda: request.param == "cpu path")
    return request.param


@pytest.mark.parametrize("name", list(_layers()))
def test_layers_match_flax_in_params_values_and_gradients(name, path):
    ours, flax_layer = _layers()[name]
    params = _random_params(flax_layer, X)
    assert (jax.tree_util.tree_map(jnp.shape, ours.init(KEY, X)["params"])
            == jax.tree_util.tree_map(jnp.shape, params))
    np.testing.assert_allclose(ours.apply({"params": params}, X),
                               flax_layer.apply({"params": params}, X), rtol=2e-5, atol=2e-5)
    g_ours = jax.grad(lambda p, x: _loss(ours, p, x), (0, 1))(params, X)
    g_flax = jax.grad(lambda p, x: _loss(flax_layer, p, x), (0, 1))(params, X)
    _assert_trees_close(g_ours, g_flax, 1e-4)


@pytest.mark.parametrize("name", ["conv", "group_norm"])
def test_second_order_and_forward_mode_match_flax(name, path):
    """C's loss differentiates an input gradient; Asym and QC take JVPs through the net."""
    ours, flax_layer = _layers()[name]
    params = _random_params(flax_layer, X)

    def c_like_loss(module, p):  # || grad_x E ||^2 with E = sum sin(net(x)): grad of grad
        score = jax.grad(lambda x: _loss(module, p, x))(X)
        return jnp.sum(score**2)

    g_ours = jax.grad(lambda p: c_like_loss(ours, p))(params)
    g_flax = jax.grad(lambda p: c_like_loss(flax_layer, p))(params)
    _assert_trees_close(g_ours, g_flax, 2e-4)
    v = jax.random.normal(jax.random.PRNGKey(2), X.shape)
    jvp = lambda m: jax.jvp(lambda x: m.apply({"params": params}, x), (X,), (v,))[1]  # noqa: E731
    np.testing.assert_allclose(jvp(ours), jvp(flax_layer), rtol=1e-4, atol=1e-4)


def test_mixed_precision_follows_flax_dtypes():
    for name, (ours, flax_layer) in _layers(jnp.bfloat16).items():
        params = _random_params(flax_layer, X)
        a, b = (m.apply({"params": params}, X.astype(jnp.bfloat16)) for m in (ours, flax_layer))
        assert a.dtype == b.dtype == jnp.bfloat16, name
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=0.05, atol=0.05, err_msg=name)


def test_per_example_broadcast_has_the_per_example_sum_as_gradient(path):
    v = jax.random.normal(KEY, (3, 12))
    weights = jax.random.normal(jax.random.PRNGKey(3), X.shape)
    grad = jax.grad(lambda v: jnp.sum(channelwise.broadcast_channels(v, X.shape) * weights))(v)
    np.testing.assert_allclose(grad, weights.sum((1, 2)), rtol=1e-5, atol=1e-5)


def test_cpu_path_turns_the_parameter_gradient_sums_into_products():
    """The point of the module: on the CPU, no reduction over the batch and pixels is left
    in the bias gradient (XLA:CPU runs those as single-threaded loops)."""
    layer = channelwise.Dense(5)
    params = layer.init(KEY, X)["params"]
    hlo = jax.jit(jax.grad(lambda p: _loss(layer, p, X))).lower(params).as_text()
    assert "reduce" not in hlo.replace("reduce_precision", "")
    hlo_flax = jax.jit(jax.grad(lambda p: _loss(nn.Dense(5), p, X))).lower(params).as_text()
    assert "reduce" in hlo_flax


def test_broadcast_of_a_wrong_shape_says_what_is_wrong():
    with pytest.raises(ValueError, match=r"cannot broadcast a \(5,\) array"):
        channelwise.broadcast_channels(jnp.ones(5), X.shape)
    with pytest.raises(ValueError, match="do not split into 5 groups"):
        channelwise.GroupNorm(5).init(KEY, X)
