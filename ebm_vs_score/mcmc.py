"""One MCMC layer: chain state, energy-and-gradient, MALA and HMC steps.

Shared by the annealed samplers (``samplers.annealed``: ULA, MALA, HMC, uHMC), annealed
importance sampling (``likelihood.ais_log_normalizer``) and diffusion recovery likelihood
(``drl``: its Langevin / MALA chains). Every kernel acts on a *potential* U = -log p + const:

    potential(x) -> (U(x) (B,), grad U(x) like x, aux)

``aux`` is anything the caller wants cached with the state (AIS keeps E and grad E there).
Chains are a batch: one chain per example, examples never interact, and the MH test is
per example. A step size is a scalar or one value per chain, shape (B,).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ebm_vs_score.sde import batch_mul, sum_sq

Potential = Callable[[jax.Array], tuple[jax.Array, jax.Array, Any]]


class MCMCState(NamedTuple):
    """A batch of chains with the cached potential U(x) (B,), grad U(x) and ``aux``."""

    x: jax.Array
    potential: jax.Array
    grad: jax.Array
    aux: Any = ()


def energy_and_grad(energy_fn: Callable[[jax.Array], jax.Array], x: jax.Array):
    """(E(x) (B,), grad_x E(x)) by one ``jax.value_and_grad`` of the batch sum (1 NFE).

    Valid because examples do not interact (DESIGN.md rule 2).
    """
    total = lambda y: (lambda e: (jnp.sum(e), e))(energy_fn(y))  # noqa: E731
    (_, e), g = jax.value_and_grad(total, has_aux=True)(x)
    return e, g


def energy_potential(energy_fn: Callable[[jax.Array], jax.Array]) -> Potential:
    """The potential U = E with its gradient (1 NFE per evaluation), no aux."""
    return lambda x: (*energy_and_grad(energy_fn, x), ())


def init_state(potential: Potential, x: jax.Array) -> MCMCState:
    """Evaluates the potential at x (1 NFE)."""
    return MCMCState(x, *potential(x))


def accept(key: jax.Array, state: MCMCState, proposal: MCMCState, log_ratio: jax.Array,
           metropolis: bool) -> tuple[MCMCState, jax.Array, jax.Array]:
    """Per-example Metropolis-Hastings accept/reject (Hastings 1970).

    Returns:
      ``(state, prob, accepted)``: the MH probability min(1, exp(log_ratio)) (B,), NaN
      read as 0, is returned either way (a diagnostic of the discretization error); without
      ``metropolis`` the proposal is always taken and ``accepted`` is all True.
    """
    prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
    prob = jnp.where(jnp.isnan(prob), 0.0, prob)
    if not metropolis:
        return proposal, prob, jnp.ones(prob.shape, bool)
    accepted = jax.random.uniform(key, prob.shape) < prob
    select = lambda new, old: jnp.where(  # noqa: E731
        accepted.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    return jax.tree.map(select, proposal, state), prob, accepted


def mala_step(key: jax.Array, state: MCMCState, potential: Potential, step: jax.Array, *,
              metropolis: bool = True) -> tuple[MCMCState, jax.Array, jax.Array]:
    """One MALA step (Roberts & Tweedie 1996, eq. 1.3 with the MH correction of Sec. 1).

    Proposal y = x - h grad U(x) + sqrt(2h) z; log q(y|x) = -|y - x + h grad U(x)|^2 / 4h;
    accept with min(1, exp(U(x) - U(y) + log q(x|y) - log q(y|x))). ``metropolis=False``
    accepts always (ULA). ``step`` h: a scalar or (B,). Cost: 1 NFE.

    Returns:
      ``(state, prob, accepted)`` as :func:`accept`.
    """
    k_prop, k_acc = jax.random.split(key)
    z = jax.random.normal(k_prop, state.x.shape, state.x.dtype)
    y = state.x - batch_mul(step, state.grad) + batch_mul(jnp.sqrt(2.0 * step), z)
    proposal = init_state(potential, y)
    # x - y + h grad U(y), written without the cancelling difference x - y:
    back = batch_mul(step, state.grad + proposal.grad) - batch_mul(jnp.sqrt(2.0 * step), z)
    log_ratio = (state.potential - proposal.potential
                 - sum_sq(back) / (4.0 * step) + 0.5 * sum_sq(z))
    return accept(k_acc, state, proposal, log_ratio, metropolis)


def hmc_step(key: jax.Array, state: MCMCState, potential: Potential, step: jax.Array, *,
             num_leapfrog: int, metropolis: bool = True
             ) -> tuple[MCMCState, jax.Array, jax.Array]:
    """One HMC step: fresh N(0, I) momentum, ``num_leapfrog`` leapfrog steps of size ``step``,
    MH test on H = U + |p|^2/2 (Neal 2011, "MCMC using Hamiltonian dynamics", Sec. 5.2).

    ``metropolis=False`` accepts always (unadjusted HMC). Cost: ``num_leapfrog`` NFE.

    Returns:
      ``(state, prob, accepted)`` as :func:`accept`.
    """
    k_mom, k_acc = jax.random.split(key)
    p0 = jax.random.normal(k_mom, state.x.shape, state.x.dtype)

    def leapfrog(carry, _):
        s, p = carry  # p is half a kick ahead of s.x
        s = init_state(potential, s.x + step * p)
        return (s, p - step * s.grad), None

    (proposal, p), _ = jax.lax.scan(
        leapfrog, (state, p0 - 0.5 * step * state.grad), None, length=num_leapfrog)
    p = p + 0.5 * step * proposal.grad  # the last full kick becomes a half kick
    log_ratio = state.potential + 0.5 * sum_sq(p0) - proposal.potential - 0.5 * sum_sq(p)
    return accept(k_acc, state, proposal, log_ratio, metropolis)
