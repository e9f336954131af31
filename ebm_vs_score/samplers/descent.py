"""Samplers of time-invariant models: gradient descent, Nesterov, Langevin with a schedule.

The model is a time-invariant field f(x) = grad E(x) (Equilibrium Matching, Wang & Du 2025;
Energy Matching's potential V, Balcerak et al. 2025), seen through the project's interface
as ``score_fn(x, t) = -f(x)`` (t ignored) and, for energies, ``energy_fn(x, t) = E(x)``.
Every chain starts from N(0, I) noise (or ``init``); ``sde`` is not used (it may be None).

* ``gd``: x <- x - eta f(x) (Wang & Du 2025, eq. 6), ``step_size`` = eta.
* ``nag``: Nesterov's accelerated gradient with momentum ``mu`` (EqM's NAG-GD, mu = 0.3).
  ``nag_form='nesterov'`` is the textbook method (Nesterov 1983 in the form of Sutskever
  et al. 2013, eq. 3-4): v <- mu v - eta f(x + mu v), x <- x + v. ``nag_form='eqm'`` is
  the recurrence of the EqM code (``sample_gd.py``, sampler 'ngd'): the gradient is taken
  at the same look-ahead x + mu (x - x_prev), but the step restarts from x without the
  momentum, v <- -eta f(x + mu v). On a quadratic the first converges at the accelerated
  rate; the second only at gradient descent's rate to first order in eta.
* Adaptive compute (``tol`` > 0, gd and nag; Wang & Du 2025, Sec. 4.3): an example stops
  at the first evaluation where ||f|| (the L2 norm over all its dimensions) is below
  ``tol``; the loop (a ``lax.while_loop`` bounded by ``num_steps``) ends when every example
  has stopped. ``tol = 0`` runs exactly ``num_steps`` steps in a ``lax.scan``.
* ``langevin``: x <- x + dt s(x) + sqrt(2 dt eps(t_k)) z, t_k = t_start + k dt, with
  eps(t) = 0 before ``time_cutoff``, rising linearly to ``eps_max`` at t = 1, ``eps_max``
  after (Balcerak et al. 2025, the sampler of their code); ``step_size`` = dt. Unadjusted:
  it needs only the field, so it runs on the implicit EqM field too.
* ``langevin_mh``: the same chain with a Metropolis-Hastings test wherever eps(t_k) > 0:
  the proposal is MALA's (Roberts & Tweedie 1996) for the target exp(-E / eps) with step
  h = dt eps. Steps with eps = 0 are plain descent steps, always taken. It needs the
  energy.

NFE (``info['nfe']``) counts batch network evaluations (a field or an energy-and-gradient
evaluation each count 1). ``info['nfe_per_example']`` (B,) holds each example's own count
(the evaluations made while it had not stopped), with ``nfe_mean``, ``nfe_min``,
``nfe_median``, ``nfe_max``, the share of examples stopped by ``tol`` (``converged``) and
the mean last ||f|| (``final_grad_norm``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ebm_vs_score import mcmc
from ebm_vs_score.energy_matching import temperature
from ebm_vs_score.samplers.common import EnergyFn, Samples, ScoreFn, Shape
from ebm_vs_score.sde import sum_sq

NAG_FORMS = ("nesterov", "eqm")


class _Descent(NamedTuple):
    x: jax.Array
    v: jax.Array  # the last step x - x_prev
    active: jax.Array  # (B,) bool: not stopped yet
    nfe: jax.Array  # (B,) evaluations made while active
    norm: jax.Array  # (B,) ||f|| at the last evaluation made while active


def _start(key: jax.Array, shape: Shape, init: jax.Array | None) -> jax.Array:
    if init is None:
        return jax.random.normal(key, shape)
    if tuple(init.shape) != tuple(shape):
        raise ValueError(f"init has shape {init.shape} but the sampler was asked for {shape}")
    return jnp.asarray(init)


def _initial(x: jax.Array) -> _Descent:
    """Every chain at x, no momentum, active, no evaluations yet."""
    b = x.shape[0]
    return _Descent(x, jnp.zeros_like(x), jnp.ones((b,), bool), jnp.zeros((b,), jnp.int32),
                    jnp.zeros((b,), x.dtype))


def _norm(g: jax.Array) -> jax.Array:
    return jnp.sqrt(sum_sq(g))


def _descent_step(score_fn, step_size, mu, carry_momentum, tol):
    """One (look-ahead) gradient step of every example that has not stopped."""

    def step(s: _Descent) -> _Descent:
        y = s.x + mu * s.v
        g = -score_fn(y, jnp.zeros((y.shape[0],), y.dtype))
        norm = _norm(g)
        moving = s.active & ~(norm < tol)
        v_new = (mu * s.v if carry_momentum else 0.0) - step_size * g
        keep = lambda new, old: jnp.where(  # noqa: E731
            moving.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        return _Descent(keep(s.x + v_new, s.x), keep(v_new, s.v), moving,
                        s.nfe + s.active.astype(jnp.int32), jnp.where(s.active, norm, s.norm))

    return step


def _nfe_info(s: _Descent, batch_nfe: jax.Array, tol: float) -> dict[str, jax.Array]:
    per = s.nfe
    return {"nfe": batch_nfe, "nfe_per_example": per,
            "nfe_mean": jnp.mean(per.astype(jnp.float32)), "nfe_min": jnp.min(per),
            "nfe_median": jnp.median(per.astype(jnp.float32)), "nfe_max": jnp.max(per),
            "converged": jnp.mean((~s.active).astype(jnp.float32)) if tol > 0 else
            jnp.asarray(0.0), "final_grad_norm": jnp.mean(s.norm)}


def _descend(key, shape, score_fn, *, num_steps, step_size, mu, carry_momentum, tol,
             init) -> Samples:
    state = _initial(_start(key, shape, init))
    step = _descent_step(score_fn, step_size, mu, carry_momentum, tol)
    if tol <= 0:
        state, _ = jax.lax.scan(lambda s, _: (step(s), None), state, None, length=num_steps)
        return state.x, _nfe_info(state, jnp.asarray(num_steps), tol)

    def cond(carry):
        k, s = carry
        return (k < num_steps) & jnp.any(s.active)

    k, state = jax.lax.while_loop(cond, lambda c: (c[0] + 1, step(c[1])), (0, state))
    return state.x, _nfe_info(state, jnp.asarray(k), tol)


def _snapshot_step(step, marks: jax.Array):
    """``step`` that also copies x and ||f|| into row i of the buffers after step marks[i]."""

    def body(carry, k):
        s, xs, norms = step(carry[0]), carry[1], carry[2]
        hit = marks == k + 1
        xs = jnp.where(hit.reshape((-1,) + (1,) * s.x.ndim), s.x[None], xs)
        return (s, xs, jnp.where(hit[:, None], s.norm[None], norms)), None

    return body


def descend_with_snapshots(key: jax.Array, shape: Shape, score_fn: ScoreFn, *, checkpoints,
                           step_size: float, mu: float = 0.0, nag_form: str | None = None,
                           init: jax.Array | None = None) -> Samples:
    """x after each of ``checkpoints`` steps of ONE fixed-step chain (``tol`` = 0).

    gd (``nag_form`` None) or nag: their step size and momentum do not depend on the number
    of steps, so the chain of n steps is the first n steps of the longest one, and every
    checkpoint costs only the longest chain's NFE (the NFE sweep's step counts share it).
    Returns (samples (C, B, ...), info): the info keys of :func:`gradient_descent`, each
    with a leading axis over the sorted, distinct checkpoints.
    """
    marks = sorted({int(c) for c in checkpoints})
    if not marks or marks[0] < 1:
        raise ValueError(f"checkpoints={list(checkpoints)} must be positive step counts")
    state = _initial(_start(key, shape, init))
    x, b, c = state.x, shape[0], len(marks)
    step = _descent_step(score_fn, step_size, mu if nag_form else 0.0, nag_form == "nesterov",
                         0.0)
    carry = (state, jnp.zeros((c,) + x.shape, x.dtype), jnp.zeros((c, b), x.dtype))
    (state, xs, norms), _ = jax.lax.scan(_snapshot_step(step, jnp.asarray(marks)), carry,
                                         jnp.arange(marks[-1]))
    infos = [_nfe_info(state._replace(nfe=jnp.full((b,), n, jnp.int32), norm=norms[i]),
                       jnp.asarray(n), 0.0) for i, n in enumerate(marks)]
    return xs, jax.tree.map(lambda *v: jnp.stack(v), *infos)


def gradient_descent(key: jax.Array, shape: Shape, *, sde=None, score_fn: ScoreFn,
                     energy_fn: EnergyFn | None = None, num_steps: int,
                     step_size: float = 0.003, tol: float = 0.0,
                     init: jax.Array | None = None) -> Samples:
    """EqM's gradient-descent sampler x <- x - eta f(x) (Wang & Du 2025, eq. 6); ``step_size``
    = eta; with ``tol`` > 0 an example stops once ||f|| < tol (module docstring)."""
    return _descend(key, shape, score_fn, num_steps=num_steps, step_size=step_size, mu=0.0,
                    carry_momentum=False, tol=float(tol), init=init)


def nesterov(key: jax.Array, shape: Shape, *, sde=None, score_fn: ScoreFn,
             energy_fn: EnergyFn | None = None, num_steps: int, step_size: float = 0.0017,
             mu: float = 0.3, nag_form: str = "nesterov", tol: float = 0.0,
             init: jax.Array | None = None) -> Samples:
    """Nesterov accelerated gradient descent on f (EqM's NAG-GD: eta = ``step_size``, mu);
    ``nag_form`` 'nesterov' (textbook) or 'eqm' (the EqM code's recurrence)."""
    if nag_form not in NAG_FORMS:
        raise ValueError(f"unknown nag_form {nag_form!r}; valid names: {list(NAG_FORMS)}")
    return _descend(key, shape, score_fn, num_steps=num_steps, step_size=step_size,
                    mu=float(mu), carry_momentum=nag_form == "nesterov", tol=float(tol),
                    init=init)


def langevin(key: jax.Array, shape: Shape, *, sde=None, score_fn: ScoreFn,
             energy_fn: EnergyFn | None = None, num_steps: int, step_size: float = 0.01,
             eps_max: float = 0.01, time_cutoff: float = 0.8, t_start: float = 0.0,
             init: jax.Array | None = None) -> Samples:
    """Energy Matching's Langevin sampler (module docstring): ``num_steps`` steps of dt =
    ``step_size`` with the temperature eps(t_start + k dt); NFE = num_steps."""
    k_init, k_run = jax.random.split(key)
    x = _start(k_init, shape, init)
    zeros = jnp.zeros((shape[0],), x.dtype)

    def step(x, k):
        eps = temperature(t_start + k * step_size, time_cutoff, eps_max)
        z = jax.random.normal(jax.random.fold_in(k_run, k), x.shape, x.dtype)
        return x + step_size * score_fn(x, zeros) + jnp.sqrt(2.0 * step_size * eps) * z, None

    x, _ = jax.lax.scan(step, x, jnp.arange(num_steps))
    return x, {"nfe": jnp.asarray(num_steps)}


def _mh_step(energy, key, state: mcmc.MCMCState, dt: float, eps: jax.Array):
    """Proposal x - dt grad E + sqrt(2 dt eps) z, MH test for exp(-E / eps) when eps > 0."""
    k_prop, k_acc = jax.random.split(key)
    z = jax.random.normal(k_prop, state.x.shape, state.x.dtype)
    noise = jnp.sqrt(2.0 * dt * eps)
    y = state.x - dt * state.grad + noise * z
    proposal = mcmc.MCMCState(y, *mcmc.energy_and_grad(energy, y))
    safe = jnp.where(eps > 0, eps, 1.0)
    back = dt * (state.grad + proposal.grad) - noise * z  # x - y + dt grad E(y)
    log_ratio = ((state.potential - proposal.potential) / safe
                 - sum_sq(back) / (4.0 * dt * safe) + 0.5 * sum_sq(z))
    log_ratio = jnp.where(eps > 0, log_ratio, 0.0)
    return mcmc.accept(k_acc, state, proposal, log_ratio, True)


def langevin_mh(key: jax.Array, shape: Shape, *, sde=None, score_fn: ScoreFn,
                energy_fn: EnergyFn | None = None, num_steps: int, step_size: float = 0.01,
                eps_max: float = 0.01, time_cutoff: float = 0.8, t_start: float = 0.0,
                init: jax.Array | None = None) -> Samples:
    """:func:`langevin` with a Metropolis-Hastings test where eps > 0 (module docstring).

    NFE = num_steps + 1 (the start's energy). ``info['acceptance']``: the mean MH
    probability over the steps with eps > 0 (1 when there are none).
    """
    if energy_fn is None:
        raise ValueError("langevin_mh needs energy_fn (a Metropolis-Hastings test)")
    k_init, k_run = jax.random.split(key)
    x = _start(k_init, shape, init)
    zeros = jnp.zeros((shape[0],), x.dtype)
    energy = lambda y: energy_fn(y, zeros)  # noqa: E731
    state = mcmc.MCMCState(x, *mcmc.energy_and_grad(energy, x))

    def step(state, k):
        eps = temperature(t_start + k * step_size, time_cutoff, eps_max)
        state, prob, _ = _mh_step(energy, jax.random.fold_in(k_run, k), state, step_size, eps)
        return state, (jnp.mean(prob), eps > 0)

    state, (prob, hot) = jax.lax.scan(step, state, jnp.arange(num_steps))
    hot_steps = jnp.sum(hot)
    acceptance = jnp.where(hot_steps > 0, jnp.sum(prob * hot) / jnp.maximum(hot_steps, 1), 1.0)
    return state.x, {"nfe": jnp.asarray(num_steps + 1), "acceptance": acceptance}


__all__ = ["NAG_FORMS", "gradient_descent", "langevin", "langevin_mh", "nesterov"]
