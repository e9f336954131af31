"""Network -> score and energy functions for the three families U, C and C-ResNet.

Convention (identical for U and C, DESIGN.md): data are perturbed as
``x = alpha(t) x0 + sigma(t) eps`` (``sde.marginal_prob``). A raw network ``F`` sees the
preconditioned input ``c_in(t) x`` with ``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)``
(Karras et al. 2022, Table 1) and the noise conditioning ``c_noise(t) = log sigma(t)``.
The shared denoiser is

    f(x, t) = x - sigma(t) F(c_in x, c_noise),            scale(t) = sigma(t)^2,

so ``f`` estimates ``alpha(t) E[x0 | x]`` and ``F`` estimates the noise ``eps``.

* U (unconstrained; Ho et al. 2020, Song & Ermon 2019):
  ``s_U = (f - x) / scale = -F / sigma`` -- the usual eps-parameterization.
* C (conservative energy U-Net; Salimans & Ho 2021, eq. 5-6):
  ``E = ||x - f||^2 / (2 scale) = ||F||^2 / 2`` and ``s_C = -grad_x E``. Expanding,
  ``s_C = s_U + J_f^T (x - f) / scale`` (their eq. 6), so U is exactly C's first term.
* C-ResNet (Salimans & Ho 2021, model "C", a classifier-style scalar network ``N``):
  ``E = N(c_in x, c_noise) / (sigma c_in)``, so that ``-grad_x E = -grad_u N / sigma`` with
  ``u = c_in x``: ``grad_u N`` plays the role of ``F`` and has unit scale at all noise levels.
* QC (Chao et al. 2023) is the U parameterization trained with ``training.qc_weight > 0``.

Every function here is pure: ``score(params, x, t, key=None)`` with ``x`` of shape
(B, ...) and ``t`` of shape (B,) returns an array like ``x``; ``energy(params, x, t,
key=None)`` returns (B,). ``key`` (optional) switches the network to training mode and
drives dropout. Samplers and metrics take them with params bound, as ``(x, t)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ebm_vs_score.sde import batch_mul

Params = Any
ScoreFn = Callable[..., jax.Array]
EnergyFn = Callable[..., jax.Array]

PARAMETERIZATIONS = ("unconstrained", "conservative", "resnet_energy")


class ModelFns(NamedTuple):
    """The functions a parameterization yields; ``energy`` is None for score models."""

    score: ScoreFn
    energy: EnergyFn | None
    conservative: bool


def preconditioning(sde, t: jax.Array, sigma_data: float):
    """Returns ``(c_in, c_noise, sigma)``, each of shape (B,) (Karras et al. 2022, Table 1)."""
    sigma = sde.marginal_std(t)
    alpha = sde.alpha(t)
    c_in = jax.lax.rsqrt(alpha**2 * sigma_data**2 + sigma**2)
    return c_in, jnp.log(sigma), sigma


def _apply(net, params, x, c_noise, key):
    """Calls the Flax network, in training mode (dropout on) iff ``key`` is given."""
    if key is None:
        return net.apply({"params": params}, x, c_noise, train=False)
    return net.apply({"params": params}, x, c_noise, train=True, rngs={"dropout": key})


def noise_prediction(net, sde, sigma_data: float):
    """``F(c_in x, c_noise)``, the raw vector network output, in float32."""

    def eps_fn(params, x, t, key=None):
        c_in, c_noise, _ = preconditioning(sde, t, sigma_data)
        return _apply(net, params, batch_mul(c_in, x), c_noise, key).astype(jnp.float32)

    return eps_fn


def denoiser(net, sde, sigma_data: float):
    """The shared denoiser ``f(x, t) = x - sigma F`` of U and C."""
    eps_fn = noise_prediction(net, sde, sigma_data)

    def f(params, x, t, key=None):
        return x - batch_mul(sde.marginal_std(t), eps_fn(params, x, t, key))

    return f


def score_from_energy(energy_fn: EnergyFn) -> ScoreFn:
    """``s = -grad_x E`` by the batch-sum trick (valid: examples do not interact).

    Generic: any scalar ``energy_fn(params, x, t, key=None) -> (B,)`` becomes a score.
    """

    def score(params, x, t, key=None):
        return -jax.grad(lambda y: energy_fn(params, y, t, key).sum())(x)

    return score


def unconstrained(net, sde, sigma_data: float) -> ModelFns:
    """U: ``s = (f - x) / sigma^2 = -F / sigma`` (Ho et al. 2020 eps-prediction)."""
    eps_fn = noise_prediction(net, sde, sigma_data)

    def score(params, x, t, key=None):
        return -batch_mul(1.0 / sde.marginal_std(t), eps_fn(params, x, t, key))

    return ModelFns(score=score, energy=None, conservative=False)


def conservative(net, sde, sigma_data: float) -> ModelFns:
    """C: ``E = ||x - f||^2 / (2 sigma^2) = ||F||^2 / 2`` (Salimans & Ho 2021, eq. 5)."""
    eps_fn = noise_prediction(net, sde, sigma_data)

    def energy(params, x, t, key=None):
        eps = eps_fn(params, x, t, key)
        return 0.5 * jnp.sum(eps.reshape(eps.shape[0], -1) ** 2, axis=-1)

    return ModelFns(score=score_from_energy(energy), energy=energy, conservative=True)


def resnet_energy(net, sde, sigma_data: float) -> ModelFns:
    """C-ResNet: ``E = N(c_in x, c_noise) / (sigma c_in)`` for a scalar network N."""

    def energy(params, x, t, key=None):
        c_in, c_noise, sigma = preconditioning(sde, t, sigma_data)
        out = _apply(net, params, batch_mul(c_in, x), c_noise, key).astype(jnp.float32)
        return out.reshape(x.shape[0]) / (sigma * c_in)

    return ModelFns(score=score_from_energy(energy), energy=energy, conservative=True)


_FAMILIES = {
    "unconstrained": unconstrained,
    "conservative": conservative,
    "resnet_energy": resnet_energy,
}

SCALAR_OUTPUT = {"unconstrained": False, "conservative": False, "resnet_energy": True}


def get_model_fns(name: str, net, sde, sigma_data: float) -> ModelFns:
    """Maps ``model.parameterization`` to its score/energy functions."""
    if name not in _FAMILIES:
        raise ValueError(
            f"unknown model.parameterization {name!r}; valid names: {sorted(_FAMILIES)}"
        )
    return _FAMILIES[name](net, sde, sigma_data)


def bind(fn, params, key=None):
    """Binds params (and optionally a dropout key) so samplers/metrics see ``fn(x, t)``."""
    if fn is None:
        return None
    return lambda x, t: fn(params, x, t, key)
