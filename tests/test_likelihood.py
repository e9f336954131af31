"""Tests for ebm_vs_score.likelihood.

The probability-flow ODE NLL of a Gaussian with its exact noisy score equals the analytic
NLL (DESIGN.md rule 9). The data are N(mu, Sigma) in D = 8 with a full covariance (so the
Jacobian of the score is not diagonal and Rademacher probes have nonzero variance); under
the SDE, x_t ~ N(alpha mu, alpha^2 Sigma + sigma^2 I) and the score is exact.

Two error sources are separated: the ODE transport itself (log p_eps(x) = log p_T(z) +
int div) is checked to 2e-3 nats by replacing ``prior_logp(z)`` with the exact log p_T(z);
the full estimate, which uses the prior N(0, sigma_max^2 I) / N(0, I) instead of p_T, must
be within 0.05 nats (the prior mismatch, measured 0.02 for VE and 0.007 for VP).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import likelihood
from ebm_vs_score.sde import VESDE, VPSDE, SubVPSDE

D = 8
B = 16
SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}
TRANSPORT_TOL = 2e-3  # nats, measured 1.4e-4 (VE), 1.1e-4 (VP), 9e-5 (sub-VP)
PRIOR_TOL = 0.05  # nats, measured 0.022 (VE), 0.0073 (VP, sub-VP)


def _gaussian(scale=1.0, seed=0):
    """Mean (D,), covariance eigenvalues (D,) and eigenvectors (D, D) of a fixed Gaussian."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(D, D)) * 0.3 * scale
    lam, q = np.linalg.eigh(a @ a.T + 0.05 * scale**2 * np.eye(D))
    mu = rng.uniform(-0.3, 0.3, D)
    return tuple(jnp.asarray(v, jnp.float32) for v in (mu, lam, q))


MU, LAM, Q = _gaussian()


def gaussian_fns(sde, mu=MU, lam=LAM, q=Q):
    """Exact noisy score s(x, t) and log p_t(x) of N(mu, q diag(lam) q^T) under ``sde``."""

    def parts(x, t):
        a = sde.alpha(t)[:, None]
        var = a**2 * lam + sde.marginal_std(t)[:, None] ** 2
        return (x - a * mu) @ q, var

    def score(x, t):
        y, var = parts(x, t)
        return -(y / var) @ q.T

    def log_p(x, t):
        y, var = parts(x, t)
        return -0.5 * jnp.sum(jnp.log(2 * jnp.pi * var) + y**2 / var, axis=-1)

    return score, log_p


def _samples(n, seed, mu=MU, lam=LAM, q=Q):
    z = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return mu + (z * jnp.sqrt(lam)) @ q.T


def _full(t, n=B):
    return jnp.full((n,), t, jnp.float32)


@pytest.mark.parametrize("sde_name", [
    "ve", "vp", pytest.param("subvp", marks=[pytest.mark.slow, pytest.mark.analytic])])
def test_ode_log_prob_matches_gaussian(sde_name):
    """Exact-divergence ODE log p equals the analytic log N(x; alpha mu, alpha^2 Sigma +
    sigma^2 I) at t = eps: transport to 2e-3 nats, full estimate to 0.05 nats."""
    sde = SDES[sde_name]
    score, log_p = gaussian_fns(sde)
    x = _samples(B, 1)
    lp, info = jax.jit(lambda x: likelihood.ode_log_prob(score, x, sde=sde))(x)
    exact = log_p(x, _full(sde.eps))
    transport = lp - info["prior_logp"] + log_p(info["z"], _full(sde.T))
    np.testing.assert_allclose(transport, exact, atol=TRANSPORT_TOL)
    np.testing.assert_allclose(lp, exact, atol=PRIOR_TOL)
    np.testing.assert_allclose(lp, info["prior_logp"] + info["delta_logp"], rtol=1e-6)
    assert int(info["nfe"]) == 6 * int(info["num_steps"]) + 1


