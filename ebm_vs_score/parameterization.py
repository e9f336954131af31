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

      E = B(x, t) + N(c_in x, c_noise) / (sigma c_in),   B = energy_base,

  so that ``-grad_x E = -grad_x B - grad_u N / sigma`` with ``u = c_in x``: ``grad_u N``
  plays the role of ``F`` and has unit scale at all noise levels.

  ``energy_base='gaussian'`` (the default) is ``B = c_in^2 ||x||^2 / 2``, the exact energy
  of the perturbed data when the data are N(0, sigma_data^2 I): then
  ``x ~ N(0, (alpha^2 sigma_data^2 + sigma^2) I) = N(0, I / c_in^2)``, so ``N = 0`` is the
  exact answer and ``-grad_x B = -c_in^2 x`` is the exact score. It is a design choice, made
  because the network alone has no restoring force (DESIGN.md rule 2): the ResNet energy
  ends GroupNorm -> swish -> mean-pool -> Dense(1) and has GroupNorm in every block, so
  ``N(lambda u)`` flattens as ``lambda`` grows and ``N / (sigma c_in)`` cannot grow like the
  true ``||x||^2 / (2 var_t)``; without the base term its ODE likelihoods and samples blow
  up (docs/notes/energy_base.md). Gao et al. 2021 (diffusion recovery likelihood) reach the
  same property differently: their energy network has no normalization and sum-pools, so
  it is unbounded. ``energy_base='none'`` is Salimans & Ho's model C exactly as published
  (``B = 0``), kept so that the study can report both.
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
# model.energy_base: the fixed term B(x, t) added to the C-ResNet energy (see module doc).
ENERGY_BASES = ("gaussian", "none")


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


def _check_energy_base(energy_base: str) -> None:
    """Raises ``ValueError`` naming the valid ``model.energy_base`` values."""
    if energy_base not in ENERGY_BASES:
        raise ValueError(
            f"unknown model.energy_base {energy_base!r}; valid names: {list(ENERGY_BASES)}"
        )


def gaussian_base_energy(x: jax.Array, c_in: jax.Array) -> jax.Array:
    """``c_in^2 ||x||^2 / 2`` per example: the exact energy of N(0, I / c_in^2) (module doc)."""
    return 0.5 * c_in**2 * jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)


def resnet_energy(net, sde, sigma_data: float, energy_base: str = "gaussian",
                  output_scale: Callable[[jax.Array], jax.Array] | None = None) -> ModelFns:
    """C-ResNet: ``E = B + N(c_in x, c_noise) / (sigma c_in)`` for a scalar network N.

    Args:
      net: a Flax network with scalar output (B,) (ResNet energy, scalar MLP).
      sde: the noise process (``marginal_std``, ``alpha``).
      sigma_data: the data scale in ``c_in`` (Karras et al. 2022, Table 1).
      energy_base: ``'gaussian'``: ``B = c_in^2 ||x||^2 / 2``, a restoring force that is
        exact for Gaussian data (default); ``'none'``: ``B = 0``, Salimans & Ho 2021's
        model C as published (bounded far from the data with a normalized head).
      output_scale: ``t -> (B,)`` factor of N replacing ``1 / (sigma c_in)``; DRL's
        ``drl.energy_scale='step'`` passes ``1 / s_t^2`` (Gao et al.'s code).

    Returns:
      ``ModelFns`` with ``score = -grad_x E`` (Salimans & Ho 2021, eq. 5) and the energy.
    """
    _check_energy_base(energy_base)

    def energy(params, x, t, key=None):
        c_in, c_noise, sigma = preconditioning(sde, t, sigma_data)
        out = _apply(net, params, batch_mul(c_in, x), c_noise, key).astype(jnp.float32)
        scale = 1.0 / (sigma * c_in) if output_scale is None else output_scale(t)
        e = out.reshape(x.shape[0]) * scale
        if energy_base == "gaussian":
            e = e + gaussian_base_energy(x.astype(jnp.float32), c_in)
        return e

    return ModelFns(score=score_from_energy(energy), energy=energy, conservative=True)


_FAMILIES = {
    "unconstrained": unconstrained,
    "conservative": conservative,
    "resnet_energy": resnet_energy,
}

SCALAR_OUTPUT = {"unconstrained": False, "conservative": False, "resnet_energy": True}


def get_model_fns(
    name: str, net, sde, sigma_data: float, *, energy_base: str = "gaussian",
    output_scale: Callable[[jax.Array], jax.Array] | None = None,
) -> ModelFns:
    """Maps ``model.parameterization`` to its score/energy functions.

    ``energy_base`` (one of ``ENERGY_BASES``) is used by ``'resnet_energy'`` only; the C
    energy ``||F||^2 / 2`` and U have no base term (U must stay C's first term, eq. 6).
    """
    if name not in _FAMILIES:
        raise ValueError(
            f"unknown model.parameterization {name!r}; valid names: {sorted(_FAMILIES)}"
        )
    if name == "resnet_energy":
        return resnet_energy(net, sde, sigma_data, energy_base, output_scale)
    _check_energy_base(energy_base)
    if output_scale is not None:
        raise ValueError(f"an output scale applies to model.parameterization='resnet_energy' "
                         f"only, not {name!r}")
    return _FAMILIES[name](net, sde, sigma_data)


def bind(fn, params, key=None):
    """Binds params (and optionally a dropout key) so samplers/metrics see ``fn(x, t)``."""
    if fn is None:
        return None
    return lambda x, t: fn(params, x, t, key)
