"""Diffusion recovery likelihood (DRL): a ladder of EBMs, each trained by recovery likelihood.

Gao, Song, Poole, Wu & Kingma, "Learning Energy-Based Models by Diffusion Recovery
Likelihood", ICLR 2021 (hereafter *Gao et al.*): recovery likelihood (Sec. 3), diffusion
recovery likelihood (Sec. 4), training (Algorithm 1) and progressive sampling (Algorithm 2).
Where the paper leaves a number implicit (which levels, the step-size factor, the loss
weight), this module follows the authors' code, github.com/ruiqigao/recovery_likelihood,
``model.py`` (``get_sigma_schedule``, ``p_sample_langevin``, ``training_losses``).

Diffusion (Gao et al. Sec. 4). Levels t = 0..T, x_0 ~ data (see the schedule below),
    x_{t+1} = a_{t+1} x_t + sigma_{t+1} eps,   a_{t+1} = sqrt(1 - sigma_{t+1}^2),
so x_t = abar_t x_data + sbar_t eps, and x_T ~ N(0, I). Trained level t (0 <= t < T)
models y_t = a_{t+1} x_t with the recovery (conditional) EBM
    log p(y_t | x_{t+1}) = -E(y_t, t) - ||x_{t+1} - y_t||^2 / (2 sigma_{t+1}^2) + const.
The noisiest trained level t = T-1 is an ordinary EBM: y_{T-1} = x_{T-1} and its
conditional has no quadratic (data) term, so its chains start from white noise x_T and
sample the marginal exp(-E(y, T-1)) (authors' code: ``is_recovery[T] = 0``,
``a_s_prev[T] = 1``).

Schedule (``ladder.make_schedule``). From the 1000-step linear schedule of Ho et al. 2020,
beta_i = linspace(1e-4, 0.02, 1000)[i], level t < T is DDPM step i_t = t * (1000 //
(2 (T - 1))) and level T is step 999: for T = 6 (the paper's T6) i = 0, 100, 200, 300,
400, 500, 999, so abar = 1.000, 0.946, 0.810, 0.628, 0.440, 0.279, 0.006. The trained
levels are dense over the first half of the chain, where x_t still carries signal; one
marginal EBM at level T-1 bridges the rest, with x_T ~ N(0, I). a_t is the product of
sqrt(1 - beta_i) over the DDPM steps of segment t; x_0 is the data after one DDPM step
(sbar_0 = 0.01). T = 1 gives steps (0, 999): a single marginal EBM of the data.

Energy and its noise input. ``energy_fn(params, y, t, key=None) -> (B,)`` is the project's
energy interface with ``t`` the integer level (B,); f_theta = -E, and E is in log-density
units: -E(., t) = log p_theta(y_t) + const. `model_fns` builds it from any family of
:mod:`ebm_vs_score.parameterization` (C-ResNet ``resnet_energy``, energy U-Net
``conservative``) by passing a `DRLConditioning` where they take an ``sde``: the network
sees c_in y with c_in = 1 / sqrt(alpha_t^2 sigma_data^2 + sigma_{t+1}^2), alpha_t the
signal scale of y_t, and c_noise = log sigma_{t+1}, and the C-ResNet output is divided by
sigma_{t+1} c_in. The noise scale is the recovery noise sigma_{t+1}, not the std of y_t:
the level-t energy enters only through p(y_t | x_{t+1}), whose scale is sigma_{t+1} (Gao et
al. Sec. 3.3: p(y | x_tilde) ~ N(x_tilde + sigma^2 grad f(x_tilde), sigma^2)), whereas y_0
carries almost no noise (std 0.0095), and the C-ResNet's 1 / std output factor would then
ask the network for the data energy / 100, which a small network fits far worse
(docs/notes/drl.md). (The authors' code
divides a raw network by the squared step size instead, ``log_prob = net / b0``;
``drl.energy_scale='step'`` does the same: E = B + N(c_in y) / s_t^2.)

Langevin (Gao et al. Sec. 4, Algorithms 1-2). K steps of
    y <- y + (s_t^2 / 2) grad_y log p(y | x_{t+1}) + s_t eps,
started at y = x_{t+1}, with s_t^2 = b^2 (sbar_t / sbar_0) sigma_{t+1}^2: the paper's
s_t = b sigma_{t+1} times the authors' level factor ``c_t_square = sigma_cum[t] /
sigma_cum[0]``; b^2 = ``drl.b_squared`` (``mcmc_step_size_b_square = 2e-4``). The level
factor grows to ~96 at t = 5, so b^2 small enough for the top level leaves the low levels'
chains far from mixing on 2-D toys (docs/notes/drl.md). The optional ``drl.step_schedule='sigma'``
drops the factor (s_t = b sigma_{t+1}, as the paper's Sec. 4 writes it); with b^2 = 0.1 every
level mixes on the 2-D toys. With ``drl.metropolis`` each step is a MALA proposal accepted
with the Metropolis-Hastings probability (the authors' code has no correction).

Loss (Algorithm 1). Per example, t ~ U{0..T-1}, (y_t^+, x_{t+1}) from the diffusion,
y_t^- = K Langevin steps from x_{t+1} (stop-gradient), and
    loss = mean_i (sigma_1 / sigma_{t_i+1}) (E(y_i^+, t_i) - E(y_i^-, t_i)),
whose gradient is the negative recovery log-likelihood gradient of each level, weighted by
sigma_1 / sigma_{t+1} (authors' ``loss_scale``).

Functions taking a *bound* energy ``energy_fn(y, t)`` (params closed over, as samplers do):
`conditional_langevin`, `drl_sample`, `long_run_chain`, `drl_nll_by_ais`.
`make_drl_loss` takes the unbound ``energy_fn(params, y, t, key=None)``. The chain settings
come as a `DRLChain` (plain values; ``settings.DRLSettings`` builds it from the config),
the ladder as a ``ladder.DRLSchedule``; the Langevin / MALA step is ``mcmc.mala_step``
on the potential U = -log p(y | x_tilde) with h = s_t^2 / 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score import mcmc
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score.drl.ladder import DRLConditioning, DRLSchedule
from ebm_vs_score.sde import batch_mul, sum_sq

BoundEnergy = Callable[[jax.Array, jax.Array], jax.Array]


class DRLChain(NamedTuple):
    """The Langevin chains of DRL (Gao et al. Algorithms 1-2): K = ``num_steps`` steps of
    s_t^2 = b^2 c_t sigma_{t+1}^2 with b^2 = ``b_squared``, c_t by ``step_schedule``
    ('authors' or 'sigma'), MALA-corrected if ``metropolis``."""

    num_steps: int
    b_squared: float
    metropolis: bool = False
    step_schedule: str = "authors"


ENERGY_SCALES = ("sigma", "step")


def model_fns(parameterization: str, net: Any, schedule: DRLSchedule,
              sigma_data: float, *, energy_base: str = "gaussian",
              energy_scale: str = "sigma", chain: DRLChain | None = None
              ) -> param_lib.ModelFns:
    """Energy (and score) of a DRL model: ``param_lib.get_model_fns`` with levels for times.

    Args:
      parameterization: 'resnet_energy' (C-ResNet) or 'conservative' (energy U-Net); a
        score-only family has no energy to train.
      net: the Flax network (scalar for 'resnet_energy').
      schedule: the DRL levels.
      sigma_data: data std of the preconditioning.
      energy_base: the C-ResNet energy's fixed term (``param_lib.ENERGY_BASES``).
      energy_scale: the factor of the C-ResNet output N. 'sigma': 1 / (sigma_{t+1} c_in),
        log-density units whatever the chain. 'step': 1 / s_t^2, the chain's squared step
        (authors' code, ``log_prob = net / b0``), so a Langevin step's drift is
        grad N / 2 whatever b^2 is: with b^2 = 2e-4, 'sigma' asks N for outputs ~1e4
        times larger before the chain moves at all (module docstring).
      chain: the Langevin settings (needed for 'step').

    Returns:
      ``ModelFns`` whose ``energy(params, y, t, key=None)`` takes the level t (B,).
    """
    output_scale = _output_scale(parameterization, schedule, energy_scale, chain)
    fns = param_lib.get_model_fns(parameterization, net, DRLConditioning(schedule), sigma_data,
                                  energy_base=energy_base, output_scale=output_scale)
    if fns.energy is None:
        raise ValueError(f"model.parameterization={parameterization!r} has no energy for "
                         "training.objective='drl'; use 'resnet_energy' or 'conservative'")
    return fns

def _output_scale(parameterization: str, schedule: DRLSchedule, energy_scale: str,
                  chain: DRLChain | None) -> Callable[[jax.Array], jax.Array] | None:
    """None (the parameterization's own 1 / (sigma c_in)) or the level's 1 / s_t^2."""
    if energy_scale not in ENERGY_SCALES:
        raise ValueError(f"drl.energy_scale={energy_scale!r} is not valid; choose one of "
                         f"{list(ENERGY_SCALES)}")
    if energy_scale == "sigma":
        return None
    if parameterization != "resnet_energy" or chain is None:
        raise ValueError("drl.energy_scale='step' needs model.parameterization="
                         "'resnet_energy' and the chain settings")
    return lambda t: 1.0 / schedule.step_size_sq(t, chain.b_squared, chain.step_schedule)


# ----------------------------------------------------------------------------------------
# Langevin / MALA (the kernel is mcmc.mala_step with h = s^2 / 2)
# ----------------------------------------------------------------------------------------


def run_chain(potential: mcmc.Potential, key: jax.Array, y0: jax.Array, step_sq: jax.Array,
              num_steps: int, metropolis: bool) -> tuple[jax.Array, dict]:
    """``num_steps`` Langevin steps y + (s^2/2) grad log p + s eps (MALA if ``metropolis``)
    from ``y0``, as one ``lax.scan``; ``potential`` is U = -log p, ``step_sq`` s^2 (B,).

    Returns:
      ``(y, info)`` with ``info['acceptance']`` and ``info['accept_prob']`` (mean over
      steps, per example (B,)) and ``info['nfe']`` (gradient evaluations, num_steps + 1).
    """
    def step(state, i):
        state, prob, accepted = mcmc.mala_step(jax.random.fold_in(key, i), state, potential,
                                               0.5 * step_sq, metropolis=metropolis)
        return state, (prob, accepted)

    state, (prob, accepted) = jax.lax.scan(step, mcmc.init_state(potential, y0),
                                           jnp.arange(num_steps))
    info = {"acceptance": jnp.mean(accepted.astype(jnp.float32), axis=0),
            "accept_prob": jnp.mean(prob, axis=0), "nfe": num_steps + 1}
    return state.x, info


def conditional_potential(energy_fn: BoundEnergy, schedule: DRLSchedule, x_tilde: jax.Array,
                          level: jax.Array) -> mcmc.Potential:
    """U(y) = -log p(y | x_tilde) + const = E(y, t) + is_rec_t ||x_tilde - y||^2 / (2 sigma^2).

    Gao et al. Sec. 3.1 / Sec. 4: the recovery EBM of level t given x_{t+1} = x_tilde; at
    the top level (is_recovery = 0) the marginal EBM exp(-E(y, T-1)). With its gradient.
    """
    coef = schedule.is_recovery(level) / (2 * schedule.recovery_sigma(level) ** 2)
    return mcmc.energy_potential(lambda y: energy_fn(y, level) + coef * sum_sq(y - x_tilde))


def conditional_langevin(energy_fn: BoundEnergy, key: jax.Array, x_tilde: jax.Array,
                         level: jax.Array, schedule: DRLSchedule, *, num_steps: int,
                         b_squared: float, metropolis: bool = False,
                         step_schedule: str = "authors") -> tuple[jax.Array, dict]:
    """Samples y_t ~ p(y_t | x_{t+1} = x_tilde) by K steps from y = x_tilde (Algorithm 1).

    Args:
      energy_fn: bound energy (y, t) -> (B,).
      key: PRNG key.
      x_tilde: x_{t+1}, (B, ...).
      level: t, int (B,).
      schedule: the DRL levels.
      num_steps: K.
      b_squared: b^2 (``drl.b_squared``) of s_t^2 = b^2 c_t sigma_{t+1}^2.
      metropolis: MALA correction.
      step_schedule: c_t of the step size, 'authors' or 'sigma' (`DRLSchedule`).

    Returns:
      ``(y, info)`` as :func:`run_chain`.
    """
    potential = conditional_potential(energy_fn, schedule, x_tilde, level)
    step_sq = schedule.step_size_sq(level, b_squared, step_schedule)
    return run_chain(potential, key, x_tilde, step_sq, num_steps, metropolis)

# ----------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------


def make_drl_loss(energy_fn: Callable[..., jax.Array], schedule: DRLSchedule,
                  chain: DRLChain, energy_scale: str = "sigma") -> Callable:
    """The DRL objective (Gao et al. Algorithm 1) as ``loss_fn(params, batch, key)``.

    Args:
      energy_fn: unbound ``energy_fn(params, y, t, key=None) -> (B,)``, t the level (the
        ``energy`` of `model_fns`).
      schedule: the levels (``ladder.make_schedule(num_levels)``).
      chain: the Langevin chains' settings.
      energy_scale: as `model_fns`. With 'step' (E = B + N / s_t^2) each level's term is
        multiplied by s_t^2, so the loss is the authors' ``(sigma_1 / sigma_{t+1}) (N(y^+) -
        N(y^-))`` on the raw network; without it, 1 / s_t^2 (which spans ~3 decades over the
        levels) would hand almost all of the gradient to level 0.

    Returns:
      ``loss_fn(params, batch, key) -> (loss, metrics)``, ``batch['x']`` clean data.
      Metrics: ``energy_pos`` / ``energy_neg`` (mean E of y^+ / y^-), ``acceptance`` (MH
      acceptance; 1 without ``drl.metropolis``), ``accept_prob`` (MH probability, also as a
      diagnostic for the unadjusted chain), ``level`` (mean t), ``displacement`` (RMS
      per-coordinate distance of y^- from x_{t+1}, in units of sigma_{t+1}).
      The Langevin chains run in eval mode (no dropout) with stop-gradient params; the two
      energies of the loss get ``key`` (dropout, if any).
    """

    def loss_fn(params, batch, key):
        x = batch["x"]
        k_level, k_pair, k_chain, k_dropout = jax.random.split(key, 4)
        level = jax.random.randint(k_level, (x.shape[0],), 0, schedule.num_levels)
        y_pos, x_next = schedule.diffuse_pair(k_pair, x, level)
        frozen = jax.lax.stop_gradient(params)
        y_neg, info = conditional_langevin(
            lambda y, t: energy_fn(frozen, y, t), k_chain, x_next, level, schedule,
            num_steps=chain.num_steps, b_squared=chain.b_squared, metropolis=chain.metropolis,
            step_schedule=chain.step_schedule)
        y_neg = jax.lax.stop_gradient(y_neg)
        energy = energy_fn(params, jnp.concatenate([y_pos, y_neg]),
                           jnp.concatenate([level, level]), k_dropout)
        e_pos, e_neg = jnp.split(energy, 2)
        weight = schedule.loss_weight(level)
        if energy_scale == "step":
            weight = weight * schedule.step_size_sq(level, chain.b_squared, chain.step_schedule)
        loss = jnp.mean(weight * (e_pos - e_neg))
        dim = math.prod(x.shape[1:])
        disp = jnp.sqrt(sum_sq(y_neg - x_next) / dim) / schedule.recovery_sigma(level)
        return loss, _loss_metrics(e_pos, e_neg, info, level, disp)

    return loss_fn


def _loss_metrics(e_pos, e_neg, info: dict, level, displacement) -> dict[str, jax.Array]:
    """The DRL loss's metrics, each a mean over the batch (see `make_drl_loss`)."""
    return {"energy_pos": jnp.mean(e_pos), "energy_neg": jnp.mean(e_neg),
            "acceptance": jnp.mean(info["acceptance"]),
            "accept_prob": jnp.mean(info["accept_prob"]),
            "level": jnp.mean(level.astype(jnp.float32)), "displacement": jnp.mean(displacement)}


# ----------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------


def drl_sample(energy_fn: BoundEnergy, key: jax.Array, shape: Sequence[int],
               schedule: DRLSchedule, chain: DRLChain, *,
               keep_levels: bool = False) -> tuple[jax.Array, dict]:
    """Progressive sampling from white noise down the T levels (Gao et al. Algorithm 2).

    x_T ~ N(0, I); for t = T-1..0: y_t = K Langevin steps on p(y_t | x_{t+1}) from x_{t+1},
    x_t = y_t / a'_t. One ``lax.scan`` over levels around the ``lax.scan`` over steps.

    Args:
      energy_fn: bound energy (y, t) -> (B,), t the level.
      key: PRNG key.
      shape: (B, ...) of the samples.
      schedule: the levels.
      chain: the Langevin chains' settings.
      keep_levels: also return every x_t in ``info['levels']`` (T + 1, B, ...), t = 0..T.

    Returns:
      ``(x_0, info)``: ``info['nfe']`` = T (K + 1) energy-gradient evaluations,
      ``info['acceptance']`` (mean), ``info['acceptance_per_level']`` and
      ``info['accept_prob_per_level']`` ((T,), index t).
    """
    k_init, k_chain = jax.random.split(key)
    x_top = jax.random.normal(k_init, tuple(shape))

    def one_level(x, t):
        level = jnp.full((x.shape[0],), t, jnp.int32)
        y, info = conditional_langevin(
            energy_fn, jax.random.fold_in(k_chain, t), x, level, schedule,
            num_steps=chain.num_steps, b_squared=chain.b_squared, metropolis=chain.metropolis,
            step_schedule=chain.step_schedule)
        x = batch_mul(1.0 / schedule.y_scale(level), y)
        return x, (x, jnp.mean(info["acceptance"]), jnp.mean(info["accept_prob"]))

    levels = jnp.arange(schedule.num_levels - 1, -1, -1)
    x0, (xs, acc, prob) = jax.lax.scan(one_level, x_top, levels)
    info = {"nfe": schedule.num_levels * (chain.num_steps + 1), "acceptance": jnp.mean(acc),
            "acceptance_per_level": acc[::-1], "accept_prob_per_level": prob[::-1]}
    if keep_levels:
        info["levels"] = jnp.concatenate([xs[::-1], x_top[None]])
    return x0, info


def _snapshot_slots(num_steps: int,
                    snapshot_steps: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique snapshot steps in [0, num_steps] (default: 11 evenly spaced) and, per
    step 0..num_steps, the index of its snapshot or -1."""
    if snapshot_steps is None:
        snapshot_steps = np.linspace(0, num_steps, 11).round().astype(int)
    steps = np.unique(np.asarray(snapshot_steps, int))
    if steps.size == 0 or steps[0] < 0 or steps[-1] > num_steps:
        raise ValueError(f"snapshot_steps={list(snapshot_steps)} must be non-empty and lie in "
                         f"[0, num_steps={num_steps}]")
    slots = np.full(num_steps + 1, -1, np.int32)
    slots[steps] = np.arange(steps.size)
    return steps, slots


def long_run_chain(energy_fn: BoundEnergy, key: jax.Array, x0: jax.Array, num_steps: int,
                   level: int, schedule: DRLSchedule, chain: DRLChain, *,
                   snapshot_steps: Sequence[int] | None = None,
                   conditional: bool = True) -> tuple[jax.Array, dict]:
    """A long chain of one level's learned EBM, for the "steady long-run MCMC" check.

    Gao et al. Sec. 6 run the conditional chains far beyond K steps: the samples stay
    realistic. Target: p(y_t | x_tilde = x0) if ``conditional`` (the recovery EBM of
    ``level``), else exp(-E(y, level)); from ``x0``, with the level's step size s_t^2.

    Args:
      energy_fn: bound energy (y, t) -> (B,).
      key: PRNG key.
      x0: start (and, if ``conditional``, the conditioning x_{t+1}), (B, ...).
      num_steps: chain length.
      level: t, a Python int in 0..T-1 (0 = the data-level EBM).
      schedule: the levels.
      chain: the chain settings (``b_squared``, ``step_schedule``, ``metropolis``).
      snapshot_steps: steps at which to record y (0 = the start); default 11 evenly spaced.
      conditional: target the conditional (True) or the marginal (False) EBM.

    Returns:
      ``(snapshots, info)``: snapshots (S, B, ...) at ``info['steps']`` (S,);
      ``info['log_prob']`` (S, B) of the target at each snapshot, ``info['acceptance']``
      and ``info['accept_prob']`` (B,) over the chain, ``info['nfe']``.
    """
    steps, slots = _snapshot_slots(num_steps, snapshot_steps)
    t = jnp.full((x0.shape[0],), level, jnp.int32)
    potential = (conditional_potential(energy_fn, schedule, x0, t) if conditional
                 else mcmc.energy_potential(lambda y: energy_fn(y, t)))
    step_sq = schedule.step_size_sq(t, chain.b_squared, chain.step_schedule)
    init = mcmc.init_state(potential, x0)
    buf = jnp.zeros((steps.size,) + x0.shape, x0.dtype).at[0].set(x0)
    lp_buf = jnp.zeros((steps.size, x0.shape[0])).at[0].set(-init.potential)

    def step(carry, i):
        state, buf, lp_buf = carry
        state, prob, accepted = mcmc.mala_step(jax.random.fold_in(key, i), state, potential,
                                               0.5 * step_sq, metropolis=chain.metropolis)
        slot = jnp.asarray(slots)[i]
        at = jnp.maximum(slot, 0)
        buf = buf.at[at].set(jnp.where(slot >= 0, state.x, buf[at]))
        lp_buf = lp_buf.at[at].set(jnp.where(slot >= 0, -state.potential, lp_buf[at]))
        return (state, buf, lp_buf), (prob, accepted)

    (_, buf, lp_buf), (prob, accepted) = jax.lax.scan(step, (init, buf, lp_buf),
                                                      jnp.arange(1, num_steps + 1))
    return buf, {"steps": jnp.asarray(steps), "log_prob": lp_buf, "nfe": num_steps + 1,
                 "acceptance": jnp.mean(accepted.astype(jnp.float32), axis=0),
                 "accept_prob": jnp.mean(prob, axis=0)}


# ----------------------------------------------------------------------------------------
# Likelihood
# ----------------------------------------------------------------------------------------


def drl_nll_by_ais(energy_fn: BoundEnergy, key: jax.Array, x: jax.Array,
                   schedule: DRLSchedule, *, num_chains: int = 256,
                   **ais_options: Any) -> tuple[jax.Array, dict]:
    """NLL (nats) of data ``x`` under the lowest-level EBM, its normalizer by AIS.

    The level-0 EBM is the model of y_0 = a'_0 x_0 (x_0: data after one DDPM step), so
    log p(x) = -E(a'_0 x, 0) - log Z + D log a'_0, with log Z = log int exp(-E(y, 0)) dy
    from ``likelihood.ais_log_normalizer`` (Gao et al. Sec. 6 estimate Z by AIS too).
    This scores the level-0 EBM alone, not the progressive sampler: its recovery
    likelihood fixes each mode's shape but hardly the modes' relative masses when modes are
    further apart than sigma_1 (docs/notes/drl.md).

    Args:
      energy_fn: bound energy (y, t) -> (B,).
      key: PRNG key for AIS.
      x: data, (B, ...).
      schedule: the levels.
      num_chains: AIS chains.
      **ais_options: passed on to ``ais_log_normalizer`` (``num_steps``, ``num_leapfrog``,
        ``step_size``, ``base_std``, ...).

    Returns:
      ``(nll, info)``: nll (B,) in nats in the space x lives in; ``info`` is the AIS info
      with ``log_z`` added.
    """
    from ebm_vs_score import likelihood

    scale = float(schedule._y_scales()[0])

    def level0_energy(y):
        return energy_fn(y, jnp.zeros((y.shape[0],), jnp.int32))

    log_z, info = likelihood.ais_log_normalizer(
        level0_energy, key, tuple(x.shape[1:]), num_chains=num_chains, **ais_options)
    dim = math.prod(x.shape[1:])
    nll = level0_energy(scale * x) + log_z - dim * math.log(scale)
    return nll, dict(info, log_z=log_z)
