"""Noise processes: VE, VP and sub-VP SDEs and their discrete SMLD / DDPM chains.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling
through Stochastic Differential Equations", ICLR 2021 (hereafter *Song et al. 2021*),
eq. 9 (VE), eq. 11 (VP) and the sub-VP SDE of their Sec. 3.4. The discrete chains are
the SMLD noise levels of Song & Ermon 2019 (geometric sigmas) and the DDPM chain of
Ho et al. 2020 (linear betas).

Every process perturbs data as ``x_t = alpha(t) * x_0 + std(t) * eps`` (alpha = 1 for
VE). The names and signatures follow the score_sde codebase so users can move over:

* ``marginal_prob(x0, t) -> (mean, std)``: ``mean`` like ``x0``, ``std`` of shape (B,);
* ``sde(x, t) -> (drift, diffusion)``: ``drift`` like ``x``, ``diffusion`` of shape (B,);
* ``prior_sampling(key, shape)`` and ``prior_logp(z) -> (B,)``;
* ``discretize(x, t) -> (f, G)``: the training chain's step at t (Song et al. 2021, App. E);
* ``grid_step(x, t, t_next) -> (f, G)``: the forward chain step between two grid times, the
  step the reverse-diffusion predictor inverts; ``ancestral_step`` (the ancestral sampler's
  step), ``corrector_alpha(t)`` (the Langevin corrector's alpha_i), ``name`` and
  ``has_discrete_chain``: what samplers and losses ask of an SDE (no class checks);
* ``T`` (end time, 1.0), ``eps`` (smallest time used in training/sampling), ``N``.

The objects are frozen dataclasses of Python floats: hashable, closed over by ``jax.jit``
as constants, and holding no state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def batch_mul(a: jax.Array, x: jax.Array) -> jax.Array:
    """Multiplies per-example scalars ``a`` (B,) into a batch ``x`` (B, ...)."""
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def sum_sq(x: jax.Array) -> jax.Array:
    """Per-example squared norm ||x_b||^2, shape (B,)."""
    return jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)


def _gaussian_logp(z: jax.Array, std: float) -> jax.Array:
    """log N(z; 0, std^2 I) per example, shape (B,)."""
    d = np.prod(z.shape[1:])
    return -0.5 * d * jnp.log(2 * jnp.pi * std**2) - sum_sq(z) / (2 * std**2)


class _SDE:
    """Shared behaviour. Subclasses define ``alpha``, ``marginal_std``, ``sde``."""

    T: float = 1.0
    eps: float
    N: int
    name: str = ""  # sde.name
    label: str = ""  # how the papers write it
    has_discrete_chain: bool = True

    def alpha(self, t: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def marginal_std(self, t: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and std of p_t(x_t | x_0) (Song et al. 2021, eq. 29, 33)."""
        return batch_mul(self.alpha(t), x0), self.marginal_std(t)

    def perturb(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """x_t = alpha(t) x_0 + std(t) noise."""
        mean, std = self.marginal_prob(x0, t)
        return mean + batch_mul(std, noise)

    def time_grid(self, num_steps: int) -> jax.Array:
        """Decreasing times T -> eps, ``num_steps`` points, as used by the samplers."""
        return jnp.linspace(self.T, self.eps, num_steps)

    def corrector_alpha(self, t: jax.Array) -> jax.Array:
        """alpha_i of the Langevin corrector's step 2 alpha_i (r ||z|| / ||s||)^2 (Alg. 4/5)."""
        return jnp.ones_like(t)

    def no_chain_error(self) -> ValueError:
        """The error for asking a chain-less SDE (sub-VP) for a discrete chain step."""
        return ValueError(
            f"ancestral sampling needs a discrete chain, which the {self.label} SDE lacks: use "
            "sampling.method='euler_maruyama', 'pc' (another predictor) or 'ode', "
            "or sde.name='vp'")


@dataclasses.dataclass(frozen=True)
class VESDE(_SDE):
    """Variance exploding SDE, dx = sigma(t) sqrt(2 log(smax/smin)) dw (Song et al. 2021 eq. 30).

    sigma(t) = sigma_min (sigma_max / sigma_min)^t; its N-level discretization is the
    geometric SMLD ladder of Song & Ermon 2019.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000
    eps: float = 1e-5

    def alpha(self, t):
        return jnp.ones_like(t)

    name, label = "ve", "VE"

    def marginal_std(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        g = self.marginal_std(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
        return jnp.zeros_like(x), g

    @property
    def discrete_sigmas(self) -> jax.Array:
        """SMLD noise levels, increasing: sigma_min ... sigma_max (Song & Ermon 2019)."""
        return jnp.exp(jnp.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

    def timestep(self, t):
        """Index i of the discrete level closest below t (Song et al. 2021, App. E)."""
        return jnp.round(t * (self.N - 1) / self.T).astype(jnp.int32)

    def discretize(self, x, t):
        """SMLD chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z."""
        i = self.timestep(t)
        sigma = self.discrete_sigmas[i]
        prev = jnp.where(i == 0, 0.0, self.discrete_sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - prev**2)

    def grid_step(self, x, t, t_next):
        """SMLD chain between grid times: f = 0, G^2 = sigma(t)^2 - sigma(t_next)^2 (eq. 45)."""
        sigma, sigma_next = self.marginal_std(t), self.marginal_std(t_next)
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - sigma_next**2)

    def ancestral_step(self, x, score, noise, t, t_next):
        """SMLD ancestral step (Song et al. 2021, App. F):
        x + (sigma^2 - sigma'^2) s + sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2) z."""
        var, var_next = self.marginal_std(t) ** 2, self.marginal_std(t_next) ** 2
        x_mean = x + batch_mul(var - var_next, score)
        return x_mean + batch_mul(jnp.sqrt(var_next * (var - var_next) / var), noise)

    def prior_sampling(self, key, shape):
        return jax.random.normal(key, shape) * self.sigma_max

    def prior_logp(self, z):
        return _gaussian_logp(z, self.sigma_max)


@dataclasses.dataclass(frozen=True)
class VPSDE(_SDE):
    """Variance preserving SDE, dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (Song et al. 2021 eq. 32).

    beta(t) = beta_min + t (beta_max - beta_min); its N-step discretization is the DDPM
    chain of Ho et al. 2020 with betas linspace(beta_min / N, beta_max / N, N).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    eps: float = 1e-3

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    name, label = "vp", "VP"

    def log_alpha(self, t):
        """log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2 (eq. 33)."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def marginal_std(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * batch_mul(beta, x), jnp.sqrt(beta)

    @property
    def discrete_betas(self) -> jax.Array:
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas_cumprod(self) -> jax.Array:
        """DDPM bar-alpha_i = prod_{j<=i} (1 - beta_j) (Ho et al. 2020, eq. 4)."""
        return jnp.cumprod(1.0 - self.discrete_betas)

    def timestep(self, t):
        """Index i of the DDPM step at model time t_i = (i + 1) T / N.

        Those are the times of the grid ``linspace(T, T / N, N)`` (``eps = 1e-3 = 1 / N``),
        at which ``std(t_i)`` matches the chain's ``sqrt(1 - abar_i)``; the DDPM loss trains
        step i at t_i. (score_sde floors ``t (N - 1) / T``, the same index on that grid.)
        """
        i = jnp.round(t * self.N / self.T) - 1
        return jnp.clip(i, 0, self.N - 1).astype(jnp.int32)

    def discretize(self, x, t):
        """DDPM step x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z."""
        beta = self.discrete_betas[self.timestep(t)]
        return batch_mul(jnp.sqrt(1.0 - beta), x) - x, jnp.sqrt(beta)

    def grid_beta(self, t, t_next):
        """beta of the DDPM chain respaced on the grid: 1 - beta = alpha(t)^2 / alpha(t_next)^2
        (Nichol & Dhariwal 2021, Sec. 4)."""
        return -jnp.expm1(2.0 * (self.log_alpha(t) - self.log_alpha(t_next)))

    def grid_step(self, x, t, t_next):
        """DDPM chain between grid times: f = (sqrt(1 - beta) - 1) x, G^2 = beta (eq. 46)."""
        beta = self.grid_beta(t, t_next)
        return batch_mul(jnp.sqrt(1.0 - beta) - 1.0, x), jnp.sqrt(beta)

    def ancestral_step(self, x, score, noise, t, t_next):
        """DDPM ancestral step (Ho et al. 2020, Alg. 2, with the score):
        x <- (x + beta s) / sqrt(1 - beta) + sqrt(beta) z."""
        beta = self.grid_beta(t, t_next)
        x_mean = batch_mul(jax.lax.rsqrt(1.0 - beta), x + batch_mul(beta, score))
        return x_mean + batch_mul(jnp.sqrt(beta), noise)

    def corrector_alpha(self, t):
        """1 - beta_i of the training chain (Song et al. 2021, Alg. 5)."""
        return 1.0 - self.discrete_betas[self.timestep(t)]

    def prior_sampling(self, key, shape):
        return jax.random.normal(key, shape)

    def prior_logp(self, z):
        return _gaussian_logp(z, 1.0)


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 34): the VP drift with a smaller diffusion,
    g(t)^2 = beta(t) (1 - exp(-2 beta_min t - (beta_max - beta_min) t^2)); std(t) = 1 - alpha(t)^2.
    """

    name, label = "subvp", "sub-VP"
    has_discrete_chain = False

    def marginal_std(self, t):
        return -jnp.expm1(2.0 * self.log_alpha(t))

    def sde(self, x, t):
        beta = self.beta(t)
        discount = -jnp.expm1(4.0 * self.log_alpha(t))
        return -0.5 * batch_mul(beta, x), jnp.sqrt(beta * discount)

    def discretize(self, x, t):  # pragma: no cover - no discrete chain exists
        raise self.no_chain_error()

    def grid_step(self, x, t, t_next):
        """No chain exists: f = drift dt, G = g sqrt(dt) (Euler-Maruyama, score_sde's default)."""
        drift, g = self.sde(x, t)
        dt = t - t_next
        return batch_mul(dt, drift), g * jnp.sqrt(dt)

    def ancestral_step(self, x, score, noise, t, t_next):
        raise self.no_chain_error()


SDE = VESDE | VPSDE | SubVPSDE

SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}
SDE_NAMES = tuple(SDES)  # sde.name


def make_sde(name: str, *, sigma_min: float, sigma_max: float, beta_min: float,
             beta_max: float, num_scales: int, eps: float) -> SDE:
    """The SDE named ``name`` ('ve', 'vp', 'subvp'); VE takes the sigmas, VP/sub-VP the betas.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    if name not in SDES:
        raise ValueError(f"unknown sde.name {name!r}; valid names: {list(SDE_NAMES)}")
    if name == "ve":
        return VESDE(sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                     N=int(num_scales), eps=float(eps))
    return SDES[name](beta_min=float(beta_min), beta_max=float(beta_max),
                      N=int(num_scales), eps=float(eps))
