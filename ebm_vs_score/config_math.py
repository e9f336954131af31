"""Readers of the math sections of an experiment config: ``sde.*``, the objective's
``training.*``, ``sampling.*``, ``drl.*`` and the time-invariant models' ``eqm.*`` /
``energy_matching.*`` (part of the one crossing, :func:`ebm_vs_score.settings.from_config`).

Each reader checks what it reads and returns a frozen section of
:mod:`ebm_vs_score.settings`. Every refusal is a :class:`ConfigError` with one sentence
naming the field, the bad value and the valid choices. Valid names are imported from the
module that owns them (SDE names from ``sde``, samplers from ``samplers``, objectives from
``losses``, parameterizations from ``parameterization``), never restated here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ebm_vs_score import energy_matching as em_lib
from ebm_vs_score import eqm, losses, samplers
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import sde as sde_lib
from ebm_vs_score.data import TOY_NAMES
from ebm_vs_score.drl import ENERGY_SCALES
from ebm_vs_score.drl import ladder as drl_ladder
from ebm_vs_score.errors import ConfigError
from ebm_vs_score.settings import (
    DRLSettings,
    LossSettings,
    SamplingSettings,
    SDESettings,
    TimeInvariantSettings,
)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def choice(value, valid, field: str) -> None:
    require(value in valid, f"{field}={value!r} is not valid; choose one of {list(valid)}")


def positive(config, fields) -> None:
    for path in fields:
        section, name = path.split(".")
        value = config[section][name]
        require(value > 0, f"{path}={value!r} must be positive")


def int_tuple(value, field: str, *, allow_empty: bool = False) -> None:
    """A tuple of positive integers (``model.hidden=(128,128)``), one sentence otherwise."""
    ok = (isinstance(value, tuple | list) and (allow_empty or len(value) > 0)
          and all(is_int(v) and v > 0 for v in value))
    example = "(128,128)" if field == "model.hidden" else "(1,2)"
    require(ok, f"{field}={value!r} must be a tuple of positive integers, e.g. "
            f"--config.{field}={'()' if allow_empty else example}")


def int_at_least(config, path: str, low: int) -> None:
    section, name = path.split(".")
    value = config[section][name]
    require(is_int(value) and value >= low, f"{path}={value!r} must be an integer >= {low}")


def as_config_error(check, *args) -> None:
    """Runs a math module's plain-argument check, reporting its ValueError as ConfigError."""
    try:
        check(*args)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def is_toy(config) -> bool:
    return config.data.dataset in TOY_NAMES


def example_shape(config) -> tuple[int, ...]:
    """Shape of one example: (D,) for toy data, (H, W, C) for images."""
    if is_toy(config):
        return (int(config.data.toy_dim),)
    size = int(config.data.image_size)
    return (size, size, int(config.data.num_channels))


def data_dim(config) -> int:
    """Number of dimensions D of one example."""
    return math.prod(example_shape(config))


def is_time_invariant(config) -> bool:
    """Whether the model is time-invariant (EqM, EqM-E, Energy Matching)."""
    return config.training.objective in losses.TIME_INVARIANT_OBJECTIVES


def has_energy(config) -> bool:
    """Whether the parameterization yields an energy (every family but 'unconstrained')."""
    return config.model.parameterization != "unconstrained"


def sde_settings(config) -> SDESettings:
    """``sde.*``, checked: a known name, positive scales, min < max, eps in (0, 1)."""
    sde = config.sde
    choice(sde.name, sde_lib.SDE_NAMES, "sde.name")
    positive(config, ["sde.num_scales", "sde.sigma_min", "sde.beta_min"])
    require(sde.sigma_min < sde.sigma_max,
            f"sde.sigma_min={sde.sigma_min} must be below sde.sigma_max={sde.sigma_max}")
    require(sde.beta_min < sde.beta_max,
            f"sde.beta_min={sde.beta_min} must be below sde.beta_max={sde.beta_max}")
    require(0 < sde.eps < 1, f"sde.eps={sde.eps} must lie in (0, 1)")
    return SDESettings(str(sde.name), float(sde.sigma_min), float(sde.sigma_max),
                       float(sde.beta_min), float(sde.beta_max), int(sde.num_scales),
                       float(sde.eps))


