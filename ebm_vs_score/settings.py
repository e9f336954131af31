"""The one config boundary: a ConfigDict in, frozen typed settings out, validated once.

Everything that reads the experiment's ``ml_collections`` config for the math goes through
here (DESIGN.md rule 5): :func:`from_config` checks every field once and returns a frozen
:class:`Settings` of plain values (:class:`SDESettings`, :class:`LossSettings`,
:class:`SamplerSettings`, :class:`DRLSettings`, :class:`TimeInvariantSettings` for EqM and
Energy Matching); ``builders`` turns them into the SDE, the loss and the sampler options by
calling the math modules with plain arguments. The math modules (sde, parameterization,
losses, conservativeness, samplers, likelihood, drl, eqm, energy_matching, estimators,
mcmc) never see a config.

Every refusal is a :class:`ConfigError` with one sentence naming the field, the bad value
and the valid choices. Valid names are imported from the module that owns them (SDE names
from ``sde``, samplers from ``samplers``, objectives from ``losses``, networks from
``models``, parameterizations from ``parameterization``), never restated here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from absl import logging

from ebm_vs_score import data as data_lib
from ebm_vs_score import energy_matching as em_lib
from ebm_vs_score import eqm, losses, models, samplers
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import sde as sde_lib
from ebm_vs_score.drl import ENERGY_SCALES, DRLChain
from ebm_vs_score.drl import ladder as drl_ladder
from ebm_vs_score.errors import ConfigError
from ebm_vs_score.models.layers import EMBEDDINGS
from ebm_vs_score.models.mlp import ACTIVATIONS

TOY_DATASETS = data_lib.TOY_NAMES
IMAGE_DATASETS = data_lib.IMAGE_DATASETS
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(value, valid, field: str) -> None:
    _require(value in valid, f"{field}={value!r} is not valid; choose one of {list(valid)}")


def _positive(config, fields) -> None:
    for path in fields:
        section, name = path.split(".")
        value = config[section][name]
        _require(value > 0, f"{path}={value!r} must be positive")


def _int_tuple(value, field: str, *, allow_empty: bool = False) -> None:
    """A tuple of positive integers (``model.hidden=(128,128)``), one sentence otherwise."""
    ok = (isinstance(value, tuple | list) and (allow_empty or len(value) > 0)
          and all(_is_int(v) and v > 0 for v in value))
    example = "(128,128)" if field == "model.hidden" else "(1,2)"
    _require(ok, f"{field}={value!r} must be a tuple of positive integers, e.g. "
             f"--config.{field}={'()' if allow_empty else example}")


def _int_at_least(config, path: str, low: int) -> None:
    section, name = path.split(".")
    value = config[section][name]
    _require(_is_int(value) and value >= low, f"{path}={value!r} must be an integer >= {low}")


def _as_config_error(check, *args) -> None:
    """Runs a math module's plain-argument check, reporting its ValueError as ConfigError."""
    try:
        check(*args)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------------------------
# Typed settings
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SDESettings:
    """``sde.*``: the noise process (``sde.make_sde`` takes these as keywords)."""

    name: str
    sigma_min: float
    sigma_max: float
    beta_min: float
    beta_max: float
    num_scales: int
    eps: float


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """``training.*`` fields of the objective and of L_QC."""

    objective: str
    dsm_variant: str
    likelihood_weighting: bool
    reduce_mean: bool
    qc_weight: float
    qc_probes: int
    qc_fraction: float
    qc_every: int
    ssm_projection: str
    ssm_num_projections: int
    ism_max_dim: int


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """``sampling.*``: the method, its grid and its options (``samplers.OPTIONS[method]``)."""

    method: str
    num_steps: int
    num_samples: int
    use_ema: bool
    option_items: tuple[tuple[str, Any], ...]

    @property
    def options(self) -> dict[str, Any]:
        """The ``**options`` of ``samplers.sample``."""
        return dict(self.option_items)


@dataclasses.dataclass(frozen=True)
class DRLSettings:
    """``drl.*``: the ladder size and the Langevin chains (Gao et al. 2021)."""

    num_levels: int
    num_steps: int
    b_squared: float
    metropolis: bool
    step_schedule: str = "authors"
    energy_scale: str = "sigma"

    @property
    def chain(self) -> DRLChain:
        return DRLChain(self.num_steps, self.b_squared, self.metropolis, self.step_schedule)

    @property
    def schedule(self) -> drl_ladder.DRLSchedule:
        return drl_ladder.make_schedule(self.num_levels)


