"""Samplers for score and energy models, each one ``lax.scan`` over a precomputed time grid.

Every sampler is a pure function of ``(key, shape)``, the noise process ``sde`` and the model
functions ``score_fn(x, t)`` / ``energy_fn(x, t) -> (B,)`` (params bound, DESIGN.md rule 1),
and returns ``(samples, info)``. The loop over steps is a ``jax.lax.scan`` (nested scans
for the steps per level and the leapfrog steps), so the compiled program, and the compile
time, do not grow with ``num_steps`` (DESIGN.md rule 4). Nothing is jitted here: wrap the
call in ``jax.jit`` with the params as an argument (``train.make_sample_fn`` does).

Methods (``sample(method, ...)``; ``sampling.method`` in the config):

* ``ald``: annealed Langevin dynamics, Song & Ermon 2019 (NCSN), Algorithm 1.
* ``ancestral``: DDPM ancestral sampling (Ho et al. 2020, Alg. 2, written with the score)
  for VP; the SMLD ancestral step of Song et al. 2021, App. F (eq. 47) for VE.
* ``euler_maruyama``: Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6, App. E).
* ``pc``: predictor-corrector (Song et al. 2021, Alg. 2 (VE) / 3 (VP)); the Langevin
  corrector's SNR step uses batch-mean norms as score_sde does (see ``langevin_corrector``).
* ``ode`` / ``ode_adaptive``: the probability-flow ODE (Song et al. 2021, eq. 13) with
  fixed-grid Euler/Heun, or diffrax ``Tsit5`` + ``PIDController`` (rtol/atol).
* ``mala`` / ``hmc``: annealed Metropolis-adjusted Langevin (Roberts & Tweedie 1996) and
  Hamiltonian Monte Carlo (Neal 2011) on the targets ``p_{t_l}(x) ∝ exp(-E(x, t_l))``;
  they need the energy (MH ratios use energy differences), as in Du et al. 2023,
  "Reduce, Reuse, Recycle", Sec. 3.
* ``ula`` / ``uhmc``: the same chains without the accept/reject step (unadjusted).

Time grids. Integrators (``ancestral, euler_maruyama, pc, ode``) use ``num_steps + 1``
times ``sde.time_grid(num_steps + 1)`` from ``T`` down to ``eps`` and take ``num_steps``
steps ``t_i -> t_{i+1}``, evaluating the network at ``t_i``. The discrete chains
(``ancestral``, the ``reverse_diffusion`` predictor) are the SMLD/DDPM chains *on this
grid* (VE: sigma_i = sigma(t_i); VP: 1 - beta_i = alpha(t_i)^2 / alpha(t_{i+1})^2, the
respaced DDPM chain of Nichol & Dhariwal 2021, Sec. 4), so any ``num_steps`` is valid; with
``num_steps = sde.N`` they are the training chains up to O(1/N). Annealed samplers
(``ald, ula, mala, hmc, uhmc``) use ``num_steps`` noise levels ``t_l = sde.time_grid(
num_steps)`` (T ... eps), with sigma_l = ``sde.marginal_std(t_l)``, and ``n_steps_each``
MCMC steps per level.

Step sizes of the annealed samplers (NCSN schedule): the Langevin step at level l is
``h_l = c * step_size * sigma_l^2 / sigma_L^2`` (sigma_L = the last, smallest level), so
``step_size`` is the step at the smallest noise level (NCSN's epsilon). HMC uses the
leapfrog step ``sqrt(2 h_l)``: one leapfrog step of HMC is then MALA with step ``h_l``.
``c = 1`` unless adapted: with ``adapt`` and an energy, ``log c`` follows the Robbins-Monro
recursion ``log c += ADAPT_RATE (mean acceptance - target_acceptance)`` (gain 1) after every
MCMC step, carried across levels in the scan state. The step (and ``c``) is shared by the
whole batch and driven by the batch-mean acceptance probability. Because the step at the
smallest levels must grow relative to sigma_l^2, the adaptation lags and the acceptance
sits slightly above target (8 Gaussians: MALA +0.01 to +0.07, HMC +0.02 to +0.03). With
adaptation the chain is an adaptive MCMC (the kernel depends on past acceptances through one
scalar); ``adapt=False`` gives exactly MH-invariant kernels at each level.

NFE (``info['nfe']``) counts network evaluations, the cost a user pays: one score
evaluation, one energy evaluation, or one energy+gradient evaluation (``jax.value_and_grad``
of the batch sum: a forward and a backward pass, the same cost as one score evaluation of a
conservative model) each count 1, whatever the batch size. The MH samplers cache
``E, grad E`` of the current state, so a MALA step costs 1 and an HMC step ``num_leapfrog``,
plus 1 per level to evaluate the new level's energy at the current state. The final
denoising step costs 1.

Options (``**options`` of ``sample``; each is the config field ``sampling.<name>``;
``OPTIONS[method]`` lists the defaults of each method):

| option | methods | default | meaning |
|---|---|---|---|
| ``denoise`` | all | True | final Tweedie step (x + std^2 s(x, eps)) / alpha at t=eps |
| ``init`` | all | None | starting x (B, ...) instead of ``sde.prior_sampling`` |
| ``n_steps_each`` | ald ula mala hmc uhmc | 5 | MCMC steps per noise level |
| ``n_steps_each`` | pc | 1 | corrector steps per predictor step |
| ``step_size`` | ald ula mala hmc uhmc | 2e-5 | Langevin step at the smallest level |
| ``adapt`` | ula mala hmc uhmc | True | adapt the step (only where an energy is given) |
| ``target_acceptance`` | ula mala | 0.574 | aim of ``adapt`` (Roberts & Rosenthal 1998) |
| ``target_acceptance`` | hmc uhmc | 0.65 | aim of ``adapt`` (Beskos et al. 2013) |
| ``num_leapfrog`` | hmc uhmc | 5 | leapfrog steps per HMC step |
| ``predictor`` | pc | 'reverse_diffusion' | or 'euler_maruyama', 'ancestral', 'none' |
| ``corrector`` | pc | 'langevin' | or 'none' |
| ``snr`` | pc | 0.16 | target signal-to-noise ratio r of the Langevin corrector |
| ``ode_solver`` | ode | 'heun' | or 'euler' |
| ``rtol`` ``atol`` | ode_adaptive | 1e-5 | Tsit5 tolerances (``num_steps``: max steps) |

``info``: ``nfe`` always; ``acceptance`` (mean MH acceptance probability over all steps),
``acceptance_per_level`` (L,) and ``step_size_per_level`` (L,, the Langevin step h at the
level's last step) for ``mala, hmc`` and for ``ula, uhmc`` given an energy (there the
acceptance a Metropolis test *would* have had); ``step_size_per_level`` for ``ald`` and
score-only ``ula``; ``num_steps, num_accepted_steps`` of the solver for ``ode_adaptive``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from ebm_vs_score.sde import VPSDE, SubVPSDE, batch_mul

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
EnergyFn = Callable[[jax.Array, jax.Array], jax.Array]
# potential(x) -> (U (B,), grad U like x, aux): what the MCMC kernels see.
Potential = Callable[[jax.Array], tuple[jax.Array, jax.Array, Any]]
Shape = tuple[int, ...]
Samples = tuple[jax.Array, dict[str, jax.Array]]

ADAPT_RATE = 1.0  # Robbins-Monro gain of log c per MCMC step (batch-mean acceptance)
TSIT5_NFE_PER_STEP = 6  # 7 stages, first-same-as-last: 6 new evaluations per (tried) step
TSIT5_NFE_INIT = 1  # the first stage of the first step (later ones reuse the last stage)


def _sum_sq(x: jax.Array) -> jax.Array:
    """Per-example squared norm, (B,)."""
    return jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)


def _tvec(t: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcasts a scalar time to the batch, (B,)."""
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def _initial(key: jax.Array, shape: tuple[int, ...], sde, init: jax.Array | None) -> jax.Array:
    """``init`` if given, else a sample of the prior p_T."""
    if init is None:
        return sde.prior_sampling(key, shape)
    if tuple(init.shape) != tuple(shape):
        raise ValueError(f"init has shape {init.shape} but the sampler was asked for {shape}")
    return jnp.asarray(init)