@pytest.mark.parametrize("probe", [
    "rademacher", pytest.param("gaussian", marks=[pytest.mark.slow, pytest.mark.analytic])])
def test_hutchinson_agrees_with_exact_within_stderr(probe):
    """K = 64 independent one-probe Hutchinson estimates of log p per example (probes fixed
    along each trajectory): |mean - exact| < 3 standard errors of the mean, for each of 4
    examples. The rows of one batch get independent probes, so the K repeats are rows."""
    sde, k, n = SDES["vp"], 64, 4
    score, _ = gaussian_fns(sde)
    x = _samples(n, 2)
    exact, _ = likelihood.ode_log_prob(score, x, sde=sde)
    reps = jnp.tile(x, (k, 1))
    est, info = jax.jit(lambda x, key: likelihood.ode_log_prob(
        score, x, sde=sde, key=key, num_probes=1, probe=probe))(reps, jax.random.PRNGKey(3))
    est = np.asarray(est).reshape(k, n)
    stderr = est.std(axis=0, ddof=1) / math.sqrt(k)
    assert np.all(stderr > 1e-3)  # the estimator is noisy: the comparison is not vacuous
    assert np.all(np.abs(est.mean(0) - np.asarray(exact)) < 3 * stderr), (est.mean(0), exact)


def _data_gaussian():
    """A Gaussian that lives inside [-1, 1]^D (covariance scaled down)."""
    return _gaussian(scale=0.5, seed=4)


def _analytic_bpd(log_p_x, num_bins):
    return -(log_p_x + D * math.log(2 / num_bins)) / (D * math.log(2))


def test_bits_per_dim_matches_analytic():
    """bits/dim of quantized data (256 levels, dequantized inside) equals the analytic
    -(log p(x) + D log(2/256)) / (D ln 2) at the dequantized x within 1%."""
    sde = SDES["vp"]
    mu, lam, q = _data_gaussian()
    score, log_p = gaussian_fns(sde, mu, lam, q)
    x = jnp.clip(_samples(B, 5, mu, lam, q), -1, 1)
    x = jnp.round((x + 1) / 2 * 255) / 255 * 2 - 1  # on the 256-level grid of [-1, 1]
    bpd, info = jax.jit(lambda x, key: likelihood.bits_per_dim(
        score, x, sde=sde, key=key, num_probes=0))(x, jax.random.PRNGKey(0))
    x_deq = info["x"]
    k = jnp.round((x + 1) / 2 * 255)
    assert bool(jnp.all((x_deq + 1) / 2 * 256 >= k - 1e-4))
    assert bool(jnp.all((x_deq + 1) / 2 * 256 < k + 1 + 1e-4))
    expected = _analytic_bpd(log_p(x_deq, _full(sde.eps)), 256)
    np.testing.assert_allclose(bpd, expected, rtol=0.01)


def test_dataset_bits_per_dim_mean_and_stderr():
    """Over 3 batches of already-dequantized data: the mean and standard error equal those
    of the analytic per-example bits/dim (1%, 10%), and progress is reported per batch."""
    sde = SDES["vp"]
    mu, lam, q = _data_gaussian()
    score, log_p = gaussian_fns(sde, mu, lam, q)
    batches = [jnp.clip(_samples(8, 10 + i, mu, lam, q), -1, 1) for i in range(3)]
    seen = []
    mean, stderr = likelihood.dataset_bits_per_dim(
        score, batches, sde=sde, key=jax.random.PRNGKey(0), num_probes=0, dequantize=False,
        log_every=1, callback=lambda i, running: seen.append(i))
    analytic = np.concatenate(
        [_analytic_bpd(log_p(b, _full(sde.eps, 8)), 256) for b in batches])
    assert seen == [1, 2, 3]
    np.testing.assert_allclose(mean, analytic.mean(), rtol=0.01)
    np.testing.assert_allclose(stderr, analytic.std(ddof=1) / math.sqrt(24), rtol=0.1)


