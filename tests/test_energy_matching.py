"""Energy Matching's objectives (ebm_vs_score/energy_matching.py) against exact answers."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import energy_matching as em
from ebm_vs_score import samplers


def test_flow_weight_and_temperature_schedules():
    t = jnp.asarray([0.0, 0.5, 0.8, 0.9, 1.0, 1.5])
    np.testing.assert_allclose(em.flow_weight(t, 0.8), [1, 1, 1, 0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(em.temperature(t, 0.8, 0.2), [0, 0, 0, 0.1, 0.2, 0.2],
                               atol=1e-6)


def test_ot_permutation_is_the_brute_force_optimal_assignment():
    k0, k1 = jax.random.split(jax.random.PRNGKey(0))
    x0, x1 = jax.random.normal(k0, (6, 3)), jax.random.normal(k1, (6, 3))
    perm = np.asarray(jax.jit(em.ot_permutation)(x0, x1))
    cost = lambda p: float(jnp.sum((x0[np.asarray(p)] - x1) ** 2))  # noqa: E731
    best = min(itertools.permutations(range(6)), key=cost)
    assert sorted(perm) == list(range(6))
    np.testing.assert_allclose(cost(perm), cost(best), rtol=1e-6)


def test_flow_loss_of_a_known_field_equals_its_expectation():
    """Data at a point m: v(x) = m - x leaves the residual t u on the path, so L_flow =
    E[w(t) t^2] E[u^2] with E[u^2] = m^2 + 1 per dimension (Monte Carlo, 3 std errors)."""
    m, n = 0.7, 512
    x1 = jnp.full((n, 2), m)
    loss = jax.jit(lambda k: em.flow_loss(lambda x: m - x, k, x1, 0.8))
    losses = [float(loss(jax.random.PRNGKey(i))) for i in range(16)]
    wt2 = 0.8**3 / 3 + (1.0 / 0.2) * ((1 - 0.8**3) / 3 - (1 - 0.8**4) / 4)
    expected = wt2 * (m**2 + 1)
    spread = np.std(losses) / np.sqrt(len(losses))
    assert abs(np.mean(losses) - expected) < max(3 * spread, 0.01 * expected), losses


def test_trimmed_mean_and_clamped_cd():
    v = jnp.arange(10.0)
    assert float(em.trimmed_mean(v, 0.2)) == pytest.approx(3.5)
    s = em.EMSettings(lambda_cd=0.1, cd_trim_fraction=0.0, cd_neg_clamp=0.02)
    assert float(em.cd_term(jnp.zeros(4), jnp.ones(4), s)) == pytest.approx(-0.02)
    assert float(em.cd_term(jnp.ones(4), jnp.zeros(4), s)) == pytest.approx(0.1)


def _quadratic_energy(params, x, t=None, key=None):
    return 0.5 * params["a"] * jnp.sum(x.reshape(x.shape[0], -1) ** 2, -1)


def test_cd_gradient_does_not_flow_through_the_chains():
    """For V = a ||x||^2 / 2 and no trimming, d(phase 2 - phase 1)/da is exactly
    lambda (mean V(x+) - mean V(x-)) / a: the negatives are constants."""
    s = em.EMSettings(lambda_cd=0.5, num_gibbs=20, dt=0.05, eps_max=0.5, cd_trim_fraction=0.0,
                      cd_neg_clamp=0.0)
    params = {"a": jnp.asarray(1.5)}
    batch = {"x": 0.1 * jax.random.normal(jax.random.PRNGKey(1), (64, 4))}
    key = jax.random.PRNGKey(2)
    grads = [jax.grad(lambda p, ph=ph: em.energy_matching_loss(
        _quadratic_energy, s, phase=ph)(p, batch, key)[0])(params)["a"] for ph in (1, 2)]
    _, metrics = em.energy_matching_loss(_quadratic_energy, s, phase=2)(params, batch, key)
    want = s.lambda_cd * (metrics["v_pos"] - metrics["v_neg"]) / params["a"]
    np.testing.assert_allclose(grads[1] - grads[0], want, rtol=1e-4)
    assert float(metrics["v_neg"]) > float(metrics["v_pos"])  # half start from noise


def test_phase_one_has_no_contrastive_term():
    s = em.EMSettings()
    loss, metrics = em.energy_matching_loss(_quadratic_energy, s, phase=1)(
        {"a": jnp.asarray(1.0)}, {"x": jnp.zeros((8, 2))}, jax.random.PRNGKey(0))
    assert set(metrics) == {"flow"} and float(loss) == float(metrics["flow"])


def test_training_chain_equals_the_langevin_sampler_when_cold():
    """eps = 0 before the cutoff: both are the same deterministic descent."""
    x0 = jax.random.normal(jax.random.PRNGKey(3), (8, 2))
    energy = lambda y: _quadratic_energy({"a": 2.0}, y)  # noqa: E731
    chain = em.langevin_chain(energy, jax.random.PRNGKey(4), x0, num_steps=30, dt=0.02,
                              cutoff=0.8, eps_max=1.0)
    sampled, _ = samplers.sample("langevin", jax.random.PRNGKey(5), x0.shape, sde=None,
                                 score_fn=lambda y, t: -2.0 * y, num_steps=30, step_size=0.02,
                                 eps_max=1.0, time_cutoff=0.8, init=x0)
    np.testing.assert_allclose(chain, sampled, rtol=1e-5)
    np.testing.assert_allclose(chain, x0 * (1 - 0.04) ** 30, rtol=1e-5)


def test_negatives_start_half_at_the_data():
    x = jnp.ones((6, 2))
    init = em.negatives_init(jax.random.PRNGKey(0), x, True)
    np.testing.assert_array_equal(init[:3], x[:3])
    assert not np.allclose(init[3:], 1.0)


@pytest.mark.parametrize("field,value", [("time_cutoff", 1.0), ("num_gibbs", 0), ("dt", 0.0),
                                         ("cd_trim_fraction", 1.0), ("lambda_cd", -1.0)])
def test_bad_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"energy_matching.{field}="):
        em.check_settings(em.EMSettings(**{field: value}))