def tweedie_denoise(score_fn: ScoreFn, sde, x: jax.Array, t: jax.Array) -> jax.Array:
    """E[x_0 | x_t] = (x + std(t)^2 s(x, t)) / alpha(t) (Tweedie; Efron 2011, eq. 2.8).

    The final noise-removal step of Song & Ermon 2019 / Song et al. 2021 (App. G). ``t`` (B,).
    """
    std = sde.marginal_std(t)
    return batch_mul(1.0 / sde.alpha(t), x + batch_mul(std**2, score_fn(x, t)))


def _finish(score_fn, sde, x, denoise: bool, nfe: int):
    """Optional denoising at t = eps; returns (samples, nfe)."""
    if denoise:
        return tweedie_denoise(score_fn, sde, x, _tvec(sde.eps, x)), nfe + 1
    return x, nfe


# ----------------------------------------------------------------------------------------
# Predictors and correctors (Song et al. 2021, App. E and G). t, t_next have shape (B,).
# ----------------------------------------------------------------------------------------


def grid_discretization(sde, x: jax.Array, t: jax.Array, t_next: jax.Array):
    """Forward chain step ``x_t = x_{t_next} + f + G z`` between two grid times, as (f, G).

    VE: the SMLD chain, f = 0, G^2 = sigma(t)^2 - sigma(t_next)^2 (Song et al. 2021, eq. 45).
    VP: the DDPM chain, f = (sqrt(1-beta) - 1) x, G^2 = beta with 1 - beta =
    alpha(t)^2/alpha(t_next)^2 (eq. 46; respaced as Nichol & Dhariwal 2021). sub-VP has no
    such chain: f = drift dt, G = g sqrt(dt) (Euler-Maruyama, as score_sde's default).
    """
    if isinstance(sde, SubVPSDE):
        drift, g = sde.sde(x, t)
        dt = t - t_next
        return batch_mul(dt, drift), g * jnp.sqrt(dt)
    if isinstance(sde, VPSDE):
        beta = -jnp.expm1(2.0 * (sde.log_alpha(t) - sde.log_alpha(t_next)))
        return batch_mul(jnp.sqrt(1.0 - beta) - 1.0, x), jnp.sqrt(beta)
    sigma, sigma_next = sde.marginal_std(t), sde.marginal_std(t_next)
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - sigma_next**2)