def test_ais_recovers_gaussian_log_normalizer():
    """AIS from N(0, I) to exp(-|x - mu|^2 / 2 s^2) in D = 4 recovers log Z = D/2 log(2 pi
    s^2) within 2 standard errors (delta method); ais_log_prob is then the Gaussian log p."""
    dim, s = 4, 0.4
    mu = jnp.array([1.0, -0.5, 0.5, 1.5])
    energy = lambda x: 0.5 * jnp.sum((x - mu) ** 2, -1) / s**2
    true = 0.5 * dim * math.log(2 * math.pi * s**2)
    log_z, info = jax.jit(lambda key: likelihood.ais_log_normalizer(
        energy, key, (dim,), num_steps=100, num_leapfrog=5, step_size=0.15,
        num_chains=512))(jax.random.PRNGKey(0))
    stderr = float(info["stderr"])
    assert 0 < stderr < 0.1 and 10 < float(info["ess"]) <= 512
    assert 0.5 < float(info["acceptance"]) <= 1.0
    assert abs(float(log_z) - true) < 2 * stderr, (float(log_z), true, stderr)
    x = jnp.zeros((3, dim))
    exact = -0.5 * jnp.sum((x - mu) ** 2, -1) / s**2 - true
    np.testing.assert_allclose(likelihood.ais_log_prob(energy, x, log_z), exact,
                               atol=2 * stderr)


def _wide_gaussian_ais(tune_chains: int):
    """AIS from N(0, I) to N(mu, 3^2 I) in D = 8: the fixed step 0.1 is far too short there
    (acceptance ~1, the chains crawl), the regime of a trained digits energy."""
    dim, s = 8, 3.0
    mu = jnp.linspace(2.0, 4.0, dim)
    energy = lambda x: 0.5 * jnp.sum((x - mu) ** 2, -1) / s**2
    log_z, info = jax.jit(lambda key: likelihood.ais_log_normalizer(
        energy, key, (dim,), num_steps=100, num_leapfrog=5, step_size=0.1, num_chains=256,
        tune_chains=tune_chains))(jax.random.PRNGKey(0))
    return float(log_z) - 0.5 * dim * math.log(2 * math.pi * s**2), info


def test_ais_tuned_step_size_recovers_log_z_where_the_fixed_one_does_not():
    """The pilot walks the step size to an acceptance near 0.65 and the estimate lands
    within 3 standard errors of the exact log Z with a healthy ESS; the fixed step size
    misses by more than 1 nat (10 of its own standard errors) with the same budget."""
    error, info = _wide_gaussian_ais(tune_chains=16)
    assert 0.55 < float(info["acceptance"]) < 0.8
    assert float(info["step_sizes"][-1]) > 1.0 and float(info["ess"]) > 20
    assert abs(error) < 3 * float(info["stderr"]), (error, float(info["stderr"]))
    assert float(info["tune_nfe"]) == pytest.approx(float(info["nfe"]) * 16 / 256)
    fixed_error, fixed = _wide_gaussian_ais(tune_chains=0)
    assert float(fixed["acceptance"]) > 0.99 and fixed_error < -1.0
    assert abs(fixed_error) > 3 * float(fixed["stderr"])


def _ill_conditioned_gaussian(dim: int = 64):
    """N(mu, diag s^2) in D = 64 with s from 0.003 to 0.5 (a background pixel inside its
    bin next to a stroke pixel), its energy, exact log Z and 256 of its samples."""
    stds = jnp.asarray(np.logspace(np.log10(0.003), np.log10(0.5), dim), jnp.float32)
    mu = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, dim), jnp.float32)
    energy = lambda x: 0.5 * jnp.sum(((x - mu) / stds) ** 2, -1)
    log_z = float(jnp.sum(jnp.log(stds))) + 0.5 * dim * math.log(2 * math.pi)
    samples = mu + stds * jax.random.normal(jax.random.PRNGKey(1), (256, dim))
    return energy, log_z, samples


