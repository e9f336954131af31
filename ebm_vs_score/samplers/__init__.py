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
* ``gd``, ``nag``, ``langevin``, ``langevin_mh``: samplers of time-invariant models
  (Equilibrium Matching, Energy Matching; ``sde`` may be None): gradient descent,
  Nesterov with adaptive stops, and Langevin with a temperature schedule (``descent``).

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

Layout: ``common`` (types, start, Tweedie), ``sde_solvers`` (predictors, corrector, PC,
Euler-Maruyama, ancestral), ``ode`` (probability flow), ``annealed`` (ald and the MCMC
samplers on the kernels of :mod:`ebm_vs_score.mcmc`), ``descent`` (time-invariant models;
its options and info are in its docstring); this module dispatches by name.

Options (``**options`` of ``sample``; each is the config field ``sampling.<name>``;
``OPTIONS[method]`` lists the defaults of each method, read from the signatures):

| option | methods | default | meaning |
|---|---|---|---|
| ``denoise`` | all | True | final Tweedie step (x + std^2 s(x, eps)) / alpha at t=eps |
| ``init`` | all | None | starting x (B, ...) instead of ``sde.prior_sampling`` |
| ``n_steps_each`` | ald ula mala hmc uhmc | 5 | MCMC steps per noise level |
| ``n_steps_each`` | pc | 1 | corrector steps per predictor step |
| ``step_size`` | ald ula mala hmc uhmc | 2e-5 | Langevin step at the smallest level |
| ``adapt`` | mala hmc | True | adapt the step (only where an energy is given) |
| ``adapt`` | ula uhmc | False | True is refused: no MH test keeps the adapted step stable |
| ``target_acceptance`` | ula mala | 0.574 | aim of ``adapt`` (Roberts & Rosenthal 1998) |
| ``target_acceptance`` | hmc uhmc | 0.65 | aim of ``adapt`` (Beskos et al. 2013) |
| ``num_leapfrog`` | hmc uhmc | 5 | leapfrog steps per HMC step |
| ``predictor`` | pc | 'reverse_diffusion' | or 'euler_maruyama', 'ancestral', 'none' |
| ``corrector`` | pc | 'langevin' | or 'none' |
| ``snr`` | pc | 0.16 | target signal-to-noise ratio r of the Langevin corrector |
| ``ode_solver`` | ode | 'heun' | or 'euler' |
| ``rtol`` ``atol`` | ode_adaptive | 1e-5 | Tsit5 tolerances (``num_steps``: max steps) |
| ``step_size`` | gd nag langevin langevin_mh | 0.003 0.0017 0.01 | eta of descent; dt of Langevin |
| ``mu`` | nag | 0.3 | Nesterov momentum (EqM's NAG-GD) |
| ``nag_form`` | nag | 'nesterov' | or 'eqm' (the EqM code's recurrence) |
| ``tol`` | gd nag | 0 | adaptive stop at ||f|| < tol (0: off) |
| ``eps_max`` ``time_cutoff`` ``t_start`` | langevin langevin_mh | 0.01 0.8 0 | eps(t) schedule |

``info``: ``nfe`` always; ``acceptance`` (mean MH acceptance probability over all steps),
``acceptance_per_level`` (L,) and ``step_size_per_level`` (L,, the Langevin step h at the
level's last step) for ``mala, hmc`` and for ``ula, uhmc`` given an energy (there the
acceptance a Metropolis test *would* have had); ``step_size_per_level`` for ``ald`` and
score-only ``ula``; ``num_steps, num_accepted_steps`` of the solver for ``ode_adaptive``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax

from ebm_vs_score.samplers.annealed import (
    annealed_hmc,
    annealed_langevin,
    annealed_mala,
    annealed_uhmc,
    annealed_ula,
)
from ebm_vs_score.samplers.common import EnergyFn, ScoreFn, choose, tweedie_denoise
from ebm_vs_score.samplers.descent import (
    NAG_FORMS,
    descend_with_snapshots,
    gradient_descent,
    langevin,
    langevin_mh,
    nesterov,
)
from ebm_vs_score.samplers.ode import (
    ODE_SOLVERS,
    ode_drift,
    probability_flow_ode,
    probability_flow_ode_adaptive,
    solve_adaptive,
)
from ebm_vs_score.samplers.sde_solvers import (
    CORRECTORS,
    PREDICTORS,
    ancestral,
    euler_maruyama,
    predictor_corrector,
)

__all__ = ["CHOICES", "METHODS", "MH_METHODS", "NAG_FORMS", "OPTIONS", "TIME_INVARIANT_METHODS",
           "SNAPSHOT_METHODS", "UNADJUSTED_METHODS", "EnergyFn", "ScoreFn", "check_time_invariance",
           "ode_drift", "sample", "sample_snapshots", "solve_adaptive", "tweedie_denoise"]

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
    # Time-invariant models (EqM, Energy Matching): samplers/descent.py
    "gd": gradient_descent,
    "nag": nesterov,
    "langevin": langevin,
    "langevin_mh": langevin_mh,
}
METHODS = tuple(_SAMPLERS)  # sampling.method
MH_METHODS = ("mala", "hmc", "langevin_mh")  # need energy differences for the MH ratio
# Samplers of time-invariant fields f(x) (no noise levels, no SDE); the others need both.
TIME_INVARIANT_METHODS = ("gd", "nag", "langevin", "langevin_mh")
_NOT_OPTIONS = ("key", "shape", "sde", "score_fn", "energy_fn", "num_steps")


def _defaults(fn) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.name not in _NOT_OPTIONS}


