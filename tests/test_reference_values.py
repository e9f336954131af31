"""Independent references for the samplers, the objectives and the DRL loss (issue #23).

Every expected value here is derived outside the code under test, from exact models:

* Samplers. Driven by the exact noisy score (and energy) of a correlated 2-D Gaussian
  N(M, C) and started from the exact p_T, every sampler must return samples with mean M and
  covariance C: 10,000 samples, within 5 standard errors plus a stated discretization
  allowance (3% of the scale; ``test_moment_criterion_has_power`` shows that a 10% wider
  std, a lost correlation or a 0.1 std shift of the mean fail it). p_T replaces the prior
  because the VE prior N(0, sigma_max^2 I) ignores the data mean, and the deterministic ODE
  carries that offset to its samples (measured 0.06 std on coordinate 0 at sigma_max = 10).
* Objectives. For a linear field s(x, t) = k(t) P x on Gaussian data, every objective's
  expectation is a one-dimensional integral over t of Gaussian moments (written out in
  ``_expected_terms``, with alpha(t), sigma(t) and g(t)^2 taken from Song et al. 2021,
  eq. 30-34 directly, not from ``sde.py``); the mean over 64 batches of 4096 must be within
  5 standard errors of it.
* DRL. At the exact energy of Gaussian data, the DRL loss (Gao et al. 2021, Algorithm 1)
  has expectation 0 when its chains sample the recovery conditional; an energy with the
  wrong data variance does not.

What this file replaced: outputs of the code's own earlier commit, pinned for fixed keys.
Two of them were blown-up chains, whose NaN and 1e16 values passed as "reference"; the
diagnosis of both is in the docstrings of ``test_adapted_metropolis_chains_stay_bounded``
(unadjusted chains now refuse an adapted step) and
``tests/test_drl.py::test_metropolis_keeps_the_exact_target_where_ula_is_biased``.
AIS, the ODE likelihood and Asym have analytic tests in test_likelihood.py,
test_exact_models.py and test_conservativeness.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import data, drl, losses, samplers
from ebm_vs_score.sde import VESDE, VPSDE, SubVPSDE

ANALYTIC = [pytest.mark.slow, pytest.mark.analytic]  # CI runs -m "slow and analytic"
SDES = {"ve": VESDE(sigma_min=0.01, sigma_max=10.0), "vp": VPSDE(), "subvp": SubVPSDE()}
M = np.array([0.6, -0.4])
C = np.array([[1.0, 0.45], [0.45, 0.4]])
N = 10_000
N_SE, ALLOWANCE = 5.0, 0.03

# ----------------------------------------------------------------------------------------
# The Gaussian target and the moment criterion.


def gaussian_fns(sde, mean=M, cov=C):
    """Exact score and energy of p_t = N(alpha mean, alpha^2 cov + sigma^2 I) under ``sde``."""
    lam, q = (jnp.asarray(v, jnp.float32) for v in np.linalg.eigh(cov))
    mean = jnp.asarray(mean, jnp.float32)

    def parts(x, t):
        a = sde.alpha(t)[:, None]
        return (x - a * mean) @ q, a**2 * lam + sde.marginal_std(t)[:, None] ** 2

    def score(x, t):
        y, var = parts(x, t)
        return -(y / var) @ q.T

    def energy(x, t):
        y, var = parts(x, t)
        return 0.5 * jnp.sum(y**2 / var, axis=-1)

    return score, energy


def exact_prior(sde, key, n):
    """n samples of the exact p_T = N(alpha_T M, alpha_T^2 C + sigma_T^2 I)."""
    t = jnp.full((1,), sde.T)
    a, std = float(sde.alpha(t)[0]), float(sde.marginal_std(t)[0])
    chol = np.linalg.cholesky(a**2 * C + std**2 * np.eye(2))
    return jnp.asarray(a * M + np.asarray(jax.random.normal(key, (n, 2))) @ chol.T, jnp.float32)


def moment_errors(x, mean=M, cov=C):
    """Deviations of the sample mean and covariance from (mean, cov) in units of their
    tolerance, N_SE standard errors plus ALLOWANCE of the scale: pass iff all are < 1."""
    x = np.asarray(x, np.float64)
    n, sd = x.shape[0], np.sqrt(np.diag(cov))
    mean_tol = N_SE * sd / np.sqrt(n) + ALLOWANCE * sd
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    cov_tol = N_SE * cov_se + ALLOWANCE * np.outer(sd, sd)
    return np.abs(x.mean(0) - mean) / mean_tol, np.abs(np.cov(x.T) - cov) / cov_tol


def _np_gaussian(seed, mean=M, cov=C, n=N):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def test_moment_criterion_has_power():
    """Exact samples pass; a 10% wider std, a zero correlation, or the mean moved by 0.1 std
    along coordinate 0 fail (each alone)."""
    assert all(np.all(e < 1) for e in moment_errors(_np_gaussian(0)))
    uncorrelated = np.diag(np.diag(C))
    for wrong in (_np_gaussian(1, cov=1.21 * C), _np_gaussian(2, cov=uncorrelated),
                  _np_gaussian(3, mean=M + [0.1, 0.0])):
        assert max(np.max(e) for e in moment_errors(wrong)) > 1


def _case(method, sde, num_steps, options=None, fast=False):
    return pytest.param(method, sde, num_steps, options or {}, id=f"{method}-{sde}",
                        marks=[] if fast else ANALYTIC)


# Settings fine enough that the discretization error is below the 3% allowance (measured,
# one seed: at most 3.3% of a covariance entry, 1.5 SE). The annealed Langevin chains
# (ald, ula) need a smaller step and more steps per level than their defaults: with the
# NCSN step 2e-5 (h P = 0.2 at the noisy levels) and 5 steps per level the covariance is
# 7-8% too large on this target, the known O(h) bias of unadjusted Langevin.
SAMPLER_CASES = [
    _case("ode", "ve", 100, fast=True),
    _case("euler_maruyama", "ve", 200, fast=True),
    _case("mala", "vp", 100, fast=True),
    _case("pc", "vp", 200), _case("pc", "ve", 200), _case("pc", "subvp", 200),
    _case("ode", "vp", 100, {"ode_solver": "euler"}),
    _case("ode_adaptive", "vp", 1000), _case("ode_adaptive", "ve", 1000),
    _case("ancestral", "vp", 500), _case("ancestral", "ve", 1000),
    _case("euler_maruyama", "vp", 500), _case("euler_maruyama", "subvp", 500),
    _case("ald", "ve", 100, {"step_size": 5e-6, "n_steps_each": 50}),
    _case("ald", "vp", 100, {"step_size": 1e-5, "n_steps_each": 50}),
    _case("ula", "ve", 100, {"step_size": 5e-6, "n_steps_each": 50}),
    _case("ula", "vp", 100, {"step_size": 1e-5, "n_steps_each": 50}),
    _case("mala", "ve", 100), _case("hmc", "ve", 50), _case("hmc", "vp", 50),
    _case("uhmc", "ve", 50), _case("uhmc", "vp", 50),
]


@pytest.mark.parametrize("method,sde_name,num_steps,options", SAMPLER_CASES)
def test_sampler_reproduces_the_gaussian(method, sde_name, num_steps, options):
    """From the exact p_T with the exact score/energy, mean and covariance are N(M, C)'s."""
    sde = SDES[sde_name]
    score, energy = gaussian_fns(sde)
    init = exact_prior(sde, jax.random.key(7), N)
    x, _ = jax.jit(lambda k, x0: samplers.sample(
        method, k, (N, 2), sde=sde, score_fn=score, energy_fn=energy, num_steps=num_steps,
        init=x0, **options))(jax.random.key(1), init)
    assert bool(jnp.all(jnp.isfinite(x)))
    mean_err, cov_err = moment_errors(x)
    assert np.all(mean_err < 1) and np.all(cov_err < 1), (mean_err, cov_err)


