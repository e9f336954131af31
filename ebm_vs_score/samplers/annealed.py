"""Annealed samplers: Langevin dynamics (ald), and MALA / HMC with or without the MH test.

Song & Ermon 2019, Alg. 1 (ald); Roberts & Tweedie 1996 (MALA); Neal 2011 (HMC); Du et al.
2023 (annealed MCMC on diffusion energies). The kernels are those of :mod:`ebm_vs_score.mcmc`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ebm_vs_score import mcmc
from ebm_vs_score.samplers import common
from ebm_vs_score.samplers.common import EnergyFn, Samples, ScoreFn, Shape

ADAPT_RATE = 1.0  # Robbins-Monro gain of log c per MCMC step (batch-mean acceptance)


def _level_steps(sde, ts: jax.Array, step_size: float) -> jax.Array:
    """NCSN step schedule h_l = step_size sigma_l^2 / sigma_L^2, (L,)."""
    sigmas = sde.marginal_std(ts)
    return step_size * (sigmas / sigmas[-1]) ** 2


def _langevin_levels(key, x, score_fn, ts, steps, n_steps_each):
    """x <- x + h_l s(x, t_l) + sqrt(2 h_l) z, ``n_steps_each`` times at each level."""

    def level(x, inp):
        i, t, h = inp
        t = common.tvec(t, x)

        def one(x, j):
            z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), j), x.shape)
            return x + h * score_fn(x, t) + jnp.sqrt(2.0 * h) * z, None

        x, _ = jax.lax.scan(one, x, jnp.arange(n_steps_each))
        return x, None

    x, _ = jax.lax.scan(level, x, (jnp.arange(ts.shape[0]), ts, steps))
    return x


def annealed_langevin(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, n_steps_each: int = 5, step_size: float = 2e-5, denoise: bool = True,
    init: jax.Array | None = None,
) -> Samples:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    Levels sigma_l = marginal_std(t_l) over ``num_steps`` grid times (the geometric SMLD
    ladder for VE), alpha_l = step_size sigma_l^2 / sigma_L^2, ``n_steps_each`` (their T)
    steps per level. NFE = num_steps * n_steps_each + denoise.
    """
    k_init, k_run = jax.random.split(key)
    x = common.initial(k_init, shape, sde, init)
    ts = sde.time_grid(num_steps)
    steps = _level_steps(sde, ts, step_size)
    x = _langevin_levels(k_run, x, score_fn, ts, steps, n_steps_each)
    x, nfe = common.finish(score_fn, sde, x, denoise, num_steps * n_steps_each)
    return x, {"nfe": jnp.asarray(nfe), "step_size_per_level": steps}


def _annealed_potential(score_fn, energy_fn, t: jax.Array) -> mcmc.Potential:
    """U = E(., t) with its gradient; without an energy, U = 0 and grad U = -s (no MH)."""
    if energy_fn is None:
        return lambda x: (jnp.zeros(x.shape[:1], x.dtype), -score_fn(x, t), ())
    return lambda x: (*mcmc.energy_and_grad(lambda y: energy_fn(y, t), x), ())


def _annealed_mcmc(key, shape, *, sde, score_fn, energy_fn, num_steps, n_steps_each,
                   step_size, adapt, target_acceptance, init, kernel, nfe_per_step):
    """Runs ``kernel`` ``n_steps_each`` times at each level t_l of ``sde.time_grid``.

    ``kernel(key, state, potential, h)`` with the Langevin step h (see module docstring).
    Returns (x, nfe, acceptance per level (L,), last step h per level (L,)).
    """
    k_init, k_run = jax.random.split(key)
    x = common.initial(k_init, shape, sde, init)
    ts = sde.time_grid(num_steps)
    base_steps = _level_steps(sde, ts, 1.0)
    adapt = adapt and energy_fn is not None

    def level(carry, inp):
        x, log_c = carry
        i, t, base = inp
        potential = _annealed_potential(score_fn, energy_fn, common.tvec(t, x))

        def one(carry, j):
            state, log_c = carry
            h = step_size * jnp.exp(log_c) * base
            key_ij = jax.random.fold_in(jax.random.fold_in(k_run, i), j)
            state, prob, _ = kernel(key_ij, state, potential, h)
            acc = jnp.mean(prob)
            if adapt:
                log_c = log_c + ADAPT_RATE * (acc - target_acceptance)
            return (state, log_c), (acc, h)

        state = mcmc.init_state(potential, x)
        (state, log_c), (acc, h) = jax.lax.scan(one, (state, log_c), jnp.arange(n_steps_each))
        return (state.x, log_c), (jnp.mean(acc), h[-1])

    carry = (x, jnp.zeros((), x.dtype))
    (x, _), (acc, steps) = jax.lax.scan(level, carry, (jnp.arange(num_steps), ts, base_steps))
    nfe = num_steps * (n_steps_each * nfe_per_step + 1)
    return x, nfe, acc, steps


