"""The DRL level ladder: which noise levels diffusion recovery likelihood trains, and their
scales (Gao, Song, Poole, Wu & Kingma, "Learning Energy-Based Models by Diffusion Recovery
Likelihood", ICLR 2021, Sec. 4 and App. B; the authors' ``get_sigma_schedule``).

It is not an SDE: a finite ladder of T + 1 levels indexed by integers, the "time" a DRL
energy is conditioned on. `DRLConditioning` adapts it to what
:mod:`ebm_vs_score.parameterization` preconditions with (``alpha`` and ``marginal_std``).
See :mod:`ebm_vs_score.drl` for the diffusion, the chains and the loss.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score.sde import batch_mul

DDPM_STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
# drl.step_schedule -> c_t(schedule, t) of the Langevin step s_t^2 = b^2 c_t sigma_{t+1}^2.
STEP_SCHEDULES = {
    "authors": lambda schedule, t: schedule.sigma_bars[t] / schedule.sigma_bars[0],
    "sigma": lambda schedule, t: 1.0,
}
MAX_LEVELS = DDPM_STEPS // 2 + 1


@dataclasses.dataclass(frozen=True)
class DRLSchedule:
    """The T + 1 levels of the DRL diffusion, as tuples of Python floats (hashable).

    Entry t of each tuple belongs to level t = 0..T: ``ddpm_steps`` i_t, ``alphas`` a_t,
    ``sigmas`` sigma_t (a_t^2 + sigma_t^2 = 1; entry 0 is the one DDPM step that makes
    x_0), ``alpha_bars`` abar_t = prod_{s<=t} a_s, ``sigma_bars`` sbar_t.
    Methods take a trained level t (int array, (B,); floats are rounded) in 0..T-1.
    """

    ddpm_steps: tuple[int, ...]
    alphas: tuple[float, ...]
    sigmas: tuple[float, ...]
    alpha_bars: tuple[float, ...]
    sigma_bars: tuple[float, ...]

    @property
    def num_levels(self) -> int:
        """T, the number of trained levels."""
        return len(self.alphas) - 1

    def _take(self, values: Sequence[float], t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.integer):
            t = jnp.round(t)
        index = jnp.clip(t.astype(jnp.int32), 0, len(values) - 1)
        return jnp.asarray(values, jnp.float32)[index]

    def _y_scales(self) -> tuple[float, ...]:
        return self.alphas[1:-1] + (1.0,)

    def y_scale(self, t: jax.Array) -> jax.Array:
        """a'_t: y_t = a'_t x_t, with a'_t = a_{t+1} and a'_{T-1} = 1."""
        return self._take(self._y_scales(), t)

    def recovery_sigma(self, t: jax.Array) -> jax.Array:
        """sigma_{t+1}, the noise of the step x_t -> x_{t+1}."""
        return self._take(self.sigmas[1:], t)

    def is_recovery(self, t: jax.Array) -> jax.Array:
        """1.0 where level t has the quadratic data term, 0.0 at the top level T-1."""
        return self._take((1.0,) * (self.num_levels - 1) + (0.0,), t)

    def signal_scale(self, t: jax.Array) -> jax.Array:
        """alpha of y_t = alpha x_data + std eps: a'_t abar_t."""
        scales = tuple(s * a for s, a in zip(self._y_scales(), self.alpha_bars, strict=False))
        return self._take(scales, t)

    def noise_std(self, t: jax.Array) -> jax.Array:
        """std of y_t = alpha x_data + std eps: a'_t sbar_t."""
        stds = tuple(s * b for s, b in zip(self._y_scales(), self.sigma_bars, strict=False))
        return self._take(stds, t)

    def loss_weight(self, t: jax.Array) -> jax.Array:
        """sigma_1 / sigma_{t+1} (authors' ``loss_scale``)."""
        return self._take(tuple(self.sigmas[1] / s for s in self.sigmas[1:]), t)

    def step_size_sq(self, t: jax.Array, b_squared: float,
                     step_schedule: str = "authors") -> jax.Array:
        """Langevin s_t^2 = b^2 c_t sigma_{t+1}^2, with b^2 = ``b_squared``.

        ``step_schedule`` picks c_t: 'authors' (default) c_t = sbar_t / sbar_0, the authors'
        ``c_t_square``; 'sigma' c_t = 1, the paper's s_t = b sigma_{t+1} (Sec. 4).
        """
        if step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"drl.step_schedule={step_schedule!r} is not valid; choose one of "
                             f"{list(STEP_SCHEDULES)}")
        factor = STEP_SCHEDULES[step_schedule]
        sq = tuple(b_squared * factor(self, k) * self.sigmas[k + 1] ** 2
                   for k in range(self.num_levels))
        return self._take(sq, t)

    def diffuse_pair(self, key: jax.Array, x_data: jax.Array,
                     t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(y_t, x_{t+1}) for clean data, the training pair of Algorithm 1."""
        k_t, k_next = jax.random.split(key)
        x_t = batch_mul(self._take(self.alpha_bars, t), x_data) + batch_mul(
            self._take(self.sigma_bars, t), jax.random.normal(k_t, x_data.shape))
        x_next = batch_mul(self._take(self.alphas[1:], t), x_t) + batch_mul(
            self.recovery_sigma(t), jax.random.normal(k_next, x_data.shape))
        return batch_mul(self.y_scale(t), x_t), x_next


@dataclasses.dataclass(frozen=True)
class DRLConditioning:
    """The ``sde`` that :mod:`ebm_vs_score.parameterization` preconditions a level with.

    ``alpha(t)`` is the signal scale of y_t and ``marginal_std(t)`` the recovery noise
    sigma_{t+1} (module docstring: why not the std of y_t).
    """

    schedule: DRLSchedule

    def alpha(self, t: jax.Array) -> jax.Array:
        return self.schedule.signal_scale(t)

    def marginal_std(self, t: jax.Array) -> jax.Array:
        return self.schedule.recovery_sigma(t)

def ddpm_steps(num_levels: int, num_ddpm_steps: int = DDPM_STEPS) -> tuple[int, ...]:
    """DDPM step of each level 0..T: t * (N // (2 (T - 1))) for t < T, then N - 1."""
    if num_levels == 1:
        return (0, num_ddpm_steps - 1)
    spacing = num_ddpm_steps // (2 * (num_levels - 1))
    if spacing < 1:
        raise ValueError(f"drl.num_levels={num_levels} is too many for a {num_ddpm_steps}-step "
                         f"schedule; use at most {num_ddpm_steps // 2 + 1} levels")
    return tuple(t * spacing for t in range(num_levels)) + (num_ddpm_steps - 1,)


@functools.cache
def make_schedule(num_levels: int, *, num_ddpm_steps: int = DDPM_STEPS,
                  beta_start: float = BETA_START, beta_end: float = BETA_END) -> DRLSchedule:
    """The T = ``num_levels`` DRL levels selected from a linear-beta DDPM chain.

    Gao et al. Sec. 4 and App. B, as the authors' ``get_sigma_schedule`` computes it: level
    t < T is DDPM step t * (N // (2 (T - 1))), level T is step N - 1 (module docstring),
    and a_t is the product of sqrt(1 - beta) over the steps of segment t.
    """
    steps = ddpm_steps(num_levels, num_ddpm_steps)
    log_sqrt_alpha = 0.5 * np.log1p(-np.linspace(beta_start, beta_end, num_ddpm_steps))
    cum = np.concatenate([[0.0], np.cumsum(log_sqrt_alpha)])  # cum[i] = sum_{j < i}
    ends = np.asarray(steps) + 1
    starts = np.concatenate([[0], ends[:-1]])
    alphas = np.exp(cum[ends] - cum[starts])
    alpha_bars = np.exp(cum[ends])
    as_tuple = lambda v: tuple(float(e) for e in v)
    return DRLSchedule(ddpm_steps=steps, alphas=as_tuple(alphas),
                       sigmas=as_tuple(np.sqrt(-np.expm1(2 * np.log(alphas)))),
                       alpha_bars=as_tuple(alpha_bars),
                       sigma_bars=as_tuple(np.sqrt(-np.expm1(2 * np.log(alpha_bars)))))
