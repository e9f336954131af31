"""``model.remat`` (issue #17): rematerialization changes memory and compute, never a value.

``jax.checkpoint`` recomputes each ResNet/attention block in the backward pass instead of
storing its activations. Mathematically the function and all its derivatives are the same,
so the score, the energy and the parameter gradient of a DSM loss through the C energy
(a second backward pass, Salimans & Ho 2021 eq. 5) must equal the plain network's to
float tolerance, with the same parameter tree (checkpoints load either way).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import sde as sde_lib
from ebm_vs_score import settings
from ebm_vs_score.models import get_network

SDE = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
TINY = {
    "conservative": dict(
        name="unet",
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(2,),
        num_groups=4,
        dropout=0.0,
    ),
    "resnet_energy": dict(
        name="resnet_energy", ch=8, ch_mult=(1, 2), num_res_blocks=1, num_groups=4, dropout=0.0
    ),
}


def _fns(parameterization, remat):
    """(net, ModelFns) for the tiny network of ``parameterization``, with or without remat."""
    model = settings.ModelSettings(**dict(TINY[parameterization], remat=remat))
    net = get_network(model, scalar_output=parameterization == "resnet_energy")
    if parameterization == "conservative":
        net = net.clone(zero_init_output=False)
    return net, param_lib.get_model_fns(parameterization, net, SDE, 0.5)


def _data():
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (2, 4, 4, 1)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    t = jnp.asarray([0.05, 0.9], jnp.float32)
    return x0, eps, t


def _dsm_loss(score_fn, params, x0, eps, t):
    """Denoising score matching (Vincent 2011): ||sigma s(x_t) + eps||^2, batch mean."""
    mean, std = SDE.marginal_prob(x0, t)
    x = mean + std[:, None, None, None] * eps
    s = score_fn(params, x, t)
    return jnp.mean(jnp.sum((std[:, None, None, None] * s + eps) ** 2, axis=(1, 2, 3)))


# The U-Net's double backward compiles for ~1.5 CPU-min (slow); the ResNet energy's is fast.
@pytest.mark.parametrize(
    "parameterization", [pytest.param("conservative", marks=pytest.mark.slow),
                         pytest.param("resnet_energy", marks=pytest.mark.slow)]  # 43 s
)
def test_remat_changes_no_value(parameterization):
    x0, eps, t = _data()
    net, plain = _fns(parameterization, remat=False)
    net_r, remat = _fns(parameterization, remat=True)
    params = net.init(jax.random.PRNGKey(1), x0, jnp.zeros((2,)))["params"]
    params_r = net_r.init(jax.random.PRNGKey(1), x0, jnp.zeros((2,)))["params"]
    # Same parameter tree and the same initial values: checkpoints load either way.
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(params_r)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_r)
    np.testing.assert_allclose(
        remat.energy(params, x0, t), plain.energy(params, x0, t), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        remat.score(params, x0, t), plain.score(params, x0, t), rtol=1e-5, atol=1e-5
    )
    grads = [jax.grad(_dsm_loss, argnums=1)(f.score, params, x0, eps, t) for f in (plain, remat)]
    flat = [jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(gr)]) for gr in grads]
    assert float(jnp.linalg.norm(flat[0])) > 0  # the double backward reaches the params
    np.testing.assert_allclose(flat[1], flat[0], rtol=1e-4, atol=1e-5)


def test_remat_reaches_the_modules():
    """The flag is not silently dropped: the remat network's jaxpr holds checkpoint calls."""
    x0, _, t = _data()
    net, _ = _fns("resnet_energy", remat=True)
    params = net.init(jax.random.PRNGKey(1), x0, jnp.zeros((2,)))["params"]
    jaxpr = str(jax.make_jaxpr(lambda p: net.apply({"params": p}, x0, t))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    net_plain, _ = _fns("resnet_energy", remat=False)
    jaxpr = str(jax.make_jaxpr(lambda p: net_plain.apply({"params": p}, x0, t))(params))
    assert "checkpoint" not in jaxpr and "remat" not in jaxpr