OPTIONS: dict[str, dict[str, Any]] = {name: _defaults(fn) for name, fn in _SAMPLERS.items()}
# Options that name a choice, with the tables the samplers dispatch on (``sampling.<name>``).
CHOICES: dict[str, dict[str, Any]] = {"predictor": PREDICTORS, "corrector": CORRECTORS,
                                      "ode_solver": ODE_SOLVERS,
                                      "nag_form": dict.fromkeys(NAG_FORMS)}


def check_options(method: str, num_steps: int, options: dict[str, Any]) -> None:
    """Unknown option -> TypeError naming the valid ones; out-of-range values -> ValueError."""
    choose(method, _SAMPLERS, "sampling.method")
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
    if method in UNADJUSTED_METHODS and options.get("adapt"):
        raise ValueError(
            f"adapt=True is refused for sampling.method={method!r}: tuning an unadjusted "
            "chain's step to an acceptance rate that no Metropolis test enforces drives it to "
            "the integrator's stability limit, where chains blow up; use 'mala' or 'hmc' to "
            "adapt the step, or set sampling.adapt=False")

    _check_descent_options(options)


def _check_descent_options(options: dict[str, Any]) -> None:
    """Ranges of the time-invariant samplers' options (samplers/descent.py)."""
    bounds = {"mu": (0.0, 1.0, "[0, 1)"), "time_cutoff": (0.0, 1.0, "[0, 1)")}
    for name, (lo, hi, text) in bounds.items():
        if name in options and not lo <= float(options[name]) < hi:
            raise ValueError(f"{name}={options[name]} must lie in {text}")
    for name in ("tol", "eps_max", "t_start"):
        if name in options and not float(options[name]) >= 0:
            raise ValueError(f"{name}={options[name]} must be >= 0")
    if "nag_form" in options and options["nag_form"] not in NAG_FORMS:
        raise ValueError(f"nag_form={options['nag_form']!r} is not valid; choose one of "
                         f"{list(NAG_FORMS)}")


# Chains without a Metropolis test: their step follows the noise schedule, never adapted.
UNADJUSTED_METHODS = ("ula", "uhmc")


def check_energy(method: str, has_energy: bool) -> None:
    """The Metropolis-needs-an-energy rule, written once (settings.py calls it too)."""
    if method in TIME_INVARIANT_METHODS and method in MH_METHODS and not has_energy:
        raise ValueError(
            f"sampling.method={method!r} is Metropolis-Hastings and needs energy differences, "
            "but the implicit EqM field f(x) has no energy; sample it with 'gd', 'nag' or "
            "'langevin', or train an energy (configs/*_eqm_energy.py)")
    if method in MH_METHODS and not has_energy:
        raise ValueError(
            f"sampling.method={method!r} is Metropolis-Hastings and needs energy differences, "
            "but the model is score-only (energy_fn=None); use model.parameterization="
            "'conservative' or 'resnet_energy', or an unadjusted sampler ('ula', 'ald', 'pc')")


