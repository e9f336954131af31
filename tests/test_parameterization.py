"""U, C and C-ResNet (Salimans & Ho 2021, eq. 5-6): the identities that tie them together."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _weights import random_params

from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import sde as sde_lib
from ebm_vs_score.models import MLP, ResNetEnergy, UNet
from ebm_vs_score.sde import batch_mul

SDE = sde_lib.VPSDE()
SIGMA_DATA = 0.5




_IMG = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
_T3 = jnp.array([0.2, 0.5, 0.8])
_TINY = dict(ch=4, ch_mult=(1,), num_res_blocks=1, dropout=0.0, num_groups=2)
_UNET = UNet(attn_resolutions=(), **_TINY)
# One compiled conservative U-Net score, shared by two tests (compiling dominates).
_UNET_C_SCORE = jax.jit(param_lib.get_model_fns("conservative", _UNET, SDE, SIGMA_DATA).score)


def test_c_minus_u_is_the_jacobian_term_for_a_unet():
    """s_C - s_U = J_f^T (x - f) / sigma^2 (Salimans & Ho 2021, eq. 6) with f = x - sigma F."""
    params = random_params(_UNET, _IMG)
    f_fn = param_lib.denoiser(_UNET, SDE, SIGMA_DATA)
    u = param_lib.get_model_fns("unconstrained", _UNET, SDE, SIGMA_DATA)

    @jax.jit
    def u_and_jacobian_term(x):
        f, vjp = jax.vjp(lambda y: f_fn(params, y, _T3), x)
        (jac_term,) = vjp(batch_mul(1.0 / SDE.marginal_std(_T3) ** 2, x - f))
        return u.score(params, x, _T3), jac_term

    u_score, jac_term = u_and_jacobian_term(_IMG)
    diff = _UNET_C_SCORE(params, _IMG, _T3) - u_score
    assert float(jnp.max(jnp.abs(jac_term))) > 1e-2  # a non-trivial check
    np.testing.assert_allclose(diff, jac_term, rtol=1e-3, atol=1e-4 * np.abs(jac_term).max())


def test_unconstrained_score_is_minus_noise_prediction_over_sigma():
    net = MLP(hidden=(16,), embedding_dim=8)
    x = jax.random.normal(jax.random.key(1), (4, 3))
    t = jnp.linspace(0.1, 0.9, 4)
    params = random_params(net, x)
    eps_fn = param_lib.noise_prediction(net, SDE, SIGMA_DATA)
    score_fn = param_lib.get_model_fns("unconstrained", net, SDE, SIGMA_DATA).score
    eps, score = jax.jit(lambda p: (eps_fn(p, x, t), score_fn(p, x, t)))(params)
    np.testing.assert_allclose(score, -batch_mul(1.0 / SDE.marginal_std(t), eps), rtol=1e-6)
    assert float(jnp.max(jnp.abs(eps))) > 1e-2


@pytest.mark.parametrize("name", ["conservative", "resnet_energy"])
def test_conservative_score_is_a_finite_difference_of_the_energy(name):
    """-s . v = (E(x + h v) - E(x - h v)) / 2h along random directions v (float32, h = 1e-2)."""
    net = MLP(
        hidden=(16, 16), out="scalar" if name == "resnet_energy" else "vector", embedding_dim=8
    )
    x = jax.random.normal(jax.random.key(1), (5, 3))
    v = jax.random.normal(jax.random.key(2), (5, 3))
    t = jnp.linspace(0.1, 0.9, 5)
    params = random_params(net, x)
    fns = param_lib.get_model_fns(name, net, SDE, SIGMA_DATA)
    assert fns.conservative and fns.energy is not None
    h = 1e-2

    @jax.jit
    def run(x):
        fd = (fns.energy(params, x + h * v, t) - fns.energy(params, x - h * v, t)) / (2 * h)
        return fd, -jnp.sum(fns.score(params, x, t) * v, axis=-1)

    fd, directional = run(x)
    np.testing.assert_allclose(fd, directional, rtol=2e-3, atol=2e-3 * np.abs(fd).max())


@pytest.mark.parametrize("name", ["conservative", "resnet_energy"])
def test_score_of_one_example_does_not_depend_on_another(name):
    """The batch-sum trick s = -grad sum_b E_b is valid: GroupNorm nets do not mix examples."""
    if name == "conservative":
        net, score = _UNET, _UNET_C_SCORE
    else:
        net = ResNetEnergy(**_TINY)
        score = jax.jit(param_lib.get_model_fns(name, net, SDE, SIGMA_DATA).score)
    params = random_params(net, _IMG, seed=3)
    moved = _IMG.at[2].add(3.0 * jax.random.normal(jax.random.key(9), _IMG.shape[1:]))
    before, after = score(params, _IMG, _T3), score(params, moved, _T3)
    np.testing.assert_allclose(after[:2], before[:2], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(after[2] - before[2]))) > 1e-3


def test_unknown_parameterization_lists_the_valid_names():
    with pytest.raises(ValueError, match="valid names: \\['conservative', 'resnet_energy'"):
        param_lib.get_model_fns("energy", MLP(), SDE, SIGMA_DATA)


def test_bind_with_a_key_runs_the_network_in_training_mode():
    """``bind(fn, params, key)`` is the model with dropout on (drawn from ``key``), and
    without a key the deterministic eval-mode model; score models have no energy."""
    net = MLP(hidden=(32,), out="vector", embedding_dim=8, dropout=0.5)
    x = jax.random.normal(jax.random.key(1), (4, 2))
    params = random_params(net, x)
    fns = param_lib.get_model_fns("unconstrained", net, SDE, SIGMA_DATA)
    t = jnp.full((4,), 0.5)
    key = jax.random.key(2)
    train = param_lib.bind(fns.score, params, key)(x, t)
    np.testing.assert_array_equal(train, fns.score(params, x, t, key))
    evaluation = param_lib.bind(fns.score, params)(x, t)
    np.testing.assert_array_equal(evaluation, fns.score(params, x, t))
    assert float(jnp.max(jnp.abs(train - evaluation))) > 1e-3  # dropout changed the output
    assert param_lib.bind(fns.energy, params) is None
