"""What every sampler shares: types, the starting point, time vectors and Tweedie denoising."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ebm_vs_score.sde import batch_mul

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
EnergyFn = Callable[[jax.Array, jax.Array], jax.Array]
Shape = tuple[int, ...]
Samples = tuple[jax.Array, dict[str, jax.Array]]


def tvec(t: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcasts a scalar time to the batch, (B,)."""
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def initial(key: jax.Array, shape: tuple[int, ...], sde, init: jax.Array | None) -> jax.Array:
    """``init`` if given, else a sample of the prior p_T."""
    if init is None:
        return sde.prior_sampling(key, shape)
    if tuple(init.shape) != tuple(shape):
        raise ValueError(f"init has shape {init.shape} but the sampler was asked for {shape}")
    return jnp.asarray(init)


def tweedie_denoise(score_fn: ScoreFn, sde, x: jax.Array, t: jax.Array) -> jax.Array:
    """E[x_0 | x_t] = (x + std(t)^2 s(x, t)) / alpha(t) (Tweedie; Efron 2011, eq. 2.8).

    The final noise-removal step of Song & Ermon 2019 / Song et al. 2021 (App. G). ``t`` (B,).
    """
    std = sde.marginal_std(t)
    return batch_mul(1.0 / sde.alpha(t), x + batch_mul(std**2, score_fn(x, t)))


def finish(score_fn, sde, x, denoise: bool, nfe: int):
    """Optional denoising at t = eps; returns (samples, nfe)."""
    if denoise:
        return tweedie_denoise(score_fn, sde, x, tvec(sde.eps, x)), nfe + 1
    return x, nfe


# ----------------------------------------------------------------------------------------
# Predictors and correctors (Song et al. 2021, App. E and G). t, t_next have shape (B,).

def choose(value: str, valid, what: str) -> None:
    """Unknown name -> ValueError listing the valid names."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid names: {list(valid)}")