def check_time_invariance(method: str, time_invariant: bool, has_energy: bool = True) -> None:
    """Time-invariant models take the time-invariant samplers, and only those (the MH one
    only with an energy)."""
    if time_invariant and method not in TIME_INVARIANT_METHODS:
        valid = [m for m in TIME_INVARIANT_METHODS if has_energy or m not in MH_METHODS]
        raise ValueError(
            f"sampling.method={method!r} runs over the noise levels of a time-conditional "
            f"model, but this model is time-invariant (EqM / Energy Matching); use one of "
            f"{valid}")
    if not time_invariant and method in TIME_INVARIANT_METHODS:
        raise ValueError(
            f"sampling.method={method!r} descends a time-invariant field, but this model is "
            f"conditioned on the noise level; use one of "
            f"{[m for m in METHODS if m not in TIME_INVARIANT_METHODS]}")


def _check_score_fn(score_fn: ScoreFn, shape: tuple[int, ...]) -> None:
    """score_fn must map (x, t) to an array shaped like x (checked by ``jax.eval_shape``)."""
    x = jax.ShapeDtypeStruct(tuple(shape), jax.numpy.float32)
    t = jax.ShapeDtypeStruct((shape[0],), jax.numpy.float32)
    out = jax.eval_shape(score_fn, x, t)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"score_fn maps x of shape {tuple(shape)} to shape {tuple(out.shape)}; "
                         "it must return the score, an array shaped like x")


def sample(method: str, key: jax.Array, shape: tuple[int, ...], *, sde,
           score_fn: ScoreFn, energy_fn: EnergyFn | None = None, num_steps: int,
           **options: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Draws ``shape[0]`` samples with the sampler ``method`` (see the module docstring).

    Args:
      method: one of ``METHODS`` (``sampling.method``).
      key: PRNG key; all randomness is derived from it.
      shape: (B, ...) of the samples.
      sde: ``VESDE``, ``VPSDE`` or ``SubVPSDE`` (None for ``TIME_INVARIANT_METHODS``).
      score_fn: ``s(x, t)``, x (B, ...), t (B,), params bound.
      energy_fn: ``E(x, t) -> (B,)`` (energy models only; needed by 'mala' and 'hmc').
      num_steps: grid steps (integrators), noise levels (annealed MCMC), the maximum
        number of solver steps ('ode_adaptive'), or the (maximum) number of steps of the
        time-invariant samplers.
      **options: the method's options (table in the module docstring; ``OPTIONS[method]``).

    Returns:
      (samples (B, ...), info) with ``info['nfe']`` and, for MCMC, acceptance statistics.

    Raises:
      ValueError: unknown method, bad option values, a MH method without ``energy_fn``, or a
        ``score_fn`` whose output is not shaped like x. TypeError: unknown option names.
    """
    check_options(method, num_steps, options)
    check_energy(method, energy_fn is not None)
    check_time_invariance(method, sde is None, energy_fn is not None)
    _check_score_fn(score_fn, shape)
    return _SAMPLERS[method](key, tuple(shape), sde=sde, score_fn=score_fn,
                             energy_fn=energy_fn, num_steps=int(num_steps), **options)


# Fixed-step samplers whose shorter chains are prefixes of the longest (``sample_snapshots``).
SNAPSHOT_METHODS = ("gd", "nag")


def sample_snapshots(method: str, key: jax.Array, shape: tuple[int, ...], *,
                     score_fn: ScoreFn, checkpoints, **options: Any
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The samples of ``method`` ('gd' or 'nag', ``tol`` = 0) after each number of steps in
    ``checkpoints``, from one chain per example (``descent.descend_with_snapshots``): row i
    equals ``sample(method, key, shape, num_steps=sorted(checkpoints)[i], ...)``.

    Returns (samples (C, B, ...), info with a leading axis C). ValueError: another method,
    ``tol`` > 0 (an adaptive stop is not a prefix) or bad options, as :func:`sample`.
    """
    if method not in SNAPSHOT_METHODS:
        raise ValueError(f"sampling.method={method!r} has no step-count snapshots; use one of "
                         f"{list(SNAPSHOT_METHODS)}")
    if not checkpoints or min(int(c) for c in checkpoints) < 1:
        raise ValueError(f"checkpoints={list(checkpoints)} must be positive step counts")
    check_options(method, max(int(c) for c in checkpoints), options)
    if float(options.pop("tol", 0.0)) > 0:
        raise ValueError("snapshots need tol=0: with an adaptive stop a shorter chain is not a "
                         "prefix of the longest")
    _check_score_fn(score_fn, shape)
    fixed = {**OPTIONS[method], **options}
    return descend_with_snapshots(key, tuple(shape), score_fn, checkpoints=checkpoints,
                                  step_size=float(fixed["step_size"]),
                                  mu=float(fixed.get("mu", 0.0)),
                                  nag_form=fixed.get("nag_form"), init=fixed.get("init"))