@dataclasses.dataclass(frozen=True)
class TimeInvariantSettings:
    """``eqm.*``, ``energy_matching.*`` and ``model.energy_form`` of the time-invariant
    models (Equilibrium Matching, ``eqm.py``; Energy Matching, ``energy_matching.py``)."""

    objective: str
    energy_form: str | None  # None: EqM's implicit field (no energy)
    c_max: float
    interp: float
    em: em_lib.EMSettings | None  # Energy Matching only


@dataclasses.dataclass(frozen=True)
class Settings:
    """All typed settings of one experiment."""

    parameterization: str
    example_shape: tuple[int, ...]
    sde: SDESettings
    loss: LossSettings
    sampler: SamplerSettings
    drl: DRLSettings | None
    time_invariant: TimeInvariantSettings | None = None

    @property
    def is_drl(self) -> bool:
        return self.loss.objective == "drl"


# ----------------------------------------------------------------------------------------
# Readers (each validates what it reads)
# ----------------------------------------------------------------------------------------


def is_toy(config) -> bool:
    return config.data.dataset in TOY_DATASETS


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


def _has_energy(config) -> bool:
    """Whether the parameterization yields an energy (every family but 'unconstrained')."""
    return config.model.parameterization != "unconstrained"


def sde_settings(config) -> SDESettings:
    """``sde.*``, checked: a known name, positive scales, min < max, eps in (0, 1)."""
    sde = config.sde
    _choice(sde.name, sde_lib.SDE_NAMES, "sde.name")
    _positive(config, ["sde.num_scales", "sde.sigma_min", "sde.beta_min"])
    _require(sde.sigma_min < sde.sigma_max,
             f"sde.sigma_min={sde.sigma_min} must be below sde.sigma_max={sde.sigma_max}")
    _require(sde.beta_min < sde.beta_max,
             f"sde.beta_min={sde.beta_min} must be below sde.beta_max={sde.beta_max}")
    _require(0 < sde.eps < 1, f"sde.eps={sde.eps} must lie in (0, 1)")
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
    _choice(s.objective, losses.OBJECTIVES, "training.objective")
    _as_config_error(losses.check_qc, s.qc_weight, s.qc_probes, s.qc_fraction, s.qc_every)
    s = dataclasses.replace(s, qc_every=int(s.qc_every))
    conservative = _has_energy(config)
    _require(s.qc_weight == 0 or s.objective not in losses.TIME_INVARIANT_OBJECTIVES,
             f"training.qc_weight={s.qc_weight} regularizes the score-matching objectives, not "
             f"training.objective={s.objective!r}; set training.qc_weight=0")
    _require(s.qc_weight == 0 or not conservative,
             f"training.qc_weight > 0 needs model.parameterization='unconstrained': the score of "
             f"a conservative model is a gradient field whose Asym is identically 0, so set "
             f"training.qc_weight=0 (got {s.qc_weight}) or use the unconstrained parameterization")
    if s.objective in ("ssm", "ssm_vr"):
        _as_config_error(losses.check_ssm, s.ssm_projection, s.ssm_num_projections)
    if s.objective == "ism":
        _as_config_error(losses.check_ism_dim, data_dim(config), s.ism_max_dim)
    if s.objective == "dsm":
        _choice(s.dsm_variant, losses.DSM_VARIANTS, "training.dsm_variant")
        _as_config_error(losses.check_sde_for_variant, s.dsm_variant, config.sde.name)
        _require(s.dsm_variant == "continuous" or not s.likelihood_weighting,
                 f"training.likelihood_weighting=True applies to continuous-time objectives, not "
                 f"training.dsm_variant={s.dsm_variant!r}; set it to False or use "
                 "dsm_variant='continuous'")
    return s


def sampler_settings(config) -> SamplerSettings:
    """``sampling.*``: a known method, valid values, and an energy for MH methods.

    The options are the ``sampling.*`` fields that are options of the method
    (``samplers.OPTIONS``); a field set to None means the method's own default.
    """
    sampling = config.sampling
    _choice(sampling.method, samplers.METHODS, "sampling.method")
    for name, table in samplers.CHOICES.items():  # checked whatever the method: the
        if sampling.get(name) is not None:  # method may change on resume or at eval
            _choice(sampling[name], tuple(table), f"sampling.{name}")
    _int_at_least(config, "sampling.num_steps", 1)
    _int_at_least(config, "sampling.num_samples", 1)
    _positive(config, ["sampling.step_size"])
    target = sampling.target_acceptance
    _require(target is None or 0 < target < 1,
             f"sampling.target_acceptance={target} must lie in (0, 1), or be None for the "
             "method's default")
    has_energy = _has_energy(config)
    _as_config_error(samplers.check_time_invariance, sampling.method, is_time_invariant(config),
                     has_energy)
    _as_config_error(samplers.check_energy, sampling.method, has_energy)
    fields = sampling.to_dict() if hasattr(sampling, "to_dict") else dict(vars(sampling))
    options = tuple((k, v) for k, v in fields.items()
                    if k in samplers.OPTIONS[sampling.method] and v is not None)
    _as_config_error(samplers.check_options, sampling.method, sampling.num_steps,
                     dict(options))
    return SamplerSettings(str(sampling.method), int(sampling.num_steps),
                           int(sampling.num_samples), bool(sampling.use_ema), options)


