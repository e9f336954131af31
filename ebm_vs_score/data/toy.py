"""2-D toy distributions with exact densities, and Gaussian mixtures (pure numpy/JAX).

Toys (float32, shape (n, 2); `gmm` is (n, toy_dim)) are scaled isotropically so that the
mean per-coordinate variance, tr(Cov) / D, is ~1 and the mean is ~0 (shape preserved):
  - `checkerboard`: FFJORD's 4x4 board on [-2, 2]^2 times sqrt(3)/2, i.e. on
    [-sqrt(3), sqrt(3)]^2 with squares of side sqrt(3)/2; each coordinate is U(-sqrt3,
    sqrt3), variance exactly 1. Exact density: 1/6 on the 8 occupied squares, 0 elsewhere.
  - `8gaussians`: 8 equal-weight isotropic Gaussians at angles k*pi/4 on a circle of
    radius 8/sqrt(33), std 1/sqrt(33) (FFJORD's radius/std ratio 8); variance exactly 1.
  - `spiral`: the swiss roll t*(cos t, sin t), t ~ U(1.5pi, 4.5pi), plus N(0, 1) noise
    (sklearn / FFJORD), centred by its exact mean (2, 2/(3pi)) and divided by 6.86.
  - `moons`: two half circles (sklearn `make_moons`, angles ~ U(0, pi), noise std 0.1),
    centred by the exact mean (0.5, 0.25) and divided by 0.712 (per-axis variances then
    ~1.50 and ~0.50).
  - `gmm`: the fixed, well-separated mixture built by `gmm(dim, num_components)`.

`GaussianMixture` gives exact log-densities and scores, also after Gaussian noising
x_t = alpha x_0 + sigma eps: the references that samplers and losses are tested against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

TOY_NAMES = ("checkerboard", "8gaussians", "spiral", "moons", "gmm")


# ----------------------------------------------------------------------------------------
# Gaussian mixtures (pure JAX; exact densities and scores, also after Gaussian noising)
# ----------------------------------------------------------------------------------------


def _component_terms(x, log_weights, means, stds):
    """Per-component log(w_k N(x; m_k, s_k^2 I)), x - m_k and s_k^2.

    x is (..., D); means (K, D) or (B, K, D) and stds (K,) or (B, K) with x (B, D).
    """
    d = x.shape[-1]
    diff = x[..., None, :] - means  # (..., K, D)
    var = stds**2
    log_norm = -0.5 * d * jnp.log(2 * jnp.pi * var)
    return log_weights + log_norm - 0.5 * jnp.sum(diff**2, -1) / var, diff, var


def _mixture_log_prob(x, log_weights, means, stds):
    terms, _, _ = _component_terms(x, log_weights, means, stds)
    return jax.nn.logsumexp(terms, axis=-1)


def _mixture_score(x, log_weights, means, stds):
    """Closed form grad log p = sum_k r_k(x) (m_k - x) / s_k^2 (r: responsibilities)."""
    terms, diff, var = _component_terms(x, log_weights, means, stds)
    resp = jax.nn.softmax(terms, axis=-1)
    return -jnp.sum((resp / var)[..., None] * diff, axis=-2)


class GaussianMixture(NamedTuple):
    """Mixture of isotropic Gaussians sum_k w_k N(m_k, s_k^2 I) in D dimensions.

    A pytree of jnp arrays (pass it through `jax.jit` freely); all methods are pure JAX.
    Noising x_t = alpha x_0 + sigma eps of a mixture is again a mixture, with means
    alpha m_k and variances alpha^2 s_k^2 + sigma^2: this gives the exact noisy scores
    that samplers and losses are tested against.

    Attributes:
      weights: (K,) mixture weights, summing to 1.
      means: (K, D) component means.
      stds: (K,) per-component isotropic standard deviations.
    """

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log-density of x (..., D) -> (...)."""
        return _mixture_log_prob(x, jnp.log(self.weights), self.means, self.stds)

    def score(self, x: jax.Array) -> jax.Array:
        """Exact grad_x log p(x), x (..., D) -> (..., D)."""
        return _mixture_score(x, jnp.log(self.weights), self.means, self.stds)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n samples, (n, D)."""
        k_comp, k_eps = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.log(self.weights), shape=(n,))
        eps = jax.random.normal(k_eps, (n, self.dim), self.means.dtype)
        return self.means[comp] + self.stds[comp, None] * eps

    def mean(self) -> jax.Array:
        """Mixture mean, (D,)."""
        return self.weights @ self.means

    def covariance(self) -> jax.Array:
        """Mixture covariance sum_k w_k (s_k^2 I + m_k m_k^T) - m m^T, (D, D)."""
        second = jnp.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        second += jnp.sum(self.weights * self.stds**2) * jnp.eye(self.dim)
        m = self.mean()
        return second - jnp.outer(m, m)

    def noisy(self, alpha: float | jax.Array, sigma: float | jax.Array) -> GaussianMixture:
        """Law of x_t = alpha x_0 + sigma eps for scalar alpha, sigma (a mixture again)."""
        alpha, sigma = jnp.asarray(alpha), jnp.asarray(sigma)
        chex.assert_rank([alpha, sigma], 0)
        stds = jnp.sqrt(alpha**2 * self.stds**2 + sigma**2)
        return GaussianMixture(self.weights, alpha * self.means, stds)

    def _noisy_params(self, x, alpha, sigma):
        """Per-example noised means (B, K, D) and stds (B, K) for x (B, D)."""
        chex.assert_rank(x, 2)
        chex.assert_axis_dimension(x, 1, self.dim)
        b = x.shape[0]
        alpha, sigma = (jnp.broadcast_to(v, (b,)) if jnp.ndim(v) == 0 else jnp.asarray(v)
                        for v in (alpha, sigma))
        chex.assert_shape([alpha, sigma], (b,))
        means = alpha[:, None, None] * self.means
        stds = jnp.sqrt(alpha[:, None] ** 2 * self.stds**2 + sigma[:, None] ** 2)
        return means, stds

    def noisy_log_prob(self, x: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
        """log p_t(x) of x_t = alpha x_0 + sigma eps; x (B, D), alpha/sigma scalar or (B,)."""
        means, stds = self._noisy_params(x, alpha, sigma)
        return _mixture_log_prob(x, jnp.log(self.weights), means, stds)

    def noisy_score(self, x: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
        """Exact grad_x log p_t(x); x (B, D), alpha/sigma scalar or (B,) -> (B, D)."""
        means, stds = self._noisy_params(x, alpha, sigma)
        return _mixture_score(x, jnp.log(self.weights), means, stds)


_EIGHT_RADIUS = 8 / math.sqrt(33)  # radius^2/2 + std^2 = 1: unit variance per coordinate
_EIGHT_STD = 1 / math.sqrt(33)


@functools.cache
def eight_gaussians() -> GaussianMixture:
    """The `8gaussians` toy: 8 equal Gaussians on a circle, unit variance per coordinate."""
    angles = jnp.arange(8) * (jnp.pi / 4)
    means = _EIGHT_RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    return GaussianMixture(jnp.full((8,), 1 / 8), means, jnp.full((8,), _EIGHT_STD))


@functools.cache
def gmm(dim: int = 2, num_components: int = 8, seed: int = 0) -> GaussianMixture:
    """A fixed, well-separated mixture in `dim` dimensions (the `gmm` toy).

    Means are drawn uniformly in [-sqrt3, sqrt3]^dim by rejection so that any two are at
    least 0.75 apart, i.e. >= 5 component stds, with stds in [0.12, 0.15] and weights in
    proportion to U(0.5, 1.5) (neither uniform). Then means are centred and means and stds
    scaled by one common factor so that the mixture has zero mean and tr(Cov)/dim = 1
    exactly (separation in stds unchanged). Deterministic given its arguments.
    """
    rng = np.random.default_rng([seed, dim, num_components])
    half, min_dist = math.sqrt(3.0), 0.75
    means: list[np.ndarray] = []
    for _ in range(100_000):
        cand = rng.uniform(-half, half, size=dim)
        if all(np.linalg.norm(cand - m) >= min_dist for m in means):
            means.append(cand)
            if len(means) == num_components:
                break
    else:
        raise ValueError(f"gmm: cannot place {num_components} components {min_dist} apart in "
                         f"{dim} dimensions; use fewer components (data.num_components).")
    weights = rng.uniform(0.5, 1.5, size=num_components)
    weights /= weights.sum()
    stds = rng.uniform(0.12, 0.15, size=num_components)
    centred = np.stack(means) - weights @ np.stack(means)
    # Zero mean and tr(Cov)/D = 1 exactly; a common scale keeps the separation in stds.
    scale = 1 / math.sqrt(weights @ (np.sum(centred**2, axis=1) / dim + stds**2))
    return GaussianMixture(jnp.asarray(weights, jnp.float32),
                           jnp.asarray(scale * centred, jnp.float32),
                           jnp.asarray(scale * stds, jnp.float32))


# ----------------------------------------------------------------------------------------
# 2-D toys (numpy samplers, deterministic given the seed)
# ----------------------------------------------------------------------------------------

_CHECKER_SIDE = math.sqrt(3.0) / 2  # board [-2c, 2c]^2, each coordinate ~ U(-sqrt3, sqrt3)
_SPIRAL_CENTER = np.array([2.0, 2.0 / (3 * np.pi)])
_SPIRAL_SCALE = 6.86
_MOONS_CENTER = np.array([0.5, 0.25])
_MOONS_SCALE = 0.712


def _as_generator(key_or_seed: Any) -> np.random.Generator:
    """numpy Generator from a Generator, an int / sequence of ints, or a JAX PRNG key."""
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed
    if isinstance(key_or_seed, jax.Array):
        if jnp.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
            key_or_seed = jax.random.key_data(key_or_seed)
        return np.random.default_rng(np.asarray(key_or_seed, np.uint32).ravel().tolist())
    return np.random.default_rng(key_or_seed)


def _sample_checkerboard(rng, n):
    col = rng.integers(0, 4, size=n)
    row = 2 * rng.integers(0, 2, size=n) + col % 2  # occupied squares: row + col even
    cells = np.stack([col, row], axis=1) + rng.uniform(size=(n, 2)) - 2.0
    return _CHECKER_SIDE * cells


def _sample_spiral(rng, n):
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    roll = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return (roll - _SPIRAL_CENTER) / _SPIRAL_SCALE


def _sample_moons(rng, n):
    angle, upper = np.pi * rng.uniform(size=n), rng.uniform(size=n) < 0.5
    outer = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    inner = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    moons = np.where(upper[:, None], outer, inner) + 0.1 * rng.standard_normal((n, 2))
    return (moons - _MOONS_CENTER) / _MOONS_SCALE


def _sample_mixture_np(mixture: GaussianMixture, rng, n):
    weights = np.asarray(mixture.weights, np.float64)
    comp = rng.choice(len(weights), size=n, p=weights / weights.sum())
    means, stds = np.asarray(mixture.means), np.asarray(mixture.stds)
    return means[comp] + stds[comp, None] * rng.standard_normal((n, means.shape[1]))


def toy_mixture(name: str, *, dim: int = 2, num_components: int = 8) -> GaussianMixture:
    """The `GaussianMixture` behind a mixture toy (`8gaussians` or `gmm`)."""
    mixtures = {"8gaussians": eight_gaussians,
                "gmm": lambda: gmm(dim=dim, num_components=num_components)}
    if name not in mixtures:
        raise ValueError(f"toy {name!r} is not a Gaussian mixture; mixtures: {list(mixtures)}.")
    return mixtures[name]()


def sample_toy(name: str, key_or_seed: Any, n: int, *, dim: int = 2,
               num_components: int = 8) -> np.ndarray:
    """n samples of a toy distribution, float32 (n, 2) ((n, dim) for `gmm`).

    Args:
      name: one of `TOY_NAMES`.
      key_or_seed: an int / sequence of ints seed, a `np.random.Generator`, or a JAX key.
      n: number of samples.
      dim, num_components: the `gmm` toy's dimension and number of components.
    """
    samplers: dict[str, Callable] = {
        "checkerboard": _sample_checkerboard,
        "8gaussians": lambda rng, n: _sample_mixture_np(eight_gaussians(), rng, n),
        "spiral": _sample_spiral,
        "moons": _sample_moons,
        "gmm": lambda rng, n: _sample_mixture_np(
            gmm(dim=dim, num_components=num_components), rng, n),
    }
    if name not in samplers:
        raise ValueError(f"Unknown toy {name!r}; valid toys: {list(samplers)}.")
    return samplers[name](_as_generator(key_or_seed), n).astype(np.float32)


def _checkerboard_log_prob(x: jax.Array) -> jax.Array:
    """Exact log-density of `checkerboard`: log(1/6) on occupied squares, -inf elsewhere."""
    cell = jnp.floor(x / _CHECKER_SIDE + 2.0)  # (..., 2) in {0..3} inside the board
    inside = jnp.all((cell >= 0) & (cell <= 3), axis=-1)
    occupied = jnp.sum(cell, axis=-1) % 2 == 0
    log_density = -jnp.log(8 * _CHECKER_SIDE**2)
    return jnp.where(inside & occupied, log_density, -jnp.inf)


def toy_log_prob(name: str, *, dim: int = 2,
                 num_components: int = 8) -> Callable[[jax.Array], jax.Array]:
    """Exact log-density x (..., D) -> (...) of a toy with a closed-form density.

    Available for `gmm`, `8gaussians` and `checkerboard` (piecewise constant, -inf off the
    board); `spiral` and `moons` have no closed form and raise ValueError.
    """
    if name == "checkerboard":
        return _checkerboard_log_prob
    if name in ("8gaussians", "gmm"):
        return toy_mixture(name, dim=dim, num_components=num_components).log_prob
    if name in TOY_NAMES:
        raise ValueError(f"toy {name!r} has no closed-form density; exact densities exist "
                         "for: checkerboard, 8gaussians, gmm.")
    raise ValueError(f"Unknown toy {name!r}; valid toys: {list(TOY_NAMES)}.")
