"""The one crossing: an experiment's ConfigDict becomes frozen, validated, typed settings once.

``main`` (and the study planner, ``study/plan.py``, for each run it plans) calls
:func:`from_config` once; everything below it (builders, models, data, train, evaluate, the
samplers and losses, the compose / inpaint / DRL / study modes, the workdir, the metrics)
takes a :class:`Settings`, one of its sections, or plain arguments, and never sees a
ConfigDict (DESIGN.md rule 5; ``tests/test_config_boundary.py`` walks the syntax trees to
keep it so). A notebook does the same::

    s = settings.from_config(config_base.get_config("toy", "score"))
    train.train_and_evaluate(s, "/tmp/run")

Each config section has its own frozen dataclass (:class:`DataSettings`,
:class:`ModelSettings`, :class:`SDESettings`, :class:`LossSettings` for the objective's
``training.*`` fields, :class:`TrainingSettings` for the schedule, :class:`OptimSettings`,
:class:`SamplingSettings`, :class:`EvalSettings`, :class:`DRLSettings`,
:class:`TimeInvariantSettings` for ``eqm.*`` / ``energy_matching.*``,
:class:`ComposeSettings`, :class:`InpaintSettings`, :class:`StudySettings`). A
:class:`Settings` also carries the config as JSON (``config.json`` is written from it and a
workdir's saved config is compared with it on resume).

The readers that check every field and build these live in ``config_read`` (data, model,
schedule, evaluation, features) and ``config_math`` (SDE, objective, sampler, DRL,
time-invariant models); they are the only modules besides ``main``, ``config_base``,
``config_file`` and ``study/plan.py`` that handle a ConfigDict. This module imports none of
them at import time, so that every layer can import its types.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from ebm_vs_score import energy_matching as em_lib
from ebm_vs_score.drl import DRLChain
from ebm_vs_score.drl import ladder as drl_ladder
from ebm_vs_score.errors import ConfigError

__all__ = ["ComposeSettings", "ConfigError", "DRLSettings", "DataSettings", "EvalSettings",
           "InpaintSettings", "LossSettings", "ModelSettings", "OptimSettings",
           "SDESettings", "SamplingSettings", "Settings", "StudySettings",
           "TimeInvariantSettings", "TrainingSettings", "current_names", "families",
           "family_defaults", "from_config", "from_dict", "of_family", "override", "require",
           "validate"]

_frozen = dataclasses.dataclass(frozen=True)


@_frozen
class DataSettings:
    """``data.*`` (the data package's fields; see ``ebm_vs_score/data/__init__.py``)."""

    dataset: str
    image_size: int = 0
    num_channels: int = 0
    data_dir: str | None = None
    random_flip: bool = False
    dequantize: bool = False
    toy_dim: int = 2
    num_components: int = 8
    input_pipeline: str = "auto"
    cache_dir: str | None = None
    input_workers: int = 0


@_frozen
class ModelSettings:
    """``model.*``: the network (``models.get_network``) and its parameterization.

    A network field left None takes the network's own default.
    """

    name: str
    parameterization: str = "unconstrained"
    sigma_data: float = 1.0
    energy_base: str = "gaussian"
    energy_form: str = "dot"
    hidden: tuple[int, ...] | None = None
    ch: int | None = None
    ch_mult: tuple[int, ...] | None = None
    num_res_blocks: int | None = None
    attn_resolutions: tuple[int, ...] | None = None
    resamp_with_conv: bool | None = None
    dropout: float | None = None
    num_groups: int | None = None
    embedding: str | None = None
    embedding_scale: float | None = None
    fourier_scale: float | None = None
    embedding_dim: int | None = None
    activation: str | None = None
    energy_head: str | None = None
    dtype: str | None = None
    remat: bool | None = None


@_frozen
class SDESettings:
    """``sde.*``: the noise process (``sde.make_sde`` takes these as keywords)."""

    name: str
    sigma_min: float
    sigma_max: float
    beta_min: float
    beta_max: float
    num_scales: int
    eps: float


@_frozen
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


@_frozen
class TrainingSettings:
    """``training.*`` fields of the schedule: steps, batch, cadences, EMA, accumulation."""

    n_iters: int
    batch_size: int
    log_every: int
    checkpoint_every: int
    sample_every: int
    keep_checkpoints: int
    ema_decay: float
    grad_accum_steps: int = 1


@_frozen
class OptimSettings:
    """``optim.*``: Adam / AdamW, linear warm-up and global-norm clipping."""

    optimizer: str
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    warmup: int
    grad_clip: float


@_frozen
class SamplingSettings:
    """``sampling.*``: the method, its grid and its options (``samplers.OPTIONS[method]``);
    ``step_size`` also for samplers other than the method (inpainting's annealed MCMC)."""

    method: str
    num_steps: int
    num_samples: int
    use_ema: bool
    step_size: float
    option_items: tuple[tuple[str, Any], ...]

    @property
    def options(self) -> dict[str, Any]:
        """The ``**options`` of ``samplers.sample``."""
        return dict(self.option_items)


@_frozen
class EvalSettings:
    """``eval.*``. None: ``num_samples`` = ``num_examples``, ``nll_examples`` = all,
    ``classifier_dir`` = WORKDIR/classifier, ``classifier_steps`` = the classifier's own,
    ``inception_weights`` = no FID/IS, ``fid_stats`` = FID against the eval images."""

    num_examples: int
    batch_size: int
    asym_probes: int
    asym_levels: int
    nll_probes: int
    ais: bool
    checkpoint: int
    inception_weights: str | None = None
    fid_stats: str | None = None
    fid_batch_size: int = 200
    ood: bool = True
    nfe_sweep_steps: tuple[int, ...] = ()
    nfe_sweep_tols: tuple[float, ...] = ()
    num_samples: int | None = None
    nll_examples: int | None = None
    nll_rtol: float = 1e-5
    nll_atol: float = 1e-5
    classifier_dir: str | None = None
    classifier_steps: int | None = None
    long_run_steps: Any = None  # --mode=drl_long_run checks these (drl/long_run.py)
    long_run_chains: Any = None
    long_run_start: Any = None
    long_run_marginal: Any = None


@_frozen
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


@_frozen
class TimeInvariantSettings:
    """``eqm.*``, ``energy_matching.*`` and ``model.energy_form`` of the time-invariant
    models (Equilibrium Matching, ``eqm.py``; Energy Matching, ``energy_matching.py``)."""

    objective: str
    energy_form: str | None  # None: EqM's implicit field (no energy)
    c_max: float
    interp: float
    em: em_lib.EMSettings | None  # Energy Matching only


@_frozen
class ComposeSettings:
    """``compose.*`` of ``configs/toy_compose.py`` (checked by ``--mode=compose``)."""

    datasets: tuple[str, ...]
    families: tuple[str, ...]
    operators: tuple[str, ...]
    samplers: tuple[str, ...]
    product_weights: tuple[float, ...]
    mixture_weights: tuple[float, ...]
    alpha: float
    num_samples: int
    sde_steps: int
    ode_steps: int
    mcmc_levels: int
    n_steps_each: int
    grid_size: int
    grid_lim: float


@_frozen
class InpaintSettings:
    """``inpaint.*`` (an optional section; these defaults otherwise; checked by
    ``--mode=inpaint``)."""

    mask: str = "bottom"
    num_images: int = 100
    methods: tuple[str, ...] = ("replacement", "ula", "mala")
    mcmc_levels: int = 50
    n_steps_each: int = 4
    num_shown: int = 16


@_frozen
class StudySettings:
    """``study.*`` of a study config (``study/plan.py`` checks them and plans the runs)."""

    scale: str
    families: tuple[str, ...]
    seeds: tuple[int, ...]
    qc_lambda: float
    qc_lambda_sweep: tuple[float, ...] = ()
    eqm_energy_forms: tuple[str, ...] = ()
    resnet_energy_widths: tuple[int, ...] = ()
    record: str | None = None
    floor_draws: int = 0
    extra_sampler: str = ""
    field_times: tuple[float, ...] = ()
    field_lim: float = 2.5
    field_grid: int = 21
    compilation_cache: bool = True
    report_only: bool = False
    reevaluate: bool = False
    workers: int = 1


@_frozen
class Settings:
    """All typed settings of one experiment, and the config they came from (as JSON)."""

    seed: int
    family: str
    example_shape: tuple[int, ...]
    data: DataSettings
    model: ModelSettings
    sde: SDESettings
    loss: LossSettings
    training: TrainingSettings
    optim: OptimSettings
    sampling: SamplingSettings
    eval: EvalSettings
    drl: DRLSettings | None = None
    time_invariant: TimeInvariantSettings | None = None
    compose: ComposeSettings | None = None
    inpaint: InpaintSettings = InpaintSettings()
    study: StudySettings | None = None
    config_json: str = dataclasses.field(default="{}", repr=False)

    @property
    def parameterization(self) -> str:
        return self.model.parameterization

    @property
    def is_drl(self) -> bool:
        """Trained by diffusion recovery likelihood (Gao et al. 2021)."""
        return self.loss.objective == "drl"

    @property
    def is_time_invariant(self) -> bool:
        """EqM, EqM-E or Energy Matching: no time input, no SDE."""
        return self.time_invariant is not None

    @property
    def is_toy(self) -> bool:
        """Vector (toy) data: examples of shape (D,); images are (H, W, C)."""
        return len(self.example_shape) == 1

    @property
    def has_energy(self) -> bool:
        """Every parameterization but 'unconstrained' yields an energy."""
        return self.model.parameterization != "unconstrained"

    @property
    def data_dim(self) -> int:
        """Number of dimensions D of one example."""
        return math.prod(self.example_shape)

    def as_dict(self) -> dict[str, Any]:
        """The config as a fresh plain nested dict (what ``config.json`` holds)."""
        return json.loads(self.config_json)

    def get(self, path: str, default: Any = None) -> Any:
        """The config's value at a dotted ``path`` (``default`` where there is none)."""
        node: Any = self.as_dict()
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def require(s: Any, what: str = "settings") -> Settings:
    """``s`` if it is a :class:`Settings`; a TypeError saying how to make one otherwise."""
    if not isinstance(s, Settings):
        raise TypeError(f"{what} must be ebm_vs_score.settings.Settings, got "
                        f"{type(s).__name__}; pass settings.from_config(config)")
    return s


def require_section(value: Any, kind: type, what: str) -> Any:
    """``value`` if it is a ``kind`` section; a TypeError naming the Settings field else."""
    if not isinstance(value, kind):
        raise TypeError(f"{what} must be ebm_vs_score.settings.{kind.__name__}, got "
                        f"{type(value).__name__}; pass settings.from_config(config).{what}")
    return value


def from_config(config: Any, *, num_devices: int = 1) -> Settings:
    """Checks every field of an experiment config once and returns its typed settings.

    Args:
      config: the experiment's ``ml_collections.ConfigDict`` (``config_base.get_config``
        or a ``configs/*.py`` file, with any overrides).
      num_devices: devices the batch is split over (``training.batch_size`` must divide).

    Raises:
      ConfigError: one sentence naming the field, the bad value and the valid choices.
    """
    from ebm_vs_score import config_read

    return config_read.read(config, num_devices=num_devices)


def validate(config: Any, *, num_devices: int = 1) -> None:
    """:func:`from_config` for its checks only."""
    from_config(config, num_devices=num_devices)


def from_dict(tree: dict[str, Any], *, num_devices: int = 1) -> Settings:
    """The settings of a plain nested config dict (a ``config.json``, :meth:`Settings.as_dict`)."""
    from ebm_vs_score import config_read

    return config_read.read_dict(tree, num_devices=num_devices)


def override(s: Settings, changes: dict[str, Any]) -> Settings:
    """``s`` with ``{dotted path: value}`` changed, checked again as a whole.

    E.g. ``override(s, {"sampling.method": "mala"})``.
    """
    from ebm_vs_score import config_read

    return config_read.read_dict(config_read.with_changes(require(s).as_dict(), changes))


def of_family(scale: str, family: str, changes: dict[str, Any] | None = None) -> Settings:
    """The settings of ``config_base.get_config(scale, family)`` with ``changes`` applied."""
    from ebm_vs_score import config_read

    return config_read.read_dict(config_read.with_changes(
        family_defaults(scale, family), changes or {}))


def current_names(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat ``{path: value}`` config (e.g. a saved ``config.json``) with each old field
    name's value, if set, under its new name (``config_base.RENAMED_FIELDS``)."""
    from ebm_vs_score import config_base

    return config_base.with_current_names(flat)


def families() -> tuple[str, ...]:
    """The model families that ``config_base.get_config`` knows."""
    from ebm_vs_score import config_base

    return config_base.FAMILIES


def family_defaults(scale: str, family: str) -> dict[str, Any]:
    """``config_base.get_config(scale, family)`` as a plain nested dict."""
    from ebm_vs_score import config_read

    return config_read.defaults(scale, family)