def sampler_options(config) -> dict[str, Any]:
    """The ``**options`` of ``samplers.sample`` for ``config.sampling`` (validated)."""
    return sampler_settings(config).options


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _b_squared(drl_config: Any) -> Any:
    """``drl.b_squared``, or the old name ``drl.step_size`` where a config still sets it."""
    old = getattr(drl_config, "step_size", None)
    if old is None:
        return drl_config.b_squared
    logging.log_first_n(logging.WARNING, "drl.step_size is deprecated: it is b^2, the squared "
                        "step factor; set drl.b_squared instead (now %r)", 1, old)
    return old


def drl_settings(drl_config: Any) -> DRLSettings:
    """``drl.*`` checked: levels in 1..501, K >= 1, b^2 > 0, metropolis a bool, and a known
    ``step_schedule``; one sentence naming the field and the fix otherwise."""
    levels, steps = drl_config.num_levels, drl_config.num_steps
    size, mh = _b_squared(drl_config), drl_config.metropolis
    max_levels = drl_ladder.MAX_LEVELS
    _require(_is_int(levels) and 1 <= levels <= max_levels,
             f"drl.num_levels={levels!r} must be an integer from 1 to {max_levels}; the paper "
             "uses 6 (--config.drl.num_levels=6)")
    _require(_is_int(steps) and steps >= 1,
             f"drl.num_steps={steps!r} must be an integer >= 1 (Langevin steps per level); "
             "the paper uses 30 (--config.drl.num_steps=30)")
    _require(not isinstance(size, bool) and isinstance(size, int | float)
             and math.isfinite(size) and size > 0,
             f"drl.b_squared={size!r} must be a positive number (b^2 of the step s_t^2 = b^2 "
             "c_t sigma_{t+1}^2); the paper uses 2e-4 (--config.drl.b_squared=2e-4)")
    _require(isinstance(mh, bool | np.bool_),
             f"drl.metropolis={mh!r} must be True or False; set --config.drl.metropolis=False "
             "(the paper) or True (MALA correction)")
    step_schedule = drl_config.step_schedule
    _require(step_schedule in drl_ladder.STEP_SCHEDULES,
             f"drl.step_schedule={step_schedule!r} is not valid; choose one of "
             f"{list(drl_ladder.STEP_SCHEDULES)} (--config.drl.step_schedule=authors)")
    energy_scale = getattr(drl_config, "energy_scale", "sigma")
    _require(energy_scale in ENERGY_SCALES,
             f"drl.energy_scale={energy_scale!r} is not valid; choose one of "
             f"{list(ENERGY_SCALES)} (--config.drl.energy_scale=sigma)")
    return DRLSettings(int(levels), int(steps), float(size), bool(mh), step_schedule,
                       energy_scale)


# ----------------------------------------------------------------------------------------
# Infrastructure fields (data, network, optimizer) and the whole config
# ----------------------------------------------------------------------------------------

# jax.random.PRNGKey keeps 32 bits of a seed (2**32 gives the key of 0), and the run uses
# seed + 1 .. seed + 3 as well: seeds stay in the int32 range.
MAX_SEED = 2**31 - 1


