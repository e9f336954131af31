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


def _ula_law(x0, h, num_steps):
    """Exact mean and variance per coordinate after ``num_steps`` unadjusted Langevin steps
    x <- x - h (x - MEAN) / VAR + sqrt(2h) z from x0: a linear recursion with r = 1 - h/VAR,
    mean = MEAN + r^K (x0 - MEAN), var = 2h (1 - r^2K) / (1 - r^2)."""
    r = 1.0 - h / VAR
    return (np.asarray(MEAN) + r**num_steps * (x0 - np.asarray(MEAN)),
            2 * h * (1 - r ** (2 * num_steps)) / (1 - r**2))


def test_unadjusted_step_always_moves_and_per_chain_steps_apply():
    """metropolis=False: every chain moves at every step, and each half of the batch follows
    the exact law of ULA with its own step h (B,): h = 0.2 is stationary at 1.5 VAR (the
    unadjusted bias), h = 1e-3 has covered 15% of the way to MEAN after 50 steps."""
    n, num_steps = 20_000, 50
    steps = jnp.where(jnp.arange(n) < n // 2, 1e-3, 0.2)  # one step per chain, (B,)
    potential = mcmc.energy_potential(_energy)

    def body(state, i):
        state, _, accepted = mcmc.mala_step(jax.random.fold_in(jax.random.key(0), i), state,
                                            potential, step=steps, metropolis=False)
        return state, (state.x, accepted)

    _, (path, accepted) = jax.jit(lambda x0: jax.lax.scan(
        body, mcmc.init_state(potential, x0), jnp.arange(num_steps)))(jnp.zeros((n, 2)))
    path = np.concatenate([np.zeros((1, n, 2)), np.asarray(path)])
    assert bool(jnp.all(accepted))
    assert np.all(np.any(path[1:] != path[:-1], axis=-1)), "a chain stayed put for a step"
    for half, h in ((slice(0, n // 2), 1e-3), (slice(n // 2, n), 0.2)):
        x = path[-1, half]
        mean, var = _ula_law(np.zeros(2), h, num_steps)
        m = x.shape[0]
        np.testing.assert_allclose(x.mean(0), mean, atol=5 * np.sqrt(var / m))
        np.testing.assert_allclose(x.var(0), var, rtol=5 * np.sqrt(2 / m))