def euler_maruyama_predictor(score_fn, sde, key, x, t, t_next):
    """Reverse SDE dx = [f - g^2 s] dt + g dw, one Euler-Maruyama step (Song et al. eq. 6)."""
    drift, g = sde.sde(x, t)
    dt = t_next - t  # negative
    x_mean = x + batch_mul(dt, drift - batch_mul(g**2, score_fn(x, t)))
    return x_mean + batch_mul(g * jnp.sqrt(-dt), jax.random.normal(key, x.shape, x.dtype))


def reverse_diffusion_predictor(score_fn, sde, key, x, t, t_next):
    """x <- x - f + G^2 s + G z (Song et al. 2021, eq. 47, App. E)."""
    f, g = grid_discretization(sde, x, t, t_next)
    x_mean = x - f + batch_mul(g**2, score_fn(x, t))
    return x_mean + batch_mul(g, jax.random.normal(key, x.shape, x.dtype))


def _check_ancestral(sde) -> None:
    if isinstance(sde, SubVPSDE):
        raise ValueError("ancestral sampling needs a discrete chain, which sub-VP lacks: use "
                         "sampling.method='euler_maruyama', 'pc' (another predictor) or 'ode', "
                         "or sde.name='vp'")


def ancestral_predictor(score_fn, sde, key, x, t, t_next):
    """Ancestral step: DDPM (Ho et al. 2020, Alg. 2) for VP, SMLD (Song et al. 2021 App. F) for VE.

    VP: x <- (x + beta s) / sqrt(1 - beta) + sqrt(beta) z.
    VE: x <- x + (sigma^2 - sigma'^2) s + sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2) z.
    """
    _check_ancestral(sde)
    z = jax.random.normal(key, x.shape, x.dtype)
    s = score_fn(x, t)
    if isinstance(sde, VPSDE):
        beta = -jnp.expm1(2.0 * (sde.log_alpha(t) - sde.log_alpha(t_next)))
        x_mean = batch_mul(jax.lax.rsqrt(1.0 - beta), x + batch_mul(beta, s))
        return x_mean + batch_mul(jnp.sqrt(beta), z)
    var, var_next = sde.marginal_std(t) ** 2, sde.marginal_std(t_next) ** 2
    x_mean = x + batch_mul(var - var_next, s)
    return x_mean + batch_mul(jnp.sqrt(var_next * (var - var_next) / var), z)


def langevin_corrector(score_fn, sde, key, x, t, snr):
    """One Langevin corrector step with the step set by the target SNR (Song et al. Alg. 4/5).

    eps = 2 alpha (snr ||z|| / ||s||)^2 with alpha = 1 - beta_i (VP, sub-VP) or 1 (VE), and
    the norms averaged over the batch as in score_sde (``LangevinCorrector``). A per-example
    ratio is unstable in low dimension: where ||s|| -> 0 (modes, saddles, x ~ 0 under a wide
    prior) the step is unbounded; on 8 Gaussians it raised the MMD^2 to the data 14-fold.
    In high dimension ||s|| and ||z|| concentrate and the two rules agree.
    """
    s = score_fn(x, t)
    z = jax.random.normal(key, x.shape, x.dtype)
    alpha = jnp.ones_like(t)
    if isinstance(sde, VPSDE):
        alpha = 1.0 - sde.discrete_betas[sde.timestep(t)]
    ratio = snr * jnp.mean(jnp.sqrt(_sum_sq(z))) / jnp.mean(jnp.sqrt(_sum_sq(s)))
    step = 2.0 * alpha * ratio**2
    return x + batch_mul(step, s) + batch_mul(jnp.sqrt(2.0 * step), z)


PREDICTORS = {
    "euler_maruyama": euler_maruyama_predictor,
    "reverse_diffusion": reverse_diffusion_predictor,
    "ancestral": ancestral_predictor,
    "none": None,
}
CORRECTORS = {"langevin": langevin_corrector, "none": None}