def test_ais_from_a_fitted_diagonal_base_recovers_log_z_where_an_isotropic_one_cannot():
    """Per-dimension scales 170x apart: from N(0, I) with one step size the anneal ends
    hundreds of nats short at ESS ~1 (the digits C-ResNet's failure: NLL below 0 bits/dim);
    from N(mean, diag std^2) of the samples (annealed in whitened coordinates) it is exact
    within 3 standard errors with nearly every chain effective."""
    energy, true, samples = _ill_conditioned_gaussian()
    run = jax.jit(lambda key, **base: likelihood.ais_log_normalizer(
        energy, key, (64,), num_steps=200, num_chains=256, **base))
    iso_log_z, iso = run(jax.random.PRNGKey(0))
    assert float(iso_log_z) - true < -100 and float(iso["ess"]) < 5
    mean, std = samples.mean(0), samples.std(0)
    log_z, info = run(jax.random.PRNGKey(0), base_mean=mean, base_std=std)
    assert float(info["ess"]) > 128
    assert abs(float(log_z) - true) < 3 * float(info["stderr"]) + 1e-3, (float(log_z), true)
    with pytest.raises(ValueError, match="per-dimension base_std or a base_chol needs"):
        likelihood.ais_log_normalizer(energy, jax.random.PRNGKey(0), (64,), base_std=std)


def test_ais_from_a_fitted_full_covariance_base_follows_correlated_scales():
    """The same scales along random orthogonal directions (neighbouring pixels move
    together): from N(mean, L L^T), L the Cholesky factor of the samples' covariance, the
    target is white in z and AIS is exact within 3 standard errors at a high ESS."""
    dim = 32
    stds = jnp.asarray(np.logspace(np.log10(0.003), np.log10(0.5), dim), jnp.float32)
    rot, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((dim, dim)))
    rot = jnp.asarray(rot, jnp.float32)
    energy = lambda x: 0.5 * jnp.sum(((x @ rot) / stds) ** 2, -1)  # noqa: E731
    true = float(jnp.sum(jnp.log(stds))) + 0.5 * dim * math.log(2 * math.pi)
    samples = (stds * jax.random.normal(jax.random.PRNGKey(1), (512, dim))) @ rot.T
    run = jax.jit(lambda key, **base: likelihood.ais_log_normalizer(
        energy, key, (dim,), num_steps=200, num_chains=256, **base))
    mean = samples.mean(0)
    chol = jnp.linalg.cholesky(jnp.cov(samples, rowvar=False))
    log_z, info = run(jax.random.PRNGKey(0), base_mean=mean, base_chol=chol)
    assert float(info["ess"]) > 128
    assert abs(float(log_z) - true) < 3 * float(info["stderr"]) + 1e-3, (float(log_z), true)
    with pytest.raises(ValueError, match=r"base_chol has shape \(2, 2\)"):
        likelihood.ais_log_normalizer(energy, jax.random.PRNGKey(0), (dim,), base_mean=mean,
                                      base_chol=jnp.eye(2))


def _pooled_and_single(energy, dim, fitted):
    """log Z from the fitted base alone, from N(0, I) alone (256 chains each) and pooled
    (128 chains each)."""
    run = jax.jit(lambda key, **base: likelihood.ais_log_normalizer(
        energy, key, (dim,), num_steps=200, num_chains=256, **base))
    pooled = jax.jit(lambda key: likelihood.pooled_ais_log_normalizer(
        energy, key, (dim,), bases=(fitted, {"base_std": 1.0}), num_steps=200,
        num_chains=256))
    key = jax.random.PRNGKey(0)
    return float(run(key, **fitted)[0]), float(run(key)[0]), pooled(key)


