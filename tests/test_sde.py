"""The SDEs against their own definition, and the methods samplers and losses call.

alpha(t), std(t) and the grid step are checked against the moment equations of the linear
SDEs of Song et al. 2021 (eq. 30, 32, 34), integrated numerically here from the drift and
diffusion coefficients written out from the paper; the ancestral step, the corrector's
alpha, the name and whether a chain exists are what samplers and losses used to ask by
class checks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import sde as sde_lib

T, T_NEXT = jnp.asarray([0.6, 0.3]), jnp.asarray([0.5, 0.2])
X = jnp.asarray([[1.0, -2.0], [0.5, 0.25]])


def _coefficients(name, t):
    """Drift factor f(t) (drift = f x) and g(t)^2 of the SDEs of Song et al. 2021 eq. 30
    (VE: f = 0, g^2 = d sigma^2 / dt), eq. 32 (VP: f = -beta/2, g^2 = beta) and eq. 34
    (sub-VP: g^2 = beta (1 - exp(-2 int_0^t beta))), for the arguments of ``_make``."""
    if name == "ve":
        return 0.0 * t, 2 * (0.01 * 1000.0**t) ** 2 * np.log(1000.0)
    beta = 0.1 + t * 19.9
    if name == "vp":
        return -beta / 2, beta
    return -beta / 2, beta * (1 - np.exp(-2 * (0.1 * t + 19.9 * t**2 / 2)))


def _make(name):
    return sde_lib.make_sde(name, sigma_min=0.01, sigma_max=10.0, beta_min=0.1, beta_max=20.0,
                            num_scales=1000, eps=1e-3)


def _transition_moments(name, t_from, t_to, num=20_001):
    """(scale, variance) of x(t_to) = scale x(t_from) + noise: the moment ODEs of the linear
    SDE dx = f x dt + g dw, integrated numerically (trapezoid): scale = exp(int f) and
    variance = int g(s)^2 exp(2 int_s^{t_to} f) ds."""
    s = np.linspace(t_from, t_to, num)
    f, g2 = _coefficients(name, s)
    cum_f = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(s))])
    integrand = g2 * np.exp(2 * (cum_f[-1] - cum_f))
    return np.exp(cum_f[-1]), np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(s))


@pytest.mark.parametrize("name", sde_lib.SDE_NAMES)
def test_marginals_solve_the_moment_equations_of_the_sde(name):
    """alpha(t) and std(t)^2 are the scale and variance of x(t) given x(0) (eq. 29, 33).

    VE: std(t)^2 = sigma_min^2 + the SDE's variance from 0, i.e. sigma(t)^2 rather than eq.
    31's sigma(t)^2 - sigma(0)^2: the data count as already carrying sigma_min of noise, the
    convention of score_sde's VESDE.marginal_prob and of the SMLD ladder (sigma_0 = sigma_min).
    """
    sde, t = _make(name), np.array([0.05, 0.3, 0.6, 1.0])
    moments = np.array([_transition_moments(name, 0.0, ti) for ti in t])
    start_var = 0.01**2 if name == "ve" else 0.0
    np.testing.assert_allclose(sde.alpha(jnp.asarray(t)), moments[:, 0], rtol=1e-5)
    np.testing.assert_allclose(sde.marginal_std(jnp.asarray(t)) ** 2, start_var + moments[:, 1],
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", sde_lib.SDE_NAMES)
def test_grid_step_is_the_sdes_transition_between_grid_times(name):
    """x_t = x + f + G z for x = x(t_next): VE and VP take the exact transition of the SDE
    from t_next to t (Song et al. 2021, eq. 45-46); sub-VP has no chain and takes the Euler
    step, whose error in the scale and the variance is O(dt^2), a small share of dt."""
    sde = _make(name)
    f, g = sde.grid_step(X, T, T_NEXT)
    assert sde.name == name and f.shape == X.shape and g.shape == (2,)
    if sde.has_discrete_chain:
        pairs = zip(T_NEXT.tolist(), T.tolist(), strict=True)
        exact = np.array([_transition_moments(name, a, b) for a, b in pairs])
        np.testing.assert_allclose(X + f, exact[:, :1] * X, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g**2, exact[:, 1], rtol=1e-4)
        return
    with pytest.raises(ValueError, match="sub-VP SDE lacks"):
        sde.ancestral_step(X, X, X, T, T_NEXT)
    dt = 2e-4
    for t in (0.1, 0.5):  # at 0.1 the sub-VP discount 1 - alpha^4 is 0.2
        f, g = sde.grid_step(X[:1], jnp.asarray([t]), jnp.asarray([t - dt]))
        scale, var = _transition_moments(name, t - dt, t)
        assert abs(float(1 + f[0, 0] / X[0, 0]) - scale) < 0.02 * abs(scale - 1), t
        assert abs(float(g[0]) ** 2 - var) < 0.02 * var, t


def test_corrector_alpha_is_one_for_ve_and_one_minus_beta_for_vp():
    np.testing.assert_array_equal(sde_lib.VESDE().corrector_alpha(T), 1.0)
    vp = sde_lib.VPSDE()
    np.testing.assert_allclose(vp.corrector_alpha(T), 1 - vp.discrete_betas[vp.timestep(T)])


def test_unknown_sde_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: \\['ve', 'vp', 'subvp'\\]"):
        sde_lib.make_sde("cosine", sigma_min=0.01, sigma_max=1.0, beta_min=0.1, beta_max=20.0,
                         num_scales=10, eps=1e-3)