def predictor_corrector(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, predictor: str = "reverse_diffusion", corrector: str = "langevin",
    snr: float = 0.16, n_steps_each: int = 1, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """PC sampling (Song et al. 2021, Alg. 2/3): at each t_i, ``n_steps_each`` corrector
    steps at t_i, then one predictor step t_i -> t_{i+1} (score_sde's order), then Tweedie.

    NFE = num_steps * (n_steps_each [corrector] + 1 [predictor]) + denoise.
    """
    _choose(predictor, PREDICTORS, "predictor")
    _choose(corrector, CORRECTORS, "corrector")
    pred, corr = PREDICTORS[predictor], CORRECTORS[corrector]
    if pred is None and corr is None:
        raise ValueError("predictor='none' and corrector='none' would not move the samples")
    if pred is ancestral_predictor:
        _check_ancestral(sde)
    k_init, k_run = jax.random.split(key)
    x = _initial(k_init, shape, sde, init)
    ts = sde.time_grid(num_steps + 1)

    def step(x, inp):
        i, t, t_next = inp
        k_corr, k_pred = jax.random.split(jax.random.fold_in(k_run, i))
        t, t_next = _tvec(t, x), _tvec(t_next, x)
        if corr is not None:
            def corr_step(x, j):
                return corr(score_fn, sde, jax.random.fold_in(k_corr, j), x, t, snr), None

            x, _ = jax.lax.scan(corr_step, x, jnp.arange(n_steps_each))
        if pred is not None:
            x = pred(score_fn, sde, k_pred, x, t, t_next)
        return x, None

    x, _ = jax.lax.scan(step, x, (jnp.arange(num_steps), ts[:-1], ts[1:]))
    per_step = (n_steps_each if corr is not None else 0) + (pred is not None)
    x, nfe = _finish(score_fn, sde, x, denoise, num_steps * per_step)
    return x, {"nfe": jnp.asarray(nfe)}


def euler_maruyama(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Reverse-SDE Euler-Maruyama (Song et al. 2021, App. E); NFE = num_steps + denoise."""
    return predictor_corrector(key, shape, sde=sde, score_fn=score_fn, num_steps=num_steps,
                               predictor="euler_maruyama", corrector="none", denoise=denoise,
                               init=init)


def ancestral(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Ancestral sampling, DDPM (VP) / SMLD (VE); NFE = num_steps + denoise. No sub-VP."""
    return predictor_corrector(key, shape, sde=sde, score_fn=score_fn, num_steps=num_steps,
                               predictor="ancestral", corrector="none", denoise=denoise,
                               init=init)


# ----------------------------------------------------------------------------------------
# Probability-flow ODE (Song et al. 2021, eq. 13)
# ----------------------------------------------------------------------------------------


def ode_drift(score_fn: ScoreFn, sde) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Probability-flow drift dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 (Song et al. eq. 13)."""

    def drift(x: jax.Array, t: jax.Array) -> jax.Array:
        f, g = sde.sde(x, t)
        return f - batch_mul(0.5 * g**2, score_fn(x, t))

    return drift


def probability_flow_ode(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, ode_solver: str = "heun", denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Fixed-grid Euler or Heun (Karras et al. 2022, Alg. 1) on the probability-flow ODE.

    Deterministic given the prior sample. NFE = num_steps (Euler) or 2 num_steps (Heun),
    plus denoise.
    """
    solvers = {"euler": 1, "heun": 2}
    _choose(ode_solver, solvers, "ode_solver")
    drift = ode_drift(score_fn, sde)
    x = _initial(key, shape, sde, init)
    ts = sde.time_grid(num_steps + 1)

    def step(x, inp):
        t, t_next = _tvec(inp[0], x), _tvec(inp[1], x)
        dt = t_next - t
        d = drift(x, t)
        if ode_solver == "heun":
            d = 0.5 * (d + drift(x + batch_mul(dt, d), t_next))
        return x + batch_mul(dt, d), None

    x, _ = jax.lax.scan(step, x, (ts[:-1], ts[1:]))
    x, nfe = _finish(score_fn, sde, x, denoise, solvers[ode_solver] * num_steps)
    return x, {"nfe": jnp.asarray(nfe)}


def solve_adaptive(vector_field: Callable[[Any, jax.Array], Any], y0: Any, t0: float,
                   t1: float, *, rtol: float, atol: float, max_steps: int = 4096):
    """Adaptive Tsit5 (diffrax) from t0 to t1 (either direction); returns (y(t1), info).

    ``vector_field(y, t)`` with scalar t. Step sizes come from a ``PIDController`` on the RMS
    error norm of the whole pytree (one step size for the batch, as score_sde's RK45 on the
    flattened batch); the first step is (t1 - t0) / 100. info: ``nfe`` = 6 per tried step + 1
    (see TSIT5_NFE_*), and diffrax's ``num_steps`` (tried), ``num_accepted_steps``.
    """
    term = diffrax.ODETerm(lambda t, y, args: vector_field(y, t))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=t0, t1=t1, dt0=(t1 - t0) / 100, y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    y1 = jax.tree.map(lambda a: a[-1], sol.ys)
    steps = jnp.asarray(sol.stats["num_steps"])
    info = {"nfe": TSIT5_NFE_PER_STEP * steps + TSIT5_NFE_INIT, "num_steps": steps,
            "num_accepted_steps": jnp.asarray(sol.stats["num_accepted_steps"])}
    return y1, info


def probability_flow_ode_adaptive(key, shape, *, sde, score_fn, energy_fn=None,
                                  num_steps: int, rtol: float = 1e-5, atol: float = 1e-5,
                                  denoise: bool = True, init: jax.Array | None = None) -> Samples:
    """Probability-flow ODE from T to eps with adaptive Tsit5 (an RK45-class pair, like the
    RK45 of score_sde), at most ``num_steps`` solver steps. NFE from diffrax's stats."""
    drift = ode_drift(score_fn, sde)
    x = _initial(key, shape, sde, init)
    x, info = solve_adaptive(lambda y, t: drift(y, _tvec(t, y)), x, sde.T, sde.eps,
                             rtol=rtol, atol=atol, max_steps=num_steps)
    if denoise:
        x = tweedie_denoise(score_fn, sde, x, _tvec(sde.eps, x))
        info["nfe"] = info["nfe"] + 1
    return x, info


# ----------------------------------------------------------------------------------------
# Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1)
# ----------------------------------------------------------------------------------------


def _level_steps(sde, ts: jax.Array, step_size: float) -> jax.Array:
    """NCSN step schedule h_l = step_size sigma_l^2 / sigma_L^2, (L,)."""
    sigmas = sde.marginal_std(ts)
    return step_size * (sigmas / sigmas[-1]) ** 2


def _langevin_levels(key, x, score_fn, ts, steps, n_steps_each):
    """x <- x + h_l s(x, t_l) + sqrt(2 h_l) z, ``n_steps_each`` times at each level."""

    def level(x, inp):
        i, t, h = inp
        t = _tvec(t, x)

        def one(x, j):
            z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), j), x.shape)
            return x + h * score_fn(x, t) + jnp.sqrt(2.0 * h) * z, None

        x, _ = jax.lax.scan(one, x, jnp.arange(n_steps_each))
        return x, None

    x, _ = jax.lax.scan(level, x, (jnp.arange(ts.shape[0]), ts, steps))
    return x


