"""Two seed claims on exact models, and the likelihood protocol shared by the ODE and AIS.

* Song & Ermon 2019, Fig. 3: Langevin with the exact score of 0.8/0.2 separated modes
  gets the weights wrong (about 1/2 each from a uniform start); annealed Langevin gets them.
* Gao et al. 2021, Table 4: AIS and the probability-flow ODE give the same NLL for an
  energy model; here the model is exact (E = -log p_t), so both must equal the true NLL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import data, likelihood
from ebm_vs_score import sde as sde_lib
from ebm_vs_score.evaluate import exact_models, nll


def test_annealing_recovers_mode_weights_plain_langevin_does_not():
    out = exact_models.annealing_experiment(jax.random.PRNGKey(0), num_samples=1000,
                                            steps_per_level=50)
    np.testing.assert_allclose(out["truth"], [0.8, 0.2])
    assert out["annealed_error"] < 0.05, out  # binomial std of a weight: 0.013
    assert out["plain_error"] > 0.2, out  # the basins of a uniform start: ~0.5 each


def test_mode_weights_counts_nearest_component():
    mixture = exact_models.two_modes((0.5, 0.5), distance=10.0)
    points = jnp.concatenate([mixture.means[0] + 0.1 * jnp.ones((3, 2)),
                              mixture.means[1] - 0.1 * jnp.ones((1, 2))])
    np.testing.assert_allclose(exact_models.mode_weights(points, mixture), [0.75, 0.25])


def test_ais_and_ode_match_the_exact_nll_of_an_exact_energy():
    """8 Gaussians, E(x, t) = -log p_t(x): ODE and AIS NLL on the same points = the truth."""
    mixture = data.toy_mixture("8gaussians")
    out = exact_models.ais_vs_ode(jax.random.PRNGKey(0), mixture, num_examples=64,
                                  num_steps=100, num_chains=128)
    assert out["nll_divergence"] == "exact"
    assert out["nll_nats"] == pytest.approx(out["exact_nll_nats"], abs=2e-3)
    tol = max(0.05, 4 * out["ais_log_z_stderr"])
    assert out["ais_nll_nats"] == pytest.approx(out["exact_nll_nats"], abs=tol)
    assert out["ais_log_z"] == pytest.approx(0.0, abs=tol)  # a normalized energy: log Z = 0


def test_dequantized_bits_per_dim_agree_for_ais_ode_and_the_truth():
    """Images-like data (4 dims in [-1, 1], 256 levels): same dequantized points, same offset
    log2(256) - 1 = 7, so AIS, ODE and the exact density give the same bits/dim."""
    gauss = data.GaussianMixture(jnp.ones(1), jnp.zeros((1, 4)), jnp.full((1,), 0.4))
    out = exact_models.ais_vs_ode(jax.random.PRNGKey(1), gauss, num_examples=32,
                                  num_bins=256, num_steps=100, num_chains=128)
    per_nat = 1.0 / (4 * np.log(2.0))
    assert out["nll_bpd"] == pytest.approx(out["exact_nll_bpd"], abs=2e-3 * per_nat)
    assert out["ais_nll_bpd"] == pytest.approx(out["exact_nll_bpd"], abs=0.05 * per_nat)
    # nats -> bits/dim is -log p / (D ln 2) + 7: the offset Song et al. 2021 use
    assert out["nll_bpd"] == pytest.approx(out["nll_nats"] * per_nat + 7.0, abs=1e-9)


def test_protocol_matches_the_library_bits_per_dim():
    """The evaluator's dequantize-then-ODE path is likelihood.bits_per_dim, number for number."""
    sde = sde_lib.VPSDE()
    score_fn, _ = exact_models.mixture_model(sde)
    gauss = data.GaussianMixture(jnp.ones(1), jnp.zeros((1, 3)), jnp.full((1,), 0.5))
    x = np.clip(np.asarray(gauss.sample(jax.random.PRNGKey(2), 8)), -1, 1).reshape(8, 1, 3, 1)
    flat = lambda p, x, t, key=None: score_fn(p, x.reshape(len(x), -1), t).reshape(x.shape)  # noqa: E731
    key = jax.random.PRNGKey(3)
    k_deq, _ = jax.random.split(key)
    points = nll.protocol_points(k_deq, x, 256)
    protocol = nll.Protocol(num_bins=256, batch_size=8, rtol=1e-4, atol=1e-4)
    ours = nll.ode_nll_metrics(flat, gauss, points, key, sde=sde, protocol=protocol)
    theirs, _ = likelihood.bits_per_dim(lambda x, t: flat(gauss, x, t), jnp.asarray(x),
                                        sde=sde, key=key, num_probes=0, rtol=1e-4, atol=1e-4)
    assert ours["nll_bpd"] == pytest.approx(float(jnp.mean(theirs)), abs=1e-4)


