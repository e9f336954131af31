"""Conditional sampling with known coordinates (inpainting / imputation) for every family.

The known coordinates ``y`` (where ``mask == 1``) are fixed; the rest is sampled from
p(x_unknown | x_known = y). Two ways:

* :func:`replacement_sample`: score_sde's replacement method (Song et al. 2021, App. I.2,
  ``controllable_generation.get_pc_inpainter``): Euler-Maruyama on the reverse SDE of the
  whole x, and after each step t -> t' the known coordinates are replaced by a fresh
  noised copy alpha(t') y + std(t') z of the known values. Needs only a score, so it works
  for every family; it is an approximation (the score of the joint at a noised y is not the
  score of the conditional at t > 0), exact only as t -> 0.
* :func:`conditional`: the conditional model at each t, p_t(x_u | x_k = y_t) ∝ p_t(x_u, y_t)
  with y_t = alpha(t) y + std(t) z for one fixed z: its energy is the joint energy at the
  filled-in point, its score the joint score with the known coordinates zeroed. Every
  sampler in ``samplers.sample`` takes it; with an energy, annealed MALA/HMC are
  Metropolis-corrected and at the last level (t = eps, y_eps ≈ y) target the exact
  conditional p(x_u | y) of the model, as in Du et al. 2023 ("Reduce, Reuse, Recycle").

Pure functions; imports only jax and the package's math modules.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ebm_vs_score import compose
from ebm_vs_score.sde import batch_mul

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def merge(x: jax.Array, known: jax.Array, mask: jax.Array) -> jax.Array:
    """mask * known + (1 - mask) * x: the known coordinates put back."""
    return mask * known + (1 - mask) * x


def conditional(model: compose.Component, sde, known: jax.Array, mask: jax.Array,
                noise: jax.Array) -> compose.Component:
    """The model conditioned on ``x[mask] = known``, as a Component over the whole x.

    Args:
      model: the joint model's score (and energy), params bound.
      sde: the noise process (``perturb(x0, t, noise)``).
      known: (B, ...) values of the known coordinates (elsewhere ignored).
      mask: 1 where known, 0 where sampled; broadcastable to x.
      noise: (B, ...) the fixed z of y_t = alpha(t) y + std(t) z.

    Returns:
      Component with E_c(x, t) = E(merge(x, y_t), t) and s_c(x, t) = (1 - mask) s(merge(x,
      y_t), t); only the unknown coordinates of a sample are meaningful (:func:`merge` the
      known ones back).
    """
    def fill(x, t):
        return merge(x, sde.perturb(known, t, noise), mask)

    def score(x, t):
        return (1 - mask) * model.score(fill(x, t), t)

    energy = None
    if model.energy is not None:
        def energy(x, t):
            return model.energy(fill(x, t), t)

    return compose.Component(score, energy)


def held(model: compose.Component, known: jax.Array, mask: jax.Array) -> compose.Component:
    """A time-invariant model (EqM, Energy Matching) with ``x[mask] = known`` held: the
    field read at merge(x, known) and zero on the known coordinates, E(merge(x, known)).
    Descent then moves only the hidden pixels; no noise ladder is needed (Wang & Du 2025
    complete partially noised inputs by the same descent)."""
    def score(x, t):
        return (1 - mask) * model.score(merge(x, known, mask), t)

    energy = None
    if model.energy is not None:
        def energy(x, t):
            return model.energy(merge(x, known, mask), t)

    return compose.Component(score, energy)


def _em_step(score_fn: ScoreFn, sde, key, x, t, t_next):
    """One Euler-Maruyama step of the reverse SDE (Song et al. 2021, eq. 6) from t to t_next."""
    tb = jnp.full((x.shape[0],), t)
    drift, diffusion = sde.sde(x, tb)
    dt = t_next - t  # negative
    rev = drift - batch_mul(diffusion**2, score_fn(x, tb))
    z = jax.random.normal(key, x.shape)
    return x + rev * dt + batch_mul(diffusion * jnp.sqrt(-dt), z)


def replacement_sample(key: jax.Array, score_fn: ScoreFn, sde, known: jax.Array,
                       mask: jax.Array, num_steps: int, denoise: bool = True):
    """score_sde's replacement inpainting (Song et al. 2021, App. I.2), Euler-Maruyama.

    Args:
      key: PRNG key.
      score_fn: s(x, t) of the joint model, params bound.
      sde: the noise process.
      known: (B, ...) known values (mask == 1); mask: 1 where known, broadcastable.
      num_steps: reverse steps on ``sde.time_grid(num_steps + 1)``.
      denoise: final Tweedie step (x + std² s) / alpha at t = eps.

    Returns:
      (samples (B, ...) with the known coordinates equal to ``known``, {"nfe": ...}).
    """
    ts = sde.time_grid(num_steps + 1)
    k_init, k_loop = jax.random.split(key)
    x = sde.prior_sampling(k_init, known.shape)

    def body(x, inputs):
        i, k = inputs
        k_step, k_noise = jax.random.split(k)
        x = _em_step(score_fn, sde, k_step, x, ts[i], ts[i + 1])
        t_next = jnp.full((x.shape[0],), ts[i + 1])
        y_next = sde.perturb(known, t_next, jax.random.normal(k_noise, x.shape))
        return merge(x, y_next, mask), None

    keys = jax.random.split(k_loop, num_steps)
    x, _ = jax.lax.scan(body, x, (jnp.arange(num_steps), keys))
    if denoise:
        t_end = jnp.full((x.shape[0],), ts[-1])
        alpha, std = sde.alpha(t_end), sde.marginal_std(t_end)
        x = batch_mul(1 / alpha, x + batch_mul(std**2, score_fn(x, t_end)))
    return merge(x, known, mask), {"nfe": jnp.asarray(num_steps + int(denoise))}


def gaussian_conditional(mean: jax.Array, cov: jax.Array, known_idx, values: jax.Array):
    """Exact conditional of N(mean, cov) given x[known_idx] = values (Schur complement).

    Returns:
      (conditional mean (B, U), conditional covariance (U, U)) of the other coordinates.
    """
    d = mean.shape[0]
    k = jnp.asarray(known_idx)
    u = jnp.asarray([i for i in range(d) if i not in set(int(j) for j in known_idx)])
    s_uk, s_kk = cov[jnp.ix_(u, k)], cov[jnp.ix_(k, k)]
    gain = s_uk @ jnp.linalg.inv(s_kk)
    cond_mean = mean[u] + (values - mean[k]) @ gain.T
    return cond_mean, cov[jnp.ix_(u, u)] - gain @ s_uk.T
