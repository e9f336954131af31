"""Reverse-SDE samplers: predictors, the Langevin corrector, PC, Euler-Maruyama, ancestral.

Song et al. 2021, App. E-G; the discrete chain steps are methods of the SDE
(``sde.grid_step``, ``sde.ancestral_step``, ``sde.corrector_alpha``), so nothing here
branches on the kind of noise process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ebm_vs_score.samplers import common
from ebm_vs_score.samplers.common import EnergyFn, Samples, ScoreFn, Shape
from ebm_vs_score.sde import batch_mul, sum_sq


def euler_maruyama_predictor(score_fn, sde, key, x, t, t_next):
    """Reverse SDE dx = [f - g^2 s] dt + g dw, one Euler-Maruyama step (Song et al. eq. 6)."""
    drift, g = sde.sde(x, t)
    dt = t_next - t  # negative
    x_mean = x + batch_mul(dt, drift - batch_mul(g**2, score_fn(x, t)))
    return x_mean + batch_mul(g * jnp.sqrt(-dt), jax.random.normal(key, x.shape, x.dtype))


def reverse_diffusion_predictor(score_fn, sde, key, x, t, t_next):
    """x <- x - f + G^2 s + G z (Song et al. 2021, eq. 47, App. E)."""
    f, g = sde.grid_step(x, t, t_next)
    x_mean = x - f + batch_mul(g**2, score_fn(x, t))
    return x_mean + batch_mul(g, jax.random.normal(key, x.shape, x.dtype))


def ancestral_predictor(score_fn, sde, key, x, t, t_next):
    """Ancestral step: DDPM (Ho et al. 2020, Alg. 2) for VP, SMLD (Song et al. 2021 App. F)
    for VE (``sde.ancestral_step``); sub-VP has no chain and raises ValueError."""
    if not sde.has_discrete_chain:
        raise sde.no_chain_error()
    z = jax.random.normal(key, x.shape, x.dtype)
    return sde.ancestral_step(x, score_fn(x, t), z, t, t_next)


def langevin_corrector(score_fn, sde, key, x, t, snr):
    """One Langevin corrector step with the step set by the target SNR (Song et al. Alg. 4/5).

    eps = 2 alpha (snr ||z|| / ||s||)^2 with alpha = 1 - beta_i (VP, sub-VP) or 1 (VE), and
    the norms averaged over the batch as in score_sde (``LangevinCorrector``). A per-example
    ratio is unstable in low dimension: where ||s|| -> 0 (modes, saddles, x ~ 0 under a wide
    prior) the step is unbounded; on 8 Gaussians it raised the MMD^2 to the data 14-fold.
    In high dimension ||s|| and ||z|| concentrate and the two rules agree.
    """
    s = score_fn(x, t)
    z = jax.random.normal(key, x.shape, x.dtype)
    alpha = sde.corrector_alpha(t)
    ratio = snr * jnp.mean(jnp.sqrt(sum_sq(z))) / jnp.mean(jnp.sqrt(sum_sq(s)))
    step = 2.0 * alpha * ratio**2
    return x + batch_mul(step, s) + batch_mul(jnp.sqrt(2.0 * step), z)


PREDICTORS = {
    "euler_maruyama": euler_maruyama_predictor,
    "reverse_diffusion": reverse_diffusion_predictor,
    "ancestral": ancestral_predictor,
    "none": None,
}
CORRECTORS = {"langevin": langevin_corrector, "none": None}


def predictor_corrector(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, predictor: str = "reverse_diffusion", corrector: str = "langevin",
    snr: float = 0.16, n_steps_each: int = 1, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """PC sampling (Song et al. 2021, Alg. 2/3): at each t_i, ``n_steps_each`` corrector
    steps at t_i, then one predictor step t_i -> t_{i+1} (score_sde's order), then Tweedie.

    NFE = num_steps * (n_steps_each [corrector] + 1 [predictor]) + denoise.
    """
    common.choose(predictor, PREDICTORS, "predictor")
    common.choose(corrector, CORRECTORS, "corrector")
    pred, corr = PREDICTORS[predictor], CORRECTORS[corrector]
    if pred is None and corr is None:
        raise ValueError("predictor='none' and corrector='none' would not move the samples")
    if pred is ancestral_predictor and not sde.has_discrete_chain:
        raise sde.no_chain_error()
    k_init, k_run = jax.random.split(key)
    x = common.initial(k_init, shape, sde, init)
    ts = sde.time_grid(num_steps + 1)

    def step(x, inp):
        i, t, t_next = inp
        k_corr, k_pred = jax.random.split(jax.random.fold_in(k_run, i))
        t, t_next = common.tvec(t, x), common.tvec(t_next, x)
        if corr is not None:
            def corr_step(x, j):
                return corr(score_fn, sde, jax.random.fold_in(k_corr, j), x, t, snr), None

            x, _ = jax.lax.scan(corr_step, x, jnp.arange(n_steps_each))
        if pred is not None:
            x = pred(score_fn, sde, k_pred, x, t, t_next)
        return x, None

    x, _ = jax.lax.scan(step, x, (jnp.arange(num_steps), ts[:-1], ts[1:]))
    per_step = (n_steps_each if corr is not None else 0) + (pred is not None)
    x, nfe = common.finish(score_fn, sde, x, denoise, num_steps * per_step)
    return x, {"nfe": jnp.asarray(nfe)}


def euler_maruyama(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Reverse-SDE Euler-Maruyama (Song et al. 2021, App. E); NFE = num_steps + denoise."""
    return predictor_corrector(key, shape, sde=sde, score_fn=score_fn, num_steps=num_steps,
                               predictor="euler_maruyama", corrector="none", denoise=denoise,
                               init=init)


def ancestral(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Ancestral sampling, DDPM (VP) / SMLD (VE); NFE = num_steps + denoise. No sub-VP."""
    return predictor_corrector(key, shape, sde=sde, score_fn=score_fn, num_steps=num_steps,
                               predictor="ancestral", corrector="none", denoise=denoise,
                               init=init)
