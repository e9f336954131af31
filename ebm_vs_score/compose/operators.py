"""Products, mixtures and negations of trained models, as energies and scores.

A trained model is a :class:`Component`: its score ``s(x, t)`` and, for energy models, its
energy ``E(x, t) -> (B,)`` (params bound, DESIGN.md rule 1). Composing components gives a
new component that every sampler in :func:`ebm_vs_score.samplers.sample` takes
(``score_fn=c.score, energy_fn=c.energy``):

* product    p ∝ Π p_i^{w_i}:           E = Σ w_i E_i,                 s = Σ w_i s_i
* mixture    p = Σ w_i p_i:              E = -log Σ w_i exp(-E_i),      s = Σ π_i s_i,
             π = softmax(log w - E)  (needs every energy: the weights π are energies)
* negation   p ∝ p_1 / p_2^α  ("1 but not 2"): E = E_1 - α E_2,        s = s_1 - α s_2

Du et al. 2023, "Reduce, Reuse, Recycle" (Sec. 3, eq. 4-6): at t > 0 the sum of the two
diffused scores is *not* the score of the diffused product (noise does not commute with
multiplication), so reverse diffusion of a composed score samples a different
distribution; annealed MCMC whose targets are the composed energies at each level, with a
Metropolis correction (MALA/HMC, which need energies), samples the composition at each
level, and at the last level (t = eps) the composition itself. The product and negation
of score-only models are defined (as sums of scores) and usable by every sampler that
needs no energy; a mixture of score-only models is refused, and so are MH samplers
without an energy (by ``samplers.sample``).

Energies of trained models are unnormalized, with a time-dependent log-partition
log Z_i(t). Products and negations only shift E by a constant then (the composed density
is unchanged); a mixture's weights become w_i Z_i(t), so its mode weights are those of the
exact mixture only if the Z_i are equal (``tests/test_compose.py`` states both).

Pure functions of callables; imports only jax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
EnergyFn = Callable[[jax.Array, jax.Array], jax.Array]

OPERATORS = ("product", "mixture", "negation")


class Component(NamedTuple):
    """A model's score ``s(x, t)`` and energy ``E(x, t) -> (B,)`` (None: score-only)."""

    score: ScoreFn
    energy: EnergyFn | None = None