def annealed_langevin(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, n_steps_each: int = 5, step_size: float = 2e-5, denoise: bool = True,
    init: jax.Array | None = None,
) -> Samples:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    Levels sigma_l = marginal_std(t_l) over ``num_steps`` grid times (the geometric SMLD
    ladder for VE), alpha_l = step_size sigma_l^2 / sigma_L^2, ``n_steps_each`` (their T)
    steps per level. NFE = num_steps * n_steps_each + denoise.
    """
    k_init, k_run = jax.random.split(key)
    x = _initial(k_init, shape, sde, init)
    ts = sde.time_grid(num_steps)
    steps = _level_steps(sde, ts, step_size)
    x = _langevin_levels(k_run, x, score_fn, ts, steps, n_steps_each)
    x, nfe = _finish(score_fn, sde, x, denoise, num_steps * n_steps_each)
    return x, {"nfe": jnp.asarray(nfe), "step_size_per_level": steps}


# ----------------------------------------------------------------------------------------
# MCMC kernels on a potential U = -log p + const (MALA, HMC; with or without MH)
# ----------------------------------------------------------------------------------------


class MCMCState(NamedTuple):
    """A batch of chains with the cached potential U(x) (B,), grad U(x) and ``aux``."""

    x: jax.Array
    potential: jax.Array
    grad: jax.Array
    aux: Any = ()


def init_state(potential: Potential, x: jax.Array) -> MCMCState:
    """Evaluates the potential at x (1 NFE)."""
    return MCMCState(x, *potential(x))


def _accept(key, state: MCMCState, proposal: MCMCState, log_ratio, metropolis: bool):
    """Per-example MH accept/reject; returns (state, acceptance probability (B,))."""
    prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
    prob = jnp.where(jnp.isnan(prob), 0.0, prob)
    if not metropolis:
        return proposal, prob
    accept = jax.random.uniform(key, prob.shape) < prob
    select = lambda new, old: jnp.where(accept.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    return jax.tree.map(select, proposal, state), prob


def mala_step(key: jax.Array, state: MCMCState, potential: Potential, step: jax.Array, *,
              metropolis: bool = True) -> tuple[MCMCState, jax.Array]:
    """One MALA step (Roberts & Tweedie 1996, eq. 1.3 with the MH correction of Sec. 1).

    Proposal y = x - h grad U(x) + sqrt(2h) z; log q(y|x) = -|y - x + h grad U(x)|^2 / 4h;
    accept with min(1, exp(U(x) - U(y) + log q(x|y) - log q(y|x))). ``metropolis=False``
    accepts always (ULA) and returns the would-be acceptance probability. Cost: 1 NFE.
    """
    k_prop, k_acc = jax.random.split(key)
    z = jax.random.normal(k_prop, state.x.shape, state.x.dtype)
    y = state.x - step * state.grad + jnp.sqrt(2.0 * step) * z
    proposal = init_state(potential, y)
    # x - y + h grad U(y), written without the cancelling difference x - y:
    back = step * (state.grad + proposal.grad) - jnp.sqrt(2.0 * step) * z
    log_ratio = (state.potential - proposal.potential
                 - _sum_sq(back) / (4.0 * step) + 0.5 * _sum_sq(z))
    return _accept(k_acc, state, proposal, log_ratio, metropolis)


def hmc_step(key: jax.Array, state: MCMCState, potential: Potential, step: jax.Array, *,
             num_leapfrog: int, metropolis: bool = True) -> tuple[MCMCState, jax.Array]:
    """One HMC step: fresh N(0, I) momentum, ``num_leapfrog`` leapfrog steps of size ``step``,
    MH test on H = U + |p|^2/2 (Neal 2011, "MCMC using Hamiltonian dynamics", Sec. 5.2).
    ``metropolis=False`` accepts always (unadjusted HMC). Cost: ``num_leapfrog`` NFE.
    """
    k_mom, k_acc = jax.random.split(key)
    p0 = jax.random.normal(k_mom, state.x.shape, state.x.dtype)

    def leapfrog(carry, _):
        s, p = carry  # p is half a kick ahead of s.x
        s = init_state(potential, s.x + step * p)
        return (s, p - step * s.grad), None

    (proposal, p), _ = jax.lax.scan(
        leapfrog, (state, p0 - 0.5 * step * state.grad), None, length=num_leapfrog)
    p = p + 0.5 * step * proposal.grad  # the last full kick becomes a half kick
    log_ratio = state.potential + 0.5 * _sum_sq(p0) - proposal.potential - 0.5 * _sum_sq(p)
    return _accept(k_acc, state, proposal, log_ratio, metropolis)


def energy_and_grad(energy_fn: Callable[[jax.Array], jax.Array], x: jax.Array):
    """(E(x) (B,), grad_x E(x)) by one ``jax.value_and_grad`` of the batch sum (1 NFE)."""
    total = lambda y: (lambda e: (jnp.sum(e), e))(energy_fn(y))
    (_, e), g = jax.value_and_grad(total, has_aux=True)(x)
    return e, g


def _annealed_potential(score_fn, energy_fn, t: jax.Array) -> Potential:
    """U = E(., t) with its gradient; without an energy, U = 0 and grad U = -s (no MH)."""
    if energy_fn is None:
        return lambda x: (jnp.zeros(x.shape[:1], x.dtype), -score_fn(x, t), ())
    return lambda x: (*energy_and_grad(lambda y: energy_fn(y, t), x), ())


def _annealed_mcmc(key, shape, *, sde, score_fn, energy_fn, num_steps, n_steps_each,
                   step_size, adapt, target_acceptance, init, kernel, nfe_per_step):
    """Runs ``kernel`` ``n_steps_each`` times at each level t_l of ``sde.time_grid``.

    ``kernel(key, state, potential, h)`` with the Langevin step h (see module docstring).
    Returns (x, nfe, acceptance per level (L,), last step h per level (L,)).
    """
    k_init, k_run = jax.random.split(key)
    x = _initial(k_init, shape, sde, init)
    ts = sde.time_grid(num_steps)
    base_steps = _level_steps(sde, ts, 1.0)
    adapt = adapt and energy_fn is not None

    def level(carry, inp):
        x, log_c = carry
        i, t, base = inp
        potential = _annealed_potential(score_fn, energy_fn, _tvec(t, x))

        def one(carry, j):
            state, log_c = carry
            h = step_size * jnp.exp(log_c) * base
            key_ij = jax.random.fold_in(jax.random.fold_in(k_run, i), j)
            state, prob = kernel(key_ij, state, potential, h)
            acc = jnp.mean(prob)
            if adapt:
                log_c = log_c + ADAPT_RATE * (acc - target_acceptance)
            return (state, log_c), (acc, h)

        state = init_state(potential, x)
        (state, log_c), (acc, h) = jax.lax.scan(one, (state, log_c), jnp.arange(n_steps_each))
        return (state.x, log_c), (jnp.mean(acc), h[-1])

    carry = (x, jnp.zeros((), x.dtype))
    (x, _), (acc, steps) = jax.lax.scan(level, carry, (jnp.arange(num_steps), ts, base_steps))
    nfe = num_steps * (n_steps_each * nfe_per_step + 1)
    return x, nfe, acc, steps


def _mcmc_sampler(kernel, nfe_per_step, key, shape, *, sde, score_fn, energy_fn, num_steps,
                  n_steps_each, step_size, adapt, target_acceptance, denoise, init):
    """Annealed MCMC + optional denoising; info with acceptances when an energy is given."""
    x, nfe, acc, steps = _annealed_mcmc(
        key, shape, sde=sde, score_fn=score_fn, energy_fn=energy_fn, num_steps=num_steps,
        n_steps_each=n_steps_each, step_size=step_size, adapt=adapt,
        target_acceptance=target_acceptance, init=init, kernel=kernel,
        nfe_per_step=nfe_per_step)
    x, nfe = _finish(score_fn, sde, x, denoise, nfe)
    info = {"nfe": jnp.asarray(nfe), "step_size_per_level": steps}
    if energy_fn is not None:
        info.update(acceptance=jnp.mean(acc), acceptance_per_level=acc)
    return x, info


def annealed_mala(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None,
    num_steps: int, n_steps_each: int = 5, step_size: float = 2e-5, adapt: bool = True,
    target_acceptance: float = 0.574, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Annealed MALA on p_{t_l} ∝ exp(-E(x, t_l)) (Roberts & Tweedie 1996; Du et al. 2023).

    NFE = num_steps (n_steps_each + 1) + denoise (energy+gradient evaluations).
    """
    kernel = functools.partial(mala_step, metropolis=True)
    return _mcmc_sampler(kernel, 1, key, shape, sde=sde, score_fn=score_fn,
                         energy_fn=energy_fn, num_steps=num_steps, n_steps_each=n_steps_each,
                         step_size=step_size, adapt=adapt, target_acceptance=target_acceptance,
                         denoise=denoise, init=init)


