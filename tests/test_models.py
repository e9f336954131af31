"""Tests for ebm_vs_score.models: shapes, parameter count, per-example independence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import settings
from ebm_vs_score.models import MLP, ResNetEnergy, UNet, get_network
from ebm_vs_score.models.layers import GaussianFourierEmbedding, group_count

BATCH = 3
UNET_TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
RESNET_TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, num_groups=4)
MLP_TINY = dict(hidden=(16, 16), embedding_dim=8)
NETS = {
    "unet": (lambda **kw: UNet(**UNET_TINY, **kw), (BATCH, 8, 8, 1), (BATCH, 8, 8, 1)),
    "resnet_energy": (lambda **kw: ResNetEnergy(**RESNET_TINY, **kw), (BATCH, 8, 8, 1), (BATCH,)),
    "mlp_vector": (lambda **kw: MLP(**MLP_TINY, **kw), (BATCH, 2), (BATCH, 2)),
    "mlp_scalar": (lambda **kw: MLP(**MLP_TINY, out="scalar", **kw), (BATCH, 2), (BATCH,)),
    "mlp_fourier_softplus": (  # same TimeEmbedding module as the U-Net and the ResNet
        lambda **kw: MLP(**MLP_TINY, embedding="fourier", activation="softplus", **kw),
        (BATCH, 4),
        (BATCH, 4),
    ),
}


def _inputs(x_shape, seed):
    """Numpy test data: a seeded Generator needs no per-shape compiled kernel on CPU."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    noise_cond = jnp.asarray(rng.uniform(-7.0, 5.0, x_shape[0]), jnp.float32)
    return x, noise_cond


def _random_params(net, x, noise_cond, seed):
    """Parameters of the right structure with every entry nonzero (hides no zero-init layer).

    Shapes come from ``jax.eval_shape`` (no init compile); values from a seeded numpy
    Generator, which keeps these tests fast on a small CPU.
    """
    shapes = jax.eval_shape(net.init, jax.random.key(0), x, noise_cond)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.fixture(scope="module", params=list(NETS))
def model(request):
    """(net with dropout 0.5, random params, x, noise_cond, output shape, jitted eval fn)."""
    make, x_shape, out_shape = NETS[request.param]
    net = make(dropout=0.5)
    x, noise_cond = _inputs(x_shape, 0)
    params = _random_params(net, x, noise_cond, 1)
    eval_fn = jax.jit(lambda x, c: net.apply({"params": params}, x, c, train=False))
    return net, params, x, noise_cond, out_shape, eval_fn


def test_init_shapes_dtypes_and_zero_output(model):
    net, _, x, noise_cond, out_shape, _ = model
    # 'unsafe_rbg' keys compile much faster than threefry on CPU; the init code is the same.
    variables = jax.jit(net.init)(jax.random.key(1, impl="unsafe_rbg"), x, noise_cond)
    assert set(variables) == {"params"}  # no batch statistics or other collections
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    out = jax.jit(net.apply)(variables, x, noise_cond)
    assert out.shape == out_shape and out.dtype == jnp.float32
    if out_shape == x.shape:  # vector outputs start at exactly zero (last layer zero-init)
        np.testing.assert_array_equal(out, 0.0)


def test_per_example_independence(model):
    """Perturbing example 1 changes only output 1 (no BatchNorm, no cross-batch ops)."""
    _, _, x, noise_cond, _, eval_fn = model
    out = eval_fn(x, noise_cond)
    out_perturbed = eval_fn(x.at[1].add(1.0), noise_cond)
    np.testing.assert_allclose(out_perturbed[0], out[0], atol=1e-6)
    np.testing.assert_allclose(out_perturbed[2], out[2], atol=1e-6)
    assert np.abs(out_perturbed[1] - out[1]).max() > 1e-3


def test_noise_cond_changes_output(model):
    _, _, x, noise_cond, _, eval_fn = model
    assert np.abs(eval_fn(x, noise_cond) - eval_fn(x, noise_cond + 0.5)).max() > 1e-3


def test_dropout_only_with_train(model):
    net, params, x, noise_cond, _, eval_fn = model
    train_fn = jax.jit(
        lambda key: net.apply({"params": params}, x, noise_cond, train=True, rngs={"dropout": key})
    )
    k1, k2 = jax.random.key(5, impl="unsafe_rbg"), jax.random.key(6, impl="unsafe_rbg")
    eval_out = eval_fn(x, noise_cond)  # train=False needs no dropout rng
    np.testing.assert_array_equal(train_fn(k1), train_fn(k1))
    assert np.abs(train_fn(k1) - train_fn(k2)).max() > 1e-3
    assert np.abs(train_fn(k1) - eval_out).max() > 1e-3