def _leaves(tree, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def validate_finite(config) -> None:
    """Every number of the config, in every section and tuple, is finite (nan, inf and -inf
    are refused alike: no field means anything by them)."""
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for path, value in _leaves(tree):
        values = value if isinstance(value, tuple | list) else (value,)
        bad = [v for v in values if isinstance(v, float | np.floating) and not math.isfinite(v)]
        _require(not bad, f"{path}={value!r} is not a finite number; set a finite value "
                 f"(--config.{path}=...)")


def _validate_seed(config) -> None:
    seed = config.seed
    _require(_is_int(seed) and 0 <= seed <= MAX_SEED,
             f"seed={seed!r} must be an integer from 0 to {MAX_SEED} (larger seeds repeat "
             "smaller ones in jax.random.PRNGKey)")



def _validate_data(config) -> None:
    data = config.data
    _choice(data.dataset, TOY_DATASETS + IMAGE_DATASETS, "data.dataset")
    _int_at_least(config, "data.input_workers", 0)
    if is_toy(config):
        _int_at_least(config, "data.toy_dim", 1)
        _int_at_least(config, "data.num_components", 1)
        _require(data.toy_dim == 2 or data.dataset == "gmm",
                 f"data.toy_dim={data.toy_dim}: only the 'gmm' toy exists in more than 2-D")
        return
    _require(data.image_size != 0 or config.model.name != "mlp",
             f"data.dataset={data.dataset!r} holds images but this config is for vector data "
             f"(data.image_size=0, model.name='mlp'); start from an image config, e.g. "
             f"--config=configs/digits_score.py --config.data.dataset={data.dataset}")
    _int_at_least(config, "data.image_size", 1)
    _int_at_least(config, "data.num_channels", 1)
    _as_config_error(data_lib.validate, data)


def _validate_image_model(config) -> None:
    model = config.model
    _require(model.name != "mlp", "model.name='mlp' is for toy data; images use 'unet' or "
             "'resnet_energy'")
    scalar = param_lib.SCALAR_OUTPUT[model.parameterization]
    _require(scalar == (model.name == "resnet_energy"),
             f"model.parameterization={model.parameterization!r} does not fit model.name="
             f"{model.name!r}: use 'resnet_energy' with 'resnet_energy' and 'unconstrained' or "
             "'conservative' with 'unet'")
    _int_at_least(config, "model.ch", 1)
    _int_at_least(config, "model.num_res_blocks", 1)
    _require(_is_int(model.num_groups) and model.num_groups >= 0,
             f"model.num_groups={model.num_groups!r} must be an integer >= 0 (0: no "
             "normalization)")
    _int_tuple(model.ch_mult, "model.ch_mult")
    size, levels = config.data.image_size, len(model.ch_mult)
    _require(size % 2 ** (levels - 1) == 0,
             f"data.image_size={size} is not divisible by 2**(len(model.ch_mult)-1)="
             f"{2 ** (levels - 1)}; shorten model.ch_mult or change the image size")
    if model.name != "unet":  # the ResNet energy has no attention: the field is unused
        return
    _int_tuple(model.attn_resolutions, "model.attn_resolutions", allow_empty=True)
    resolutions = {size // 2**i for i in range(levels)}
    bad = [r for r in model.attn_resolutions if r not in resolutions]
    _require(not bad, f"model.attn_resolutions={tuple(model.attn_resolutions)} has {bad}, "
             f"which are not feature-map sizes of this U-Net; valid: {sorted(resolutions)}")


def _validate_model(config) -> None:
    model = config.model
    _choice(model.name, tuple(models.NETWORKS), "model.name")
    _choice(model.parameterization, param_lib.PARAMETERIZATIONS, "model.parameterization")
    _choice(model.dtype, DTYPES, "model.dtype")
    _choice(model.energy_base, param_lib.ENERGY_BASES, "model.energy_base")
    _choice(getattr(model, "energy_head", "mean"), models.ENERGY_HEADS, "model.energy_head")
    _choice(getattr(model, "embedding", "sinusoidal"), EMBEDDINGS, "model.embedding")
    _choice(getattr(model, "activation", "swish"), tuple(ACTIVATIONS),
            "model.activation")
    _require(model.sigma_data > 0, f"model.sigma_data={model.sigma_data} must be positive")
    dropout = getattr(model, "dropout", 0.0)
    _require(0 <= dropout < 1, f"model.dropout={dropout!r} must lie in [0, 1)")
    if not is_toy(config):
        _validate_image_model(config)
        return
    _require(model.name == "mlp", f"model.name={model.name!r} cannot take vector data "
             f"({config.data.dataset}); use model.name='mlp'")
    _int_tuple(model.hidden, "model.hidden")


def _validate_schedule(config, num_devices: int) -> None:
    _positive(config, ["training.n_iters", "training.batch_size", "training.log_every",
                       "training.checkpoint_every", "training.sample_every",
                       "training.keep_checkpoints", "optim.lr"])
    _require(0 <= config.training.ema_decay < 1,
             f"training.ema_decay={config.training.ema_decay} must lie in [0, 1)")
    _choice(config.optim.optimizer, OPTIMIZERS, "optim.optimizer")
    _require(config.optim.warmup >= 0, f"optim.warmup={config.optim.warmup} must be >= 0")
    _require(config.optim.grad_clip >= 0,
             f"optim.grad_clip={config.optim.grad_clip} must be >= 0 (0 = off)")
    _require(0 <= config.optim.beta1 < 1 and 0 <= config.optim.beta2 < 1,
             f"optim.beta1={config.optim.beta1} and optim.beta2={config.optim.beta2} must "
             "lie in [0, 1)")
    _require(config.optim.eps > 0 and config.optim.weight_decay >= 0,
             f"optim.eps={config.optim.eps} must be positive and optim.weight_decay="
             f"{config.optim.weight_decay} >= 0")
    batch, accum = config.training.batch_size, config.training.get("grad_accum_steps", 1)
    _require(_is_int(accum) and accum >= 1,
             f"training.grad_accum_steps={accum!r} must be an integer >= 1 (1 = off)")
    _require(batch % (accum * num_devices) == 0,
             f"training.batch_size={batch} is not divisible by training.grad_accum_steps="
             f"{accum} x {num_devices} device(s); use a multiple of {accum * num_devices}")


def _validate_eval(config) -> None:
    """``eval.*`` sizes and counts (the evaluators read them as plain integers)."""
    for path in ("eval.num_examples", "eval.batch_size", "eval.asym_levels",
                 "eval.fid_batch_size"):
        if path.split(".")[1] in config.eval:
            _int_at_least(config, path, 1)
    for path in ("eval.asym_probes", "eval.nll_probes"):
        _int_at_least(config, path, 0)
    _int_at_least(config, "eval.checkpoint", -1)  # -1: the latest checkpoint


def _em_settings(section) -> em_lib.EMSettings:
    fields = {f: section[f] for f in em_lib.EMSettings._fields if f in section}
    for name in ("num_gibbs", "phase1_steps"):
        _require(_is_int(fields.get(name, 0)), f"energy_matching.{name}={fields.get(name)!r} "
                 "must be an integer")
    s = em_lib.EMSettings(**fields)
    _as_config_error(em_lib.check_settings, s)
    return s


def time_invariant_settings(config) -> TimeInvariantSettings | None:
    """``eqm.*`` / ``energy_matching.*`` / ``model.energy_form`` of a time-invariant model
    (None for the others), checked: the c(gamma) schedule, an energy form that fits the
    network ('scalar' iff the network is scalar), an energy for Energy Matching."""
    if not is_time_invariant(config):
        return None
    objective, parameterization = config.training.objective, config.model.parameterization
    c_max, interp = float(config.eqm.c_max), float(config.eqm.interp)
    _as_config_error(eqm.check_schedule, c_max, interp)
    _require(objective == "eqm" or _has_energy(config),
             f"training.objective={objective!r} trains a scalar potential V(x), but "
             "model.parameterization='unconstrained' has none; use 'conservative' (with "
             "model.energy_form 'dot' or 'l2') or 'resnet_energy' (with 'scalar')")
    form = None
    if _has_energy(config):
        form = str(config.model.energy_form)
        _as_config_error(eqm.check_form, form, param_lib.SCALAR_OUTPUT[parameterization])
    em = _em_settings(config.energy_matching) if objective == "energy_matching" else None
    return TimeInvariantSettings(objective, form, c_max, interp, em)


def _drl_if_any(config, loss: LossSettings) -> DRLSettings | None:
    if loss.objective != "drl":
        return None
    _require(_has_energy(config), "training.objective='drl' trains an energy: set "
             "model.parameterization='resnet_energy' or 'conservative'")
    return drl_settings(config.drl)


def from_config(config, *, num_devices: int = 1) -> Settings:
    """Checks every field once and returns the typed settings.

    Raises:
      ConfigError: one sentence naming the field, the bad value and the valid choices.
    """
    validate_finite(config)
    _validate_seed(config)
    _validate_data(config)
    _validate_model(config)
    sde = sde_settings(config)
    _validate_schedule(config, num_devices)
    _validate_eval(config)
    sampler = sampler_settings(config)
    loss = loss_settings(config)
    return Settings(parameterization=str(config.model.parameterization),
                    example_shape=example_shape(config), sde=sde, loss=loss, sampler=sampler,
                    drl=_drl_if_any(config, loss),
                    time_invariant=time_invariant_settings(config))


def validate(config, *, num_devices: int = 1) -> None:
    """:func:`from_config` for its checks only (train, evaluate and study call it)."""
    from_config(config, num_devices=num_devices)