def annealed_ula(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, n_steps_each: int = 5, step_size: float = 2e-5, adapt: bool = True,
    target_acceptance: float = 0.574, denoise: bool = True, init: jax.Array | None = None,
) -> Samples:
    """Annealed unadjusted Langevin with MALA's step schedule, no accept/reject.

    With ``energy_fn`` it is MALA minus the MH test (the step adapts to the acceptance MALA
    would have had; NFE as MALA). Score-only it is ``ald`` with the same ``step_size``
    (fixed schedule; NFE = num_steps n_steps_each + denoise).
    """
    if energy_fn is None:
        return annealed_langevin(key, shape, sde=sde, score_fn=score_fn, num_steps=num_steps,
                                 n_steps_each=n_steps_each, step_size=step_size,
                                 denoise=denoise, init=init)
    kernel = functools.partial(mala_step, metropolis=False)
    return _mcmc_sampler(kernel, 1, key, shape, sde=sde, score_fn=score_fn,
                         energy_fn=energy_fn, num_steps=num_steps, n_steps_each=n_steps_each,
                         step_size=step_size, adapt=adapt, target_acceptance=target_acceptance,
                         denoise=denoise, init=init)


def _hmc_kernel(num_leapfrog: int, metropolis: bool):
    """HMC kernel taking the Langevin step h: leapfrog step sqrt(2h) (1 leapfrog = MALA h)."""

    def kernel(key, state, potential, h):
        return hmc_step(key, state, potential, jnp.sqrt(2.0 * h), num_leapfrog=num_leapfrog,
                        metropolis=metropolis)

    return kernel


