"""Experiments with exact models: two claims of the seed papers tested where the truth is known.

* :func:`annealing_experiment` (Song & Ermon 2019, Sec. 3.2 and Fig. 3): Langevin dynamics
  driven by the EXACT score of a two-mode mixture with unequal weights cannot recover the
  weights (the score carries no information about the relative mass of separated modes,
  and chains never cross between them); annealed Langevin over a ladder of noise levels
  (``samplers.sample('ald', ...)``, the exact scores of the noised mixture) does.
* :func:`ais_vs_ode` (Gao et al. 2021, Table 4; Song et al. 2021, Sec. 4.3): the NLL of an
  energy model by AIS (``exp(-E(x, eps)) / Z``) and by the probability-flow ODE of its
  score ``-grad E``, on the same points, against the exact NLL. The model is the mixture
  itself: E(x, t) = -log p_t(x), whose score is the exact noised score.

Models take their mixture as ``params`` (``score_fn(params, x, t)``), like a network.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score import data as data_lib
from ebm_vs_score import samplers
from ebm_vs_score import sde as sde_lib
from ebm_vs_score.evaluate import nll


def mixture_model(sde) -> tuple[Any, Any]:
    """(score_fn, energy_fn) of the exact noised mixture, ``params`` = the mixture.

    E(x, t) = -log p_t(x) with p_t the law of x_t = alpha(t) x_0 + sigma(t) z, x_0 ~ params;
    the score -grad E is the mixture's closed-form noised score (``GaussianMixture``).
    """
    def coeffs(t):
        return sde.alpha(t), sde.marginal_std(t)

    def energy_fn(params, x, t, key=None):
        return -params.noisy_log_prob(x, *coeffs(t))

    def score_fn(params, x, t, key=None):
        return params.noisy_score(x, *coeffs(t))

    return score_fn, energy_fn


def two_modes(weights=(0.8, 0.2), distance: float = 10.0, std: float = 1.0
              ) -> data_lib.GaussianMixture:
    """Two Gaussians at +-(d/2)(1, 1)/sqrt(2) with ``weights`` (Song & Ermon's Fig. 3 toy is
    4/5 N((5, 5), I) + 1/5 N((-5, -5), I): distance 14.1)."""
    direction = jnp.asarray([1.0, 1.0]) / jnp.sqrt(2.0)
    means = jnp.stack([0.5 * distance * direction, -0.5 * distance * direction])
    return data_lib.GaussianMixture(jnp.asarray(weights, jnp.float32), means,
                                    jnp.full((2,), std, jnp.float32))


def mode_weights(samples: jax.Array, mixture: data_lib.GaussianMixture) -> np.ndarray:
    """Fraction of samples nearest to each component mean, (K,)."""
    dist = jnp.sum((samples[:, None, :] - mixture.means[None]) ** 2, -1)
    nearest = np.asarray(jnp.argmin(dist, -1))
    return np.bincount(nearest, minlength=mixture.num_components) / len(nearest)


def langevin(score, key, x, *, step_size: float, num_steps: int) -> jax.Array:
    """Plain (unadjusted) Langevin, x <- x + h s(x) + sqrt(2 h) z, at one noise level."""
    def step(x, k):
        z = jax.random.normal(k, x.shape, x.dtype)
        return x + step_size * score(x) + jnp.sqrt(2.0 * step_size) * z, None

    x, _ = jax.lax.scan(step, x, jax.random.split(key, num_steps))
    return x


def annealing_experiment(key, *, weights=(0.8, 0.2), distance: float = 10.0,
                         num_samples: int = 2000, num_levels: int = 10,
                         steps_per_level: int = 100, step_size: float = 0.1,
                         sigma_max: float = 20.0, sigma_min: float = 1.0,
                         init_range: float = 8.0) -> dict[str, Any]:
    """Mode weights of plain vs annealed Langevin with the exact score (Song & Ermon Fig. 3).

    Both start from the same uniform points in [-init_range, init_range]^2 and make the
    same number of score evaluations (``num_levels * steps_per_level``). Plain Langevin
    uses the data score with step ``step_size``; annealed Langevin the noised scores on
    the geometric ladder sigma_max -> sigma_min with the NCSN step
    ``step_size * sigma_l^2 / sigma_min^2`` (Algorithm 1).

    Returns:
      ``truth``, ``plain``, ``annealed``: (2,) mode weights; ``plain_error`` and
      ``annealed_error``: max |weight - truth|; ``num_samples``.
    """
    mixture = two_modes(weights, distance)
    k_init, k_plain, k_ald = jax.random.split(key, 3)
    x0 = jax.random.uniform(k_init, (num_samples, 2), minval=-init_range, maxval=init_range)
    plain = langevin(mixture.score, k_plain, x0, step_size=step_size,
                     num_steps=num_levels * steps_per_level)
    sde = sde_lib.VESDE(sigma_min=sigma_min, sigma_max=sigma_max)
    score_fn, _ = mixture_model(sde)
    annealed, _ = samplers.sample(
        "ald", k_ald, x0.shape, sde=sde, score_fn=lambda x, t: score_fn(mixture, x, t),
        num_steps=num_levels, n_steps_each=steps_per_level, step_size=step_size,
        denoise=False, init=x0)
    truth = np.asarray(mixture.weights)
    out = {"truth": truth, "plain": mode_weights(plain, mixture),
           "annealed": mode_weights(annealed, mixture), "num_samples": num_samples}
    out["plain_error"] = float(np.max(np.abs(out["plain"] - truth)))
    out["annealed_error"] = float(np.max(np.abs(out["annealed"] - truth)))
    return out


def ais_vs_ode(key, mixture: data_lib.GaussianMixture, *, sde=None, num_examples: int = 256,
               num_bins: int | None = None, **ais_options: Any) -> dict[str, float]:
    """NLL of the exact mixture energy by AIS and by the ODE, same points, against the truth.

    Points are drawn from the mixture (and dequantized if ``num_bins`` is set, which makes
    them images-like: use a mixture on [-1, 1]). The exact NLL is -log p_eps of the points,
    the density both estimators target.

    Returns:
      The ODE results (``nll_*``), the AIS results (``ais_*``) and ``exact_nll_nats``.
    """
    sde = sde_lib.VPSDE() if sde is None else sde
    k_data, k_deq, k_ode, k_ais = jax.random.split(key, 4)
    x = np.asarray(mixture.sample(k_data, num_examples))
    points = nll.protocol_points(k_deq, x, num_bins)
    protocol = nll.Protocol(num_bins=num_bins, num_probes=0, batch_size=num_examples)
    score_fn, energy_fn = mixture_model(sde)
    ode, log_p = nll.ode_nll(score_fn, mixture, points, k_ode, sde=sde,
                                     protocol=protocol)
    ode.update(nll.energy_ode_agreement(energy_fn, mixture, points, log_p, sde=sde))
    ais = nll.ais_nll_metrics(energy_fn, mixture, points, k_ais, sde=sde,
                                      protocol=protocol, **ais_options)
    exact = -np.asarray(energy_fn(mixture, jnp.asarray(points),
                                  jnp.full((len(points),), sde.eps)), np.float64)
    out = {**ode, **ais, "exact_nll_nats": float(-exact.mean())}
    if num_bins is not None:
        out["exact_nll_bpd"] = float(nll.bits_per_dim(exact, points[0].size,
                                                              num_bins).mean())
    return out