# ----------------------------------------------------------------------------------------
# Adapted chains: only with a Metropolis test (ula / uhmc refuse adapt=True).


@pytest.mark.parametrize("method,sde_name,n", [
    pytest.param("hmc", "ve", 16, marks=ANALYTIC), pytest.param("hmc", "vp", 16, marks=ANALYTIC),
    pytest.param("mala", "vp", 2000, marks=ANALYTIC)])
def test_adapted_metropolis_chains_stay_bounded(method, sde_name, n):
    """mala / hmc with their adapted step on the 8-Gaussians mixture (radius 1.4, component
    std 0.17), 20 levels: every chain of 4 runs stays within |x| < 20.

    The same adaptation without the MH test (ula / uhmc with adapt=True, now refused by
    ``samplers.check_options``) tuned the step to the integrator's stability limit (uhmc:
    eps sqrt(L) 1.5-2.3 for leapfrog's limit 2) and blew up in 9 of 10 runs of 16 chains.
    """
    mix, sde = data.eight_gaussians(), SDES[sde_name]
    score = lambda x, t: mix.noisy_score(x, sde.alpha(t), sde.marginal_std(t))  # noqa: E731
    energy = lambda x, t: -mix.noisy_log_prob(x, sde.alpha(t), sde.marginal_std(t))  # noqa: E731
    run = jax.jit(lambda k: samplers.sample(method, k, (n, 2), sde=sde, score_fn=score,
                                            energy_fn=energy, num_steps=20, adapt=True)[0])
    for seed in range(4):
        x = np.asarray(run(jax.random.key(seed)))
        assert np.all(np.isfinite(x)) and np.abs(x).max() < 20, seed