def _read_loss(training) -> LossSettings:
    return LossSettings(
        objective=str(training.objective), dsm_variant=str(training.dsm_variant),
        likelihood_weighting=bool(training.likelihood_weighting),
        reduce_mean=bool(training.reduce_mean), qc_weight=float(training.qc_weight),
        qc_probes=int(training.qc_probes), qc_fraction=float(training.qc_fraction),
        qc_every=training.qc_every, ssm_projection=str(training.ssm_projection),
        ssm_num_projections=int(training.ssm_num_projections),
        ism_max_dim=int(training.ism_max_dim))


def loss_settings(config) -> LossSettings:
    """``training.*`` of the objective, checked against the model, the SDE and the data.

    Objective and DSM variant names, L_QC settings (and no L_QC on a conservative model),
    SSM projections, SMLD only on VE and DDPM only on VP, likelihood weighting only with
    continuous-time objectives, and ISM only up to ``training.ism_max_dim`` dimensions.
    """
    s = _read_loss(config.training)
    choice(s.objective, losses.OBJECTIVES, "training.objective")
    as_config_error(losses.check_qc, s.qc_weight, s.qc_probes, s.qc_fraction, s.qc_every)
    s = dataclasses.replace(s, qc_every=int(s.qc_every))
    conservative = has_energy(config)
    require(s.qc_weight == 0 or s.objective not in losses.TIME_INVARIANT_OBJECTIVES,
            f"training.qc_weight={s.qc_weight} regularizes the score-matching objectives, not "
            f"training.objective={s.objective!r}; set training.qc_weight=0")
    require(s.qc_weight == 0 or not conservative,
            f"training.qc_weight > 0 needs model.parameterization='unconstrained': the score of "
            f"a conservative model is a gradient field whose Asym is identically 0, so set "
            f"training.qc_weight=0 (got {s.qc_weight}) or use the unconstrained parameterization")
    if s.objective in ("ssm", "ssm_vr"):
        as_config_error(losses.check_ssm, s.ssm_projection, s.ssm_num_projections)
    if s.objective == "ism":
        as_config_error(losses.check_ism_dim, data_dim(config), s.ism_max_dim)
    if s.objective == "dsm":
        choice(s.dsm_variant, losses.DSM_VARIANTS, "training.dsm_variant")
        as_config_error(losses.check_sde_for_variant, s.dsm_variant, config.sde.name)
        require(s.dsm_variant == "continuous" or not s.likelihood_weighting,
                f"training.likelihood_weighting=True applies to continuous-time objectives, not "
                f"training.dsm_variant={s.dsm_variant!r}; set it to False or use "
                "dsm_variant='continuous'")
    return s


def sampling_settings(config) -> SamplingSettings:
    """``sampling.*``: a known method, valid values, and an energy for MH methods.

    The options are the ``sampling.*`` fields that are options of the method
    (``samplers.OPTIONS``); a field set to None means the method's own default.
    """
    sampling = config.sampling
    choice(sampling.method, samplers.METHODS, "sampling.method")
    for name, table in samplers.CHOICES.items():  # checked whatever the method: the
        if sampling.get(name) is not None:  # method may change on resume or at eval
            choice(sampling[name], tuple(table), f"sampling.{name}")
    int_at_least(config, "sampling.num_steps", 1)
    int_at_least(config, "sampling.num_samples", 1)
    positive(config, ["sampling.step_size"])
    target = sampling.target_acceptance
    require(target is None or 0 < target < 1,
            f"sampling.target_acceptance={target} must lie in (0, 1), or be None for the "
            "method's default")
    energy = has_energy(config)
    as_config_error(samplers.check_time_invariance, sampling.method, is_time_invariant(config),
                   energy)
    as_config_error(samplers.check_energy, sampling.method, energy)
    fields = sampling.to_dict() if hasattr(sampling, "to_dict") else dict(vars(sampling))
    options = tuple((k, v) for k, v in fields.items()
                    if k in samplers.OPTIONS[sampling.method] and v is not None)
    as_config_error(samplers.check_options, sampling.method, sampling.num_steps,
                    dict(options))
    return SamplingSettings(str(sampling.method), int(sampling.num_steps),
                            int(sampling.num_samples), bool(sampling.use_ema),
                            float(sampling.step_size), options)