def _mcmc_sampler(kernel, nfe_per_step, key, shape, *, sde, score_fn, energy_fn, num_steps,
                  n_steps_each, step_size, adapt, target_acceptance, denoise, init):
    """Annealed MCMC + optional denoising; info with acceptances when an energy is given."""
    x, nfe, acc, steps = _annealed_mcmc(
        key, shape, sde=sde, score_fn=score_fn, energy_fn=energy_fn, num_steps=num_steps,
        n_steps_each=n_steps_each, step_size=step_size, adapt=adapt,
        target_acceptance=target_acceptance, init=init, kernel=kernel,
        nfe_per_step=nfe_per_step)
    x, nfe = common.finish(score_fn, sde, x, denoise, nfe)
    info = {"nfe": jnp.asarray(nfe), "step_size_per_level": steps}
    if energy_fn is not None:
        info.update(acceptance=jnp.mean(acc), acceptance_per_level=acc)
    return x, info


def annealed_mala(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None,
    num_steps: int, n_steps_each: int = 5, step_size: float = 2e-5, adapt: bool = True,
    target_acceptance: float = 0.574, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Annealed MALA on p_{t_l} ∝ exp(-E(x, t_l)) (Roberts & Tweedie 1996; Du et al. 2023).

    NFE = num_steps (n_steps_each + 1) + denoise (energy+gradient evaluations).
    """
    kernel = functools.partial(mcmc.mala_step, metropolis=True)
    return _mcmc_sampler(kernel, 1, key, shape, sde=sde, score_fn=score_fn,
                         energy_fn=energy_fn, num_steps=num_steps, n_steps_each=n_steps_each,
                         step_size=step_size, adapt=adapt, target_acceptance=target_acceptance,
                         denoise=denoise, init=init)


def annealed_ula(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, n_steps_each: int = 5, step_size: float = 2e-5, adapt: bool = False,
    target_acceptance: float = 0.574, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Annealed unadjusted Langevin: the MALA proposal without the accept/reject step.

    The step is the NCSN schedule of ``ald`` (h_l = step_size sigma_l^2 / sigma_L^2), never
    adapted (``samplers.check_options`` refuses ``adapt=True``): tuned to the acceptance MALA
    would have had, the step sits at the integrator's stability limit and, with no MH test
    to reject the exploding proposals, chains blow up. With
    ``energy_fn`` grad E drives the chain (NFE as MALA, info with the would-be acceptance);
    score-only it is ``ald`` (NFE = num_steps n_steps_each + denoise).
    """
    if energy_fn is None:
        return annealed_langevin(key, shape, sde=sde, score_fn=score_fn, num_steps=num_steps,
                                 n_steps_each=n_steps_each, step_size=step_size,
                                 denoise=denoise, init=init)
    kernel = functools.partial(mcmc.mala_step, metropolis=False)
    return _mcmc_sampler(kernel, 1, key, shape, sde=sde, score_fn=score_fn,
                         energy_fn=energy_fn, num_steps=num_steps, n_steps_each=n_steps_each,
                         step_size=step_size, adapt=adapt, target_acceptance=target_acceptance,
                         denoise=denoise, init=init)


def _hmc_kernel(num_leapfrog: int, metropolis: bool):
    """HMC kernel taking the Langevin step h: leapfrog step sqrt(2h) (1 leapfrog = MALA h)."""

    def kernel(key, state, potential, h):
        return mcmc.hmc_step(key, state, potential, jnp.sqrt(2.0 * h),
                             num_leapfrog=num_leapfrog, metropolis=metropolis)

    return kernel


def annealed_hmc(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None,
    num_steps: int, n_steps_each: int = 5, num_leapfrog: int = 5, step_size: float = 2e-5,
    adapt: bool = True, target_acceptance: float = 0.65, denoise: bool = True,
    init: jax.Array | None = None,
) -> Samples:
    """Annealed HMC on p_{t_l} ∝ exp(-E(x, t_l)) (Neal 2011; Du et al. 2023).

    NFE = num_steps (n_steps_each num_leapfrog + 1) + denoise.
    """
    return _mcmc_sampler(_hmc_kernel(num_leapfrog, True), num_leapfrog, key, shape, sde=sde,
                         score_fn=score_fn, energy_fn=energy_fn, num_steps=num_steps,
                         n_steps_each=n_steps_each, step_size=step_size, adapt=adapt,
                         target_acceptance=target_acceptance, denoise=denoise, init=init)


def annealed_uhmc(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, n_steps_each: int = 5, num_leapfrog: int = 5, step_size: float = 2e-5,
    adapt: bool = False, target_acceptance: float = 0.65, denoise: bool = True,
    init: jax.Array | None = None,
) -> Samples:
    """Annealed HMC without accept/reject; score-only models use grad U = -s.

    Like ``ula``, the step follows the noise schedule (``adapt=True`` is refused).

    NFE = num_steps (n_steps_each num_leapfrog + 1) + denoise.
    """
    return _mcmc_sampler(_hmc_kernel(num_leapfrog, False), num_leapfrog, key, shape, sde=sde,
                         score_fn=score_fn, energy_fn=energy_fn, num_steps=num_steps,
                         n_steps_each=n_steps_each, step_size=step_size, adapt=adapt,
                         target_acceptance=target_acceptance, denoise=denoise, init=init)