# ----------------------------------------------------------------------------------------
# Objectives: closed forms for a linear field on Gaussian data.

P = np.array([[-0.9, 0.4], [-0.2, -1.2]])  # not symmetric: L_QC > 0


def _k(sde, t):
    """The field's time factor k(t) = 1 / (alpha^2 + sigma^2): bounded at every level."""
    return 1.0 / (sde.alpha(t) ** 2 + sde.marginal_std(t) ** 2)


def _linear_score(sde):
    return lambda p, x, t, key=None: (_k(sde, t)[:, None] * x) @ p.T


def _paper_coefficients(name, t):
    """alpha(t), sigma(t), g(t)^2 of Song et al. 2021: VE eq. 30, VP eq. 32-33, sub-VP eq. 34,
    for the SDES above (VE sigma 0.01 -> 10; VP / sub-VP beta 0.1 -> 20)."""
    if name == "ve":
        smin, smax = 0.01, 10.0
        sigma = smin * (smax / smin) ** t
        return np.ones_like(t), sigma, 2 * sigma**2 * np.log(smax / smin)
    bmin, bmax = 0.1, 20.0
    beta = bmin + t * (bmax - bmin)
    alpha = np.exp(-0.25 * t**2 * (bmax - bmin) - 0.5 * t * bmin)
    if name == "vp":
        return alpha, np.sqrt(1 - alpha**2), beta
    return alpha, 1 - alpha**2, beta * (1 - alpha**4)