def is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def drl_settings(drl_config: Any) -> DRLSettings:
    """``drl.*`` checked: levels in 1..501, K >= 1, b^2 > 0, metropolis a bool, and a known
    ``step_schedule``; one sentence naming the field and the fix otherwise."""
    levels, steps = drl_config.num_levels, drl_config.num_steps
    size, mh = drl_config.b_squared, drl_config.metropolis
    max_levels = drl_ladder.MAX_LEVELS
    require(is_int(levels) and 1 <= levels <= max_levels,
            f"drl.num_levels={levels!r} must be an integer from 1 to {max_levels}; the paper "
            "uses 6 (--config.drl.num_levels=6)")
    require(is_int(steps) and steps >= 1,
            f"drl.num_steps={steps!r} must be an integer >= 1 (Langevin steps per level); "
            "the paper uses 30 (--config.drl.num_steps=30)")
    require(not isinstance(size, bool) and isinstance(size, int | float)
            and math.isfinite(size) and size > 0,
            f"drl.b_squared={size!r} must be a positive number (b^2 of the step s_t^2 = b^2 "
            "c_t sigma_{t+1}^2); the paper uses 2e-4 (--config.drl.b_squared=2e-4)")
    require(isinstance(mh, bool | np.bool_),
            f"drl.metropolis={mh!r} must be True or False; set --config.drl.metropolis=False "
            "(the paper) or True (MALA correction)")
    step_schedule = drl_config.step_schedule
    require(step_schedule in drl_ladder.STEP_SCHEDULES,
            f"drl.step_schedule={step_schedule!r} is not valid; choose one of "
            f"{list(drl_ladder.STEP_SCHEDULES)} (--config.drl.step_schedule=authors)")
    energy_scale = getattr(drl_config, "energy_scale", "sigma")
    require(energy_scale in ENERGY_SCALES,
            f"drl.energy_scale={energy_scale!r} is not valid; choose one of "
            f"{list(ENERGY_SCALES)} (--config.drl.energy_scale=sigma)")
    return DRLSettings(int(levels), int(steps), float(size), bool(mh), step_schedule,
                       energy_scale)


def _em_settings(section) -> em_lib.EMSettings:
    fields = {f: section[f] for f in em_lib.EMSettings._fields if f in section}
    for name in ("num_gibbs", "phase1_steps"):
        require(is_int(fields.get(name, 0)), f"energy_matching.{name}={fields.get(name)!r} "
                "must be an integer")
    s = em_lib.EMSettings(**fields)
    as_config_error(em_lib.check_settings, s)
    return s


def time_invariant_settings(config) -> TimeInvariantSettings | None:
    """``eqm.*`` / ``energy_matching.*`` / ``model.energy_form`` of a time-invariant model
    (None for the others), checked: the c(gamma) schedule, an energy form that fits the
    network ('scalar' iff the network is scalar), an energy for Energy Matching."""
    if not is_time_invariant(config):
        return None
    objective, parameterization = config.training.objective, config.model.parameterization
    c_max, interp = float(config.eqm.c_max), float(config.eqm.interp)
    as_config_error(eqm.check_schedule, c_max, interp)
    require(objective == "eqm" or has_energy(config),
            f"training.objective={objective!r} trains a scalar potential V(x), but "
            "model.parameterization='unconstrained' has none; use 'conservative' (with "
            "model.energy_form 'dot' or 'l2') or 'resnet_energy' (with 'scalar')")
    form = None
    if has_energy(config):
        form = str(config.model.energy_form)
        as_config_error(eqm.check_form, form, param_lib.SCALAR_OUTPUT[parameterization])
    em = _em_settings(config.energy_matching) if objective == "energy_matching" else None
    return TimeInvariantSettings(objective, form, c_max, interp, em)


def drl_if_any(config, loss: LossSettings) -> DRLSettings | None:
    if loss.objective != "drl":
        return None
    require(has_energy(config), "training.objective='drl' trains an energy: set "
            "model.parameterization='resnet_energy' or 'conservative'")
    return drl_settings(config.drl)