def test_probe_noise_is_stated_with_probes():
    """K Hutchinson probes: the divergence is named and the probe std is positive (a
    mixture: the drift's Jacobian is not a multiple of I, where Rademacher probes are exact)."""
    sde = sde_lib.VPSDE()
    score_fn, _ = exact_models.mixture_model(sde)
    gauss = data.toy_mixture("gmm", dim=6, num_components=4)
    x = np.asarray(gauss.sample(jax.random.PRNGKey(4), 8))
    protocol = nll.Protocol(num_bins=None, num_probes=2, batch_size=8, rtol=1e-3,
                                    atol=1e-3, probe_check=8)
    out = nll.ode_nll_metrics(score_fn, gauss, x, jax.random.PRNGKey(5), sde=sde,
                                      protocol=protocol)
    assert out["nll_divergence"] == "hutchinson_2" and out["nll_probes"] == 2
    assert 0.0 < out["nll_probe_std"] < 5.0


def test_energy_and_ode_agree_for_an_exact_energy_and_not_for_another():
    """log p_ODE + E(x, eps) is -log Z at every point iff exp(-E) / Z is the ODE's density:
    the exact mixture energy (normalized: log Z = 0) has no spread; doubling E at eps only
    (a different density, same ODE) gives the spread of E over the points."""
    sde = sde_lib.VPSDE()
    mixture = data.toy_mixture("8gaussians")
    score_fn, energy_fn = exact_models.mixture_model(sde)
    points = np.asarray(mixture.sample(jax.random.PRNGKey(4), 32))
    protocol = nll.Protocol(num_bins=None, batch_size=32)
    _, log_p = nll.ode_nll(score_fn, mixture, points, jax.random.PRNGKey(5),
                                   sde=sde, protocol=protocol)
    exact = nll.energy_ode_agreement(energy_fn, mixture, points, log_p, sde=sde,
                                             batch_size=16)
    assert exact["ode_log_z"] == pytest.approx(0.0, abs=2e-3)
    assert exact["energy_ode_spread_nats"] < 5e-3
    doubled = lambda p, x, t: 2.0 * energy_fn(p, x, t)  # noqa: E731
    other = nll.energy_ode_agreement(doubled, mixture, points, log_p, sde=sde)
    e = np.asarray(energy_fn(mixture, jnp.asarray(points), jnp.full((32,), sde.eps)))
    assert other["energy_ode_spread_nats"] == pytest.approx(np.std(e, ddof=1), rel=1e-3)
    assert other["energy_ode_spread_nats"] > 100 * exact["energy_ode_spread_nats"]


def test_probe_std_from_one_solve_matches_independent_probe_draws():
    """``nll_probe_std`` comes from the spread of one solve's K per-probe integrals; it
    must equal the std of the K-probe NLL over independent probe draws (here 16)."""
    sde = sde_lib.VPSDE()
    score_fn, _ = exact_models.mixture_model(sde)
    gauss = data.toy_mixture("gmm", dim=6, num_components=4)
    x = np.asarray(gauss.sample(jax.random.PRNGKey(4), 32))
    protocol = nll.Protocol(num_bins=None, num_probes=16, batch_size=32, rtol=1e-4,
                            atol=1e-4)
    out = nll.ode_nll_metrics(score_fn, gauss, x, jax.random.PRNGKey(5), sde=sde,
                              protocol=protocol)
    run = nll.ode_runner(score_fn, sde=sde, protocol=protocol)
    draws = np.stack([nll.ode_log_probs(run, gauss, x, jax.random.PRNGKey(10 + i), 32)[0]
                      for i in range(16)])
    empirical = float(np.sqrt(np.mean(draws.var(axis=0, ddof=1))))
    assert out["nll_probe_std"] == pytest.approx(empirical, rel=0.25)
    assert out["nll_probe_se"] == pytest.approx(out["nll_probe_std"] / np.sqrt(32))