def _bcast(w: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example weights (B,) broadcast against x (B, ...)."""
    return jnp.reshape(w, w.shape + (1,) * (x.ndim - 1))


def _weights(n: int, weights: Sequence[float] | None) -> jax.Array:
    if n < 1:
        raise ValueError("compose needs at least one component; pass a list of Component.")
    if weights is None:
        return jnp.ones((n,), jnp.float32)
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} components; give "
                         "one weight per component.")
    return jnp.asarray(weights, jnp.float32)


def _all_energies(components: Sequence[Component]) -> bool:
    return all(c.energy is not None for c in components)


def product(components: Sequence[Component],
            weights: Sequence[float] | None = None) -> Component:
    """Weighted product p ∝ Π p_i^{w_i} (Du et al. 2023, eq. 4; Hinton 2002).

    Args:
      components: the models.
      weights: exponents w_i (default all 1).

    Returns:
      Component with s = Σ w_i s_i and, if every component has one, E = Σ w_i E_i.
    """
    w = _weights(len(components), weights)

    def score(x, t):
        return sum(w[i] * c.score(x, t) for i, c in enumerate(components))

    def energy(x, t):
        return sum(w[i] * c.energy(x, t) for i, c in enumerate(components))

    return Component(score, energy if _all_energies(components) else None)


def negation(positive: Component, negative: Component, alpha: float = 0.5) -> Component:
    """"Positive but not negative": p ∝ p_1 / p_2^α (Du et al. 2023, Sec. 3, negation).

    Args:
      positive, negative: the models p_1 and p_2.
      alpha: strength α > 0 of the negation (the result is normalizable only when p_1's
        tails decay faster than p_2^α's; e.g. Gaussians need α σ_1² < σ_2²).

    Returns:
      Component with s = s_1 - α s_2 and, with both energies, E = E_1 - α E_2.
    """
    if not float(alpha) > 0:
        raise ValueError(f"negation alpha={alpha} must be positive (p_1 / p_2^alpha).")
    return product([positive, negative], [1.0, -float(alpha)])


def mixture(components: Sequence[Component],
            weights: Sequence[float] | None = None) -> Component:
    """Mixture p = Σ w_i p_i (Du et al. 2023, eq. 6), with p_i ∝ exp(-E_i).

    Args:
      components: energy models (each with ``energy``).
      weights: mixture weights w_i > 0 (default equal; normalized here).

    Returns:
      Component with E = -logsumexp_i(log w_i - E_i) and s = Σ_i π_i s_i,
      π = softmax_i(log w_i - E_i) (the posterior of the component given x).
    """
    missing = [i for i, c in enumerate(components) if c.energy is None]
    if missing:
        raise ValueError(
            f"a mixture needs every component's energy (its score weighs the component scores "
            f"by softmax(log w - E)), but component(s) {missing} are score-only; use energy "
            "models (model.parameterization='conservative') or a product/negation instead.")
    w = _weights(len(components), weights)
    if not bool(jnp.all(w > 0)):
        raise ValueError(f"mixture weights must be positive, got {w.tolist()}.")
    log_w = jnp.log(w / jnp.sum(w))

    def logits(x, t):
        return jnp.stack([log_w[i] - c.energy(x, t) for i, c in enumerate(components)], -1)

    def energy(x, t):
        return -jax.nn.logsumexp(logits(x, t), axis=-1)

    def score(x, t):
        post = jax.nn.softmax(logits(x, t), axis=-1)
        return sum(_bcast(post[:, i], x) * c.score(x, t) for i, c in enumerate(components))

    return Component(score, energy)


def compose(operator: str, components: Sequence[Component], *,
            weights: Sequence[float] | None = None, alpha: float = 0.5) -> Component:
    """Dispatches ``operator`` (one of ``OPERATORS``) to its function.

    ``negation`` takes exactly two components (positive, negative) and ``alpha``.
    """
    if operator == "product":
        return product(components, weights)
    if operator == "mixture":
        return mixture(components, weights)
    if operator == "negation":
        if len(components) != 2:
            raise ValueError(f"negation takes 2 components (positive, negative), got "
                             f"{len(components)}.")
        return negation(components[0], components[1], alpha)
    raise ValueError(f"unknown composition {operator!r}; valid names: {list(OPERATORS)}")


def exact_log_density(operator: str, log_probs: Sequence[Callable[[jax.Array], jax.Array]],
                      *, weights: Sequence[float] | None = None,
                      alpha: float = 0.5) -> Callable[[jax.Array], jax.Array]:
    """Unnormalized log-density of a composition of exact (normalized) densities.

    Args:
      operator: one of ``OPERATORS``.
      log_probs: normalized log p_i(x), x (..., D) -> (...).
      weights, alpha: as in :func:`compose`.

    Returns:
      x -> log p(x) + const (product, negation) or exactly log p(x) (mixture).
    """
    if operator == "mixture":  # exact: normalized energies, so the weights are right
        w = _weights(len(log_probs), weights)
        log_w = jnp.log(w / jnp.sum(w))
        return lambda x: jax.nn.logsumexp(
            jnp.stack([log_w[i] + lp(x) for i, lp in enumerate(log_probs)], -1), axis=-1)
    if operator == "negation":
        if len(log_probs) != 2:
            raise ValueError(f"negation takes 2 densities, got {len(log_probs)}.")
        return lambda x: log_probs[0](x) - float(alpha) * log_probs[1](x)
    if operator == "product":
        w = _weights(len(log_probs), weights)
        return lambda x: sum(w[i] * lp(x) for i, lp in enumerate(log_probs))
    raise ValueError(f"unknown composition {operator!r}; valid names: {list(OPERATORS)}")
