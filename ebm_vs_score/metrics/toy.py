"""Metrics for toy data with a known density: exact Fisher divergence and exact NLL.

For a Gaussian mixture p_0 the noised marginal p_t of x_t = alpha(t) x_0 + std(t) eps is
again a mixture (`data.GaussianMixture.noisy_score`), so the score error of a model can be
measured exactly at every noise level instead of through the denoising loss, which only
equals it up to an unknown constant (Vincent 2011, "A connection between score matching
and denoising autoencoders", eq. 11):

  D_F(t) = E_{x_t ~ p_t} || s_theta(x_t, t) - grad log p_t(x_t) ||^2      (Fisher divergence,
  Hyvarinen 2005, eq. 2; the explicit score-matching objective of Song et al. 2021, eq. 7).

`nll_report` compares a model's log-density (e.g. `likelihood.ode_log_prob`) with the true
one on the same points: E[-log q] - E[-log p] is a Monte Carlo estimate of KL(p || q) >= 0
when the points are samples of p.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def fisher_divergence(score_fn: ScoreFn, gmm: Any, x0: jax.Array, *, sde: Any, key: jax.Array,
                      t_grid: Any) -> jax.Array:
    """Exact Fisher divergence E||s(x_t, t) - grad log p_t(x_t)||^2 at each time of t_grid.

    For each level t_l, x_t = alpha(t_l) x0 + std(t_l) eps with fresh eps from
    `fold_in(key, l)` (`sde.perturb`), and the true score is the noised mixture's closed
    form. Levels run under `jax.lax.map`, so the model is traced once.

    Args:
      score_fn: model score (x (B, D), t (B,)) -> (B, D), params bound.
      gmm: the data distribution, a `data.GaussianMixture`.
      x0: (B, D) samples of `gmm`.
      sde: the noise process (`sde.VESDE`, `VPSDE` or `SubVPSDE`).
      key: PRNG key of the perturbation noise.
      t_grid: (L,) times.

    Returns:
      (L,) Monte Carlo estimates over the B examples, one per time.
    """
    x0 = jnp.asarray(x0)
    t_grid = jnp.asarray(t_grid, x0.dtype)
    if x0.ndim != 2 or t_grid.ndim != 1:
        raise ValueError(f"fisher_divergence needs x0 (B, D) and t_grid (L,); got {x0.shape} "
                         f"and {t_grid.shape}.")

    def level(args):
        index, t = args
        t_batch = jnp.full((x0.shape[0],), t, x0.dtype)
        noise = jax.random.normal(jax.random.fold_in(key, index), x0.shape, x0.dtype)
        xt = sde.perturb(x0, t_batch, noise)
        true = gmm.noisy_score(xt, sde.alpha(t_batch), sde.marginal_std(t_batch))
        return jnp.mean(jnp.sum((score_fn(xt, t_batch) - true) ** 2, axis=-1))

    return jax.lax.map(level, (jnp.arange(t_grid.shape[0]), t_grid))


def exact_nll(gmm: Any, x: jax.Array) -> jax.Array:
    """Negative true log-density -log p(x) (nats) of each example, x (B, D) -> (B,)."""
    return -gmm.log_prob(jnp.asarray(x))


class NLLReport(NamedTuple):
    """Model vs. true negative log-likelihood on the same points (nats per example).

    Attributes:
      model_nll: mean of -log q(x) (the model's density, e.g. by the probability-flow ODE).
      true_nll: mean of -log p(x) (the exact density).
      gap: model_nll - true_nll; estimates KL(p || q) >= 0 when x ~ p.
      gap_stderr: standard error of `gap` (paired over examples).
    """

    model_nll: float
    true_nll: float
    gap: float
    gap_stderr: float


def nll_report(model_log_prob: Any, gmm: Any, x: jax.Array) -> NLLReport:
    """Compares a model's log q(x) (B,) with the exact log p(x) of `gmm` on the same x (B, D).

    `model_log_prob` is typically the first output of `likelihood.ode_log_prob(score_fn, x,
    sde=...)` (nats, in the space x lives in), so no dequantization or data scaling enters.
    """
    model_nll = -np.asarray(model_log_prob, np.float64)
    true_nll = np.asarray(exact_nll(gmm, x), np.float64)
    if model_nll.shape != true_nll.shape:
        raise ValueError(f"nll_report: model_log_prob has shape {model_nll.shape} but x has "
                         f"{true_nll.shape[0]} examples; pass one log-density per example.")
    gap = model_nll - true_nll
    stderr = float(gap.std(ddof=1) / np.sqrt(gap.size)) if gap.size > 1 else float("nan")
    return NLLReport(float(model_nll.mean()), float(true_nll.mean()), float(gap.mean()), stderr)