def annealed_hmc(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None,
    num_steps: int, n_steps_each: int = 5, num_leapfrog: int = 5, step_size: float = 2e-5,
    adapt: bool = True, target_acceptance: float = 0.65, denoise: bool = True,
    init: jax.Array | None = None,
) -> Samples:
    """Annealed HMC on p_{t_l} ∝ exp(-E(x, t_l)) (Neal 2011; Du et al. 2023).

    NFE = num_steps (n_steps_each num_leapfrog + 1) + denoise.
    """
    return _mcmc_sampler(_hmc_kernel(num_leapfrog, True), num_leapfrog, key, shape, sde=sde,
                         score_fn=score_fn, energy_fn=energy_fn, num_steps=num_steps,
                         n_steps_each=n_steps_each, step_size=step_size, adapt=adapt,
                         target_acceptance=target_acceptance, denoise=denoise, init=init)


def annealed_uhmc(
    key: jax.Array, shape: Shape, *, sde, score_fn: ScoreFn, energy_fn: EnergyFn | None = None,
    num_steps: int, n_steps_each: int = 5, num_leapfrog: int = 5, step_size: float = 2e-5,
    adapt: bool = True, target_acceptance: float = 0.65, denoise: bool = True,
    init: jax.Array | None = None,
) -> Samples:
    """Annealed HMC without accept/reject; score-only models use grad U = -s (no adaptation).

    NFE = num_steps (n_steps_each num_leapfrog + 1) + denoise.
    """
    return _mcmc_sampler(_hmc_kernel(num_leapfrog, False), num_leapfrog, key, shape, sde=sde,
                         score_fn=score_fn, energy_fn=energy_fn, num_steps=num_steps,
                         n_steps_each=n_steps_each, step_size=step_size, adapt=adapt,
                         target_acceptance=target_acceptance, denoise=denoise, init=init)


