"""The one MCMC layer (ebm_vs_score.mcmc): MALA and HMC leave their target invariant (with
the MH test), energy-and-gradient is one value_and_grad, per-chain step sizes work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import mcmc

N = 4000
MEAN, VAR = jnp.asarray([1.0, -0.5]), 0.3


def _energy(x):
    return jnp.sum((x - MEAN) ** 2, -1) / (2 * VAR)


def _run(step_fn, x0, num_steps, **kw):
    potential = mcmc.energy_potential(_energy)

    def body(state, i):
        state, prob, accepted = step_fn(jax.random.fold_in(jax.random.key(0), i), state,
                                        potential, **kw)
        return state, (prob, accepted)

    state, (prob, accepted) = jax.lax.scan(body, mcmc.init_state(potential, x0),
                                           jnp.arange(num_steps))
    return state, prob, accepted


def test_energy_and_grad_matches_the_analytic_gradient():
    x = jax.random.normal(jax.random.key(1), (5, 2))
    e, g = mcmc.energy_and_grad(_energy, x)
    np.testing.assert_allclose(e, _energy(x), rtol=1e-6)
    np.testing.assert_allclose(g, (x - MEAN) / VAR, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_metropolis_chains_sample_the_gaussian_from_a_far_start(kernel):
    """A large step (ULA's variance would be VAR / (1 - h / (2 VAR)) = 1.6 VAR for MALA):
    with the MH test the stationary law is N(MEAN, VAR) all the same."""
    x0 = jnp.full((N, 2), 3.0)
    if kernel == "mala":
        state, prob, _ = _run(mcmc.mala_step, x0, 300, step=jnp.asarray(0.75 * VAR))
    else:
        state, prob, _ = _run(mcmc.hmc_step, x0, 100, step=jnp.asarray(0.8), num_leapfrog=3)
    x = np.asarray(state.x)
    np.testing.assert_allclose(x.mean(0), MEAN, atol=0.03)
    np.testing.assert_allclose(x.var(0), VAR, rtol=0.08)
    assert 0.2 < float(jnp.mean(prob)) < 1.0


def test_unadjusted_step_always_moves_and_per_chain_steps_apply():
    x0 = jnp.zeros((N, 2))
    steps = jnp.where(jnp.arange(N) < N // 2, 1e-3, 0.2)  # one step per chain, (B,)
    state, _, accepted = _run(mcmc.mala_step, x0, 50, step=steps, metropolis=False)
    assert bool(jnp.all(accepted))
    x = np.asarray(state.x)
    # After 50 steps the small-step chains have barely left 0; the large-step ones mix.
    assert np.linalg.norm(x[: N // 2].mean(0)) < 0.2
    np.testing.assert_allclose(x[N // 2:].mean(0), MEAN, atol=0.05)