@pytest.mark.parametrize("name", ["unet", "resnet_energy", "mlp_vector"])
def test_bfloat16_compute_keeps_float32_params(name):
    make, x_shape, out_shape = NETS[name]
    net = make(dtype=jnp.bfloat16)
    x, noise_cond = _inputs(x_shape, 6)
    shapes = jax.eval_shape(net.init, jax.random.key(7), x, noise_cond)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    params = {"params": _random_params(net, x, noise_cond, 8)}
    assert "bf16" in str(jax.make_jaxpr(net.apply)(params, x, noise_cond))  # bf16 compute
    out = jax.jit(net.apply)(params, x, noise_cond)
    assert out.shape == out_shape and out.dtype == x.dtype
    assert np.isfinite(np.asarray(out)).all()


def test_cifar_unet_parameter_count():
    """Ho et al. 2020's CIFAR-10 model has 35.7M parameters; counted without allocating."""
    shapes = jax.eval_shape(
        UNet().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))
    )
    count = sum(p.size for p in jax.tree.leaves(shapes["params"]))
    assert abs(count - 35.7e6) / 35.7e6 < 0.01, count


@pytest.mark.parametrize("cls", [UNet, ResNetEnergy])
def test_invalid_image_size_raises(cls):
    net = cls(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, num_groups=4)
    x = jnp.zeros((1, 6, 6, 1))
    with pytest.raises(ValueError, match="multiples of 2\\*\\*\\(len\\(ch_mult\\)-1\\) = 4"):
        jax.eval_shape(net.init, jax.random.key(0), x, jnp.zeros((1,)))


def test_bad_noise_cond_shape_raises():
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="noise_cond must have shape"):
        jax.eval_shape(MLP(**MLP_TINY).init, jax.random.key(0), x, jnp.zeros((3,)))


def test_group_count_is_a_clipped_divisor():
    assert group_count(128, 32) == 32
    assert group_count(8, 32) == 8
    assert group_count(12, 8) == 6
    assert group_count(7, 4) == 1


def test_fourier_frequencies_are_not_trained():
    emb = GaussianFourierEmbedding(dim=8, scale=16.0)
    t = jnp.array([-1.0, 2.0])
    params = emb.init(jax.random.key(0), t)["params"]
    grads = jax.grad(lambda p: emb.apply({"params": p}, t).sum())(params)
    np.testing.assert_array_equal(grads["W"], 0.0)
    assert emb.apply({"params": params}, t).shape == (2, 8)


def _config(**fields):
    """The ``model.*`` settings with ``fields`` (sequences as tuples, as the reader gives)."""
    return settings.ModelSettings(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in fields.items()})


def test_get_network_builds_each_name():
    unet = get_network(_config(name="unet", **UNET_TINY, dtype="bfloat16", embedding="fourier"))
    assert isinstance(unet, UNet) and unet.dtype == jnp.bfloat16 and unet.embedding == "fourier"
    resnet = get_network(_config(name="resnet_energy", **RESNET_TINY, dropout=0.0))
    assert isinstance(resnet, ResNetEnergy) and resnet.dropout == 0.0
    assert get_network(_config(name="mlp", hidden=[4, 4])).out == "vector"
    mlp = get_network(_config(name="mlp", hidden=[4, 4]), scalar_output=True)
    assert mlp.out == "scalar" and mlp.hidden == (4, 4)


def test_get_network_errors():
    with pytest.raises(ValueError, match="valid names: \\['mlp', 'resnet_energy', 'unet'\\]"):
        get_network(_config(name="transformer"))
    with pytest.raises(ValueError, match="lack required field"):
        get_network(_config(name="unet", ch=8))
    with pytest.raises(ValueError, match="Unknown model dtype"):
        get_network(_config(name="mlp", hidden=(4,), dtype="float16"))
    with pytest.raises(ValueError, match="not a scalar"):
        get_network(_config(name="unet", **UNET_TINY), scalar_output=True)


def test_sum_head_without_normalization_is_unbounded_along_rays():
    """Gao et al.'s head (ReLU, sum-pool, temb inner product, ``num_groups=0``) grows like
    the input's scale; Salimans & Ho's normalized mean-pool head saturates."""
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    t = jnp.full((4,), 0.5)

    def along_ray(**kwargs):
        net = ResNetEnergy(ch=8, ch_mult=(1, 2), num_res_blocks=1, **kwargs)
        params = net.init(jax.random.PRNGKey(0), x, t)
        return np.array([np.abs(np.asarray(net.apply(params, lam * x, t))).mean()
                         for lam in (10.0, 100.0)])

    gao = along_ray(num_groups=0, energy_head="sum")
    assert 5 < gao[1] / gao[0] < 20  # ~linear in the scale (ReLU network, small biases)
    normalized = along_ray(num_groups=4, energy_head="mean")
    assert normalized[1] / normalized[0] < 1.5
    with pytest.raises(ValueError, match="model.energy_head='max'"):
        ResNetEnergy(ch=8, ch_mult=(1,), num_res_blocks=1, energy_head="max").init(
            jax.random.PRNGKey(0), x, t)