# ----------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------

_SAMPLERS: dict[str, Callable[..., tuple[jax.Array, dict]]] = {
    "ald": annealed_langevin,
    "ancestral": ancestral,
    "euler_maruyama": euler_maruyama,
    "pc": predictor_corrector,
    "ode": probability_flow_ode,
    "ode_adaptive": probability_flow_ode_adaptive,
    "ula": annealed_ula,
    "mala": annealed_mala,
    "hmc": annealed_hmc,
    "uhmc": annealed_uhmc,
}
METHODS = tuple(_SAMPLERS)
MH_METHODS = ("mala", "hmc")
_NOT_OPTIONS = ("key", "shape", "sde", "score_fn", "energy_fn", "num_steps")


def _defaults(fn) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.name not in _NOT_OPTIONS}


OPTIONS: dict[str, dict[str, Any]] = {name: _defaults(fn) for name, fn in _SAMPLERS.items()}


def _choose(value: str, valid, what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid names: {list(valid)}")


def _check_options(method: str, num_steps: int, options: dict[str, Any]) -> None:
    """Unknown option -> TypeError naming the valid ones; out-of-range values -> ValueError."""
    unknown = sorted(set(options) - set(OPTIONS[method]))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for sampling.method={method!r}; valid "
                        f"options: {sorted(OPTIONS[method])}")
    if int(num_steps) < 1:
        raise ValueError(f"num_steps={num_steps} must be a positive integer")
    for name in ("n_steps_each", "num_leapfrog"):
        if name in options and int(options[name]) < 1:
            raise ValueError(f"{name}={options[name]} must be a positive integer")
    for name in ("step_size", "snr", "rtol", "atol"):
        if name in options and not float(options[name]) > 0:
            raise ValueError(f"{name}={options[name]} must be positive")
    if "target_acceptance" in options and not 0 < float(options["target_acceptance"]) < 1:
        raise ValueError(f"target_acceptance={options['target_acceptance']} must lie in (0, 1)")


def sample(method: str, key: jax.Array, shape: tuple[int, ...], *, sde,
           score_fn: ScoreFn, energy_fn: EnergyFn | None = None, num_steps: int,
           **options: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Draws ``shape[0]`` samples with the sampler ``method`` (see the module docstring).

    Args:
      method: one of ``METHODS`` (``sampling.method``).
      key: PRNG key; all randomness is derived from it.
      shape: (B, ...) of the samples.
      sde: ``VESDE``, ``VPSDE`` or ``SubVPSDE``.
      score_fn: ``s(x, t)``, x (B, ...), t (B,), params bound.
      energy_fn: ``E(x, t) -> (B,)`` (energy models only; needed by 'mala' and 'hmc').
      num_steps: grid steps (integrators), noise levels (annealed MCMC), or the maximum
        number of solver steps ('ode_adaptive').
      **options: the method's options (table in the module docstring; ``OPTIONS[method]``).

    Returns:
      (samples (B, ...), info) with ``info['nfe']`` and, for MCMC, acceptance statistics.
    """
    if method not in _SAMPLERS:
        raise ValueError(f"unknown sampling.method {method!r}; valid names: {list(METHODS)}")
    _check_options(method, num_steps, options)
    if method in MH_METHODS and energy_fn is None:
        raise ValueError(
            f"sampling.method={method!r} is Metropolis-Hastings and needs energy differences, "
            "but the model is score-only (energy_fn=None); use model.parameterization="
            "'conservative' or 'resnet_energy', or an unadjusted sampler ('ula', 'ald', 'pc')")
    return _SAMPLERS[method](key, tuple(shape), sde=sde, score_fn=score_fn,
                             energy_fn=energy_fn, num_steps=int(num_steps), **options)


def options_from_config(sampling_config: Any) -> dict[str, Any]:
    """The ``sampling.*`` fields that are options of ``sampling_config.method``.

    A field set to None means "the method's own default" (e.g. ``target_acceptance``).
    """
    method = sampling_config.method
    if method not in OPTIONS:
        raise ValueError(f"unknown sampling.method {method!r}; valid names: {list(METHODS)}")
    fields = sampling_config.to_dict() if hasattr(sampling_config, "to_dict") else dict(
        vars(sampling_config))
    return {k: v for k, v in fields.items() if k in OPTIONS[method] and v is not None}