def _levels(case):
    """(alpha, sigma, weight multiplier, k) at the objective's noise levels, with the
    probability of each level, as arrays over a grid of t or over the discrete chain."""
    sde_name = _LOSS_CASES[case][0]
    if case == "smld":  # uniform level i of the geometric ladder, model time i / (N - 1)
        sigma = np.exp(np.linspace(np.log(0.01), np.log(10.0), 1000))
        return np.ones(1000), sigma, np.ones(1000), 1 / (1 + sigma**2), np.full(1000, 1e-3)
    if case == "ddpm":  # uniform step i of the DDPM chain (Ho et al. 2020, eq. 4)
        abar = np.cumprod(1 - np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
        return np.sqrt(abar), np.sqrt(1 - abar), np.ones(1000), np.ones(1000), np.full(1000, 1e-3)
    eps = SDES[sde_name].eps
    t = np.linspace(eps, 1.0, 200_001)
    alpha, sigma, g2 = _paper_coefficients(sde_name, t)
    prob = np.full(t.shape, 1.0 / (t.size - 1))
    prob[[0, -1]] /= 2  # trapezoid rule for E_{t ~ U(eps, 1)}
    weight = g2 / sigma**2 if case == "dsm_lw" else np.ones_like(t)  # lambda = g^2, not sigma^2
    return alpha, sigma, weight, 1 / (alpha**2 + sigma**2), prob


def _expected_terms(case, reduce_mean):
    """E of each metric of the objective for s = k(t) P x, x0 ~ N(M, C), x_t = alpha x0 + sigma z.

    DSM: lambda/2 E||sigma s + z||^2 = 1/2 (||A M||^2 + tr(A C A^T) + ||B||_F^2) with
    A = sigma k alpha P, B = I + sigma^2 k P (times g^2 / sigma^2 with likelihood weighting).
    ISM and (V)SSM (E[v v^T] = I): sigma^2 (k tr P + k^2/2 (||P mu_t||^2 + tr(P S_t P^T))),
    mu_t = alpha M, S_t = alpha^2 C + sigma^2 I. L_QC: sigma^2 k^2 Asym(P), Asym(P) =
    1/2 ||P - P^T||_F^2. Each divided by D = 2 with ``reduce_mean``.
    """
    alpha, sigma, weight, k, prob = _levels(case)
    pm, pcp = P @ M, np.trace(P @ C @ P.T)
    if case in ("dsm", "dsm_lw", "smld", "ddpm"):
        a2 = (sigma * k * alpha) ** 2
        b2 = np.sum((np.eye(2)[..., None] + (sigma**2 * k) * P[..., None]) ** 2, axis=(0, 1))
        base = weight * 0.5 * (a2 * (pm @ pm + pcp) + b2)
    else:
        second = (alpha**2) * (pm @ pm) + alpha**2 * pcp + sigma**2 * np.sum(P**2)
        base = sigma**2 * (k * np.trace(P) + 0.5 * k**2 * second)
    qc = sigma**2 * k**2 * 0.5 * np.sum((P - P.T) ** 2)
    scale = 0.5 if reduce_mean else 1.0
    return {"base": scale * float(np.sum(prob * base)), "qc": scale * float(np.sum(prob * qc))}


_LOSS_CASES = {  # case -> (sde, factory, options, the base term's metric)
    "dsm": ("vp", losses.dsm_loss, dict(qc_weight=0.5, qc_probes=2, reduce_mean=True), "dsm"),
    "dsm_lw": ("subvp", losses.dsm_loss, dict(likelihood_weighting=True), "dsm"),
    "smld": ("ve", losses.smld_loss, dict(qc_weight=0.1), "dsm"),
    "ddpm": ("vp", losses.ddpm_loss, {}, "dsm"),
    "ssm": ("vp", losses.ssm_loss, dict(num_projections=3, projection="gaussian"), "ssm"),
    "ssm_vr": ("ve", losses.ssm_loss, dict(variance_reduction=True, projection="sphere",
                                           num_projections=2), "ssm_vr"),
    "ism": ("vp", losses.ism_loss, dict(qc_weight=0.2, qc_probes=5), "ism"),
}


@pytest.mark.parametrize("case", [
    "dsm", "ism", *(pytest.param(c, marks=ANALYTIC) for c in ("dsm_lw", "smld", "ddpm", "ssm",
                                                             "ssm_vr"))])
def test_objective_matches_its_closed_form_on_a_gaussian(case):
    """Mean of each metric over 64 batches of 4096 within 5 standard errors of its closed
    form; the total loss is the base term plus qc_weight L_QC."""
    sde_name, factory, options, name = _LOSS_CASES[case]
    sde = SDES[sde_name]
    loss_fn = factory(_linear_score(sde), sde, **options)
    chol = jnp.asarray(np.linalg.cholesky(C), jnp.float32)

    def metrics(key):
        k_x, k_loss = jax.random.split(key)
        x0 = jnp.asarray(M, jnp.float32) + jax.random.normal(k_x, (4096, 2)) @ chol.T
        return loss_fn(jnp.asarray(P, jnp.float32), {"x": x0}, k_loss)[1]

    out = jax.jit(jax.vmap(metrics))(jax.random.split(jax.random.key(0), 64))
    expected = _expected_terms(case, options.get("reduce_mean", False))
    terms = [(name, expected["base"])]
    if options.get("qc_weight"):
        terms.append(("qc", expected["qc"]))
    for metric, value in terms:
        got = np.asarray(out[metric], np.float64)
        se = got.std(ddof=1) / np.sqrt(got.size)
        assert abs(got.mean() - value) < N_SE * se, (metric, got.mean(), value, se)
        assert se < 0.02 * abs(value), (metric, se, value)  # the comparison is not vacuous
    np.testing.assert_allclose(
        out["loss"], out[name] + options.get("qc_weight", 0.0) * out.get("qc", 0.0), rtol=1e-5)


# ----------------------------------------------------------------------------------------
# DRL: the loss vanishes in expectation at the exact energy.


def _drl_gaussian_energy(schedule, mean, var):
    """E(y, t) of y_t = a_t x + s_t eps for x ~ N(mean, var_scale var I): the exact energy
    of every level when ``var_scale`` (the params) is 1."""

    def energy(var_scale, y, t, key=None):
        a, s = schedule.signal_scale(t), schedule.noise_std(t)
        return jnp.sum((y - a[:, None] * mean) ** 2, -1) / (2 * (a**2 * var * var_scale + s**2))

    return energy


@pytest.mark.analytic
@pytest.mark.slow
def test_drl_loss_vanishes_at_the_exact_energy_and_not_at_a_wrong_one():
    """Gao et al. 2021, Algorithm 1: loss = E_t w_t (E(y+, t) - E(y-, t)) with y- from the
    recovery conditional of the model. For the exact energy y- and y+ have the same law
    (MALA chains, 40 steps of s_t = sigma_{t+1}/sqrt(2), acceptance 0.87), so the mean over
    32 batches of 4096 is within 4 standard errors of 0; an energy whose data variance is
    1.2x too large is more than 5 standard errors away (measured 19)."""
    schedule = drl.make_schedule(6)
    mean, var = jnp.asarray([0.5, -0.3]), 0.25
    loss_fn = drl.make_drl_loss(_drl_gaussian_energy(schedule, mean, var), schedule,
                                drl.DRLChain(40, 0.5, True, "sigma"))

    def loss(var_scale, key):
        k_x, k_loss = jax.random.split(key)
        x = mean + np.sqrt(var) * jax.random.normal(k_x, (4096, 2))
        return loss_fn(var_scale, {"x": x}, k_loss)[0]

    run = jax.jit(jax.vmap(loss, in_axes=(None, 0)))
    keys = jax.random.split(jax.random.key(0), 32)
    for var_scale, exact in ((1.0, True), (1.2, False)):
        values = np.asarray(run(var_scale, keys), np.float64)
        assert np.all(np.isfinite(values))
        z = values.mean() / (values.std(ddof=1) / np.sqrt(values.size))
        assert (abs(z) < 4) if exact else (abs(z) > 5), (var_scale, z)