def test_pooled_bases_reach_what_either_base_alone_misses():
    """Two targets, each missed by one base by many nats: the 170x ill-conditioned Gaussian
    (N(0, I) misses it) and a broad N(0, I) target seen from a base fitted to a narrow
    corner of it (as Energy Matching's exp(-V) is broader than the digits). Pooled, log Ẑ
    lies within ln 2 (the one dead base's half of the chains) + 3 SE below the truth."""
    energy, true, samples = _ill_conditioned_gaussian()
    fitted = {"base_mean": samples.mean(0), "base_std": samples.std(0)}
    alone, iso, (log_z, info) = _pooled_and_single(energy, 64, fitted)
    assert iso - true < -100 and abs(alone - true) < 1.0
    se = float(info["stderr"])
    assert true - math.log(2) - 3 * se - 1e-3 < float(log_z) < true + 3 * se + 1e-3
    assert info["log_z_per_base"].shape == (2,) and info["log_weights"].shape == (256,)

    dim = 32
    broad = lambda x: 0.5 * jnp.sum(x**2, -1)  # noqa: E731
    true = 0.5 * dim * math.log(2 * math.pi)
    corner = {"base_mean": jnp.full((dim,), 0.8), "base_std": jnp.full((dim,), 0.05)}
    alone, iso, (log_z, info) = _pooled_and_single(broad, dim, corner)
    assert alone - true < -5 and abs(iso - true) < 1e-3
    se = float(info["stderr"])
    assert true - math.log(2) - 3 * se - 1e-3 < float(log_z) < true + 3 * se + 1e-3
    with pytest.raises(ValueError, match="AIS bases need at least one"):
        likelihood.pooled_ais_log_normalizer(broad, jax.random.PRNGKey(0), (dim,), bases=(),
                                             num_chains=8)


def test_energy_tail_tells_a_bounded_energy_from_a_growing_one():
    """The radial integrand exp(-E(r u)) r^(D-1) falls far out for a quadratic energy and
    for |x| in D = 2; it still rises for an energy bounded along rays (Z = inf)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 2))
    quadratic = likelihood.energy_tail(lambda y: 0.5 * jnp.sum(y**2, -1), x)
    linear = likelihood.energy_tail(lambda y: jnp.sqrt(jnp.sum(y**2, -1)), x)
    bounded = likelihood.energy_tail(lambda y: 5.0 * jnp.tanh(jnp.sum(y**2, -1)), x)
    assert quadratic["rising_fraction"] == 0.0 and linear["rising_fraction"] == 0.0
    assert bounded["rising_fraction"] == 1.0
    assert bounded["needed_nats"] == pytest.approx(math.log(2.0))
    nan = likelihood.energy_tail(lambda y: jnp.full(y.shape[:1], jnp.nan), x)
    assert nan["rising_fraction"] == 1.0  # no evidence of a fall is not a pass


def test_bad_arguments_raise():
    score, _ = gaussian_fns(SDES["vp"])
    x = _samples(2, 0)
    with pytest.raises(ValueError, match="PRNG key"):
        likelihood.ode_log_prob(score, x, sde=SDES["vp"], num_probes=2)
    with pytest.raises(ValueError, match="valid names"):
        likelihood.ode_log_prob(score, x, sde=SDES["vp"], key=jax.random.PRNGKey(0),
                                num_probes=1, probe="sphere")
    with pytest.raises(ValueError, match="valid names"):
        likelihood.ais_schedule(10, "cosine")
    with pytest.raises(ValueError, match="tune_chains=-1 must be >= 0"):
        likelihood.ais_log_normalizer(lambda x: jnp.sum(x**2, -1), jax.random.PRNGKey(0), (2,),
                                      tune_chains=-1)


def test_score_fn_of_the_wrong_shape_is_refused():
    """ode_log_prob names ``score_fn`` when its output is not shaped like x."""
    x = _samples(2, 0)
    with pytest.raises(ValueError, match="^score_fn maps x of shape"):
        likelihood.ode_log_prob(lambda y, t: y[:, :3], x, sde=SDES["vp"])
