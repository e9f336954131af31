"""What samplers and losses used to ask by class checks is now a method of the SDE: the
grid step, the ancestral step, the corrector's alpha, the name and whether a chain exists."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import sde as sde_lib

T, T_NEXT = jnp.asarray([0.6, 0.3]), jnp.asarray([0.5, 0.2])
X = jnp.asarray([[1.0, -2.0], [0.5, 0.25]])


@pytest.mark.parametrize("name", sde_lib.SDE_NAMES)
def test_grid_step_variance_is_the_marginal_variance_increment(name):
    """Forward chain t_next -> t: alpha^2 std'^2 + G^2 = std^2 for VE and VP (eq. 45-46),
    the marginal std of the chain stays the SDE's; sub-VP has no chain (Euler step)."""
    sde = sde_lib.make_sde(name, sigma_min=0.01, sigma_max=10.0, beta_min=0.1, beta_max=20.0,
                           num_scales=1000, eps=1e-3)
    f, g = sde.grid_step(X, T, T_NEXT)
    assert sde.name == name and f.shape == X.shape and g.shape == (2,)
    if not sde.has_discrete_chain:
        with pytest.raises(ValueError, match="sub-VP SDE lacks"):
            sde.ancestral_step(X, X, X, T, T_NEXT)
        return
    ratio = sde.alpha(T) / sde.alpha(T_NEXT)  # x_t = ratio x_{t_next} + G z
    np.testing.assert_allclose(f, (ratio[:, None] - 1) * X, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ratio**2 * sde.marginal_std(T_NEXT) ** 2 + g**2,
                               sde.marginal_std(T) ** 2, rtol=1e-5)


def test_corrector_alpha_is_one_for_ve_and_one_minus_beta_for_vp():
    np.testing.assert_array_equal(sde_lib.VESDE().corrector_alpha(T), 1.0)
    vp = sde_lib.VPSDE()
    np.testing.assert_allclose(vp.corrector_alpha(T), 1 - vp.discrete_betas[vp.timestep(T)])


def test_unknown_sde_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: \\['ve', 'vp', 'subvp'\\]"):
        sde_lib.make_sde("cosine", sigma_min=0.01, sigma_max=1.0, beta_min=0.1, beta_max=20.0,
                         num_scales=10, eps=1e-3)
