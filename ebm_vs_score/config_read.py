"""The crossing's reader (``settings.from_config`` calls :func:`read`) and the readers of the
infrastructure sections: ``seed``, ``data.*``, ``model.*``, the ``training.*`` schedule,
``optim.*``, ``eval.*`` and the feature sections ``compose.*``, ``inpaint.*`` and
``study.*`` (the math sections are :mod:`ebm_vs_score.config_math`'s).

Every check raises a :class:`ConfigError` with one sentence naming the field, the bad value
and the fix; valid names come from the modules that own them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from ebm_vs_score import config_base, models, preflight
from ebm_vs_score import config_math as cm
from ebm_vs_score import data as data_lib
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score.models.layers import EMBEDDINGS
from ebm_vs_score.models.mlp import ACTIVATIONS
from ebm_vs_score.settings import (
    ComposeSettings,
    DataSettings,
    EvalSettings,
    InpaintSettings,
    ModelSettings,
    OptimSettings,
    Settings,
    StudySettings,
    TrainingSettings,
)

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw")
_TUPLES = ("hidden", "ch_mult", "attn_resolutions", "nfe_sweep_steps", "nfe_sweep_tols",
           "datasets", "families", "operators", "samplers", "product_weights",
           "mixture_weights", "methods", "seeds", "qc_lambda_sweep", "eqm_energy_forms",
           "resnet_energy_widths", "field_times")


def _typed(cls: type, section: Any) -> Any:
    """``cls`` from the fields of ``section`` it has (sequences as tuples); a field the
    section lacks, or holds None where ``cls`` has a non-None default, takes the default."""
    values = dict(section.items()) if section is not None else {}
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        if value is None and field.default not in (None, dataclasses.MISSING):
            continue
        if field.name in _TUPLES and isinstance(value, tuple | list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


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
        cm.require(not bad, f"{path}={value!r} is not a finite number; set a finite value "
                   f"(--config.{path}=...)")


def _validate_seed(config) -> None:
    seed = config.seed
    cm.require(cm.is_int(seed) and 0 <= seed <= MAX_SEED,
               f"seed={seed!r} must be an integer from 0 to {MAX_SEED} (larger seeds repeat "
               "smaller ones in jax.random.PRNGKey)")



def _validate_data(config) -> None:
    data = config.data
    cm.choice(data.dataset, data_lib.TOY_NAMES + data_lib.IMAGE_DATASETS, "data.dataset")
    cm.int_at_least(config, "data.input_workers", 0)
    if cm.is_toy(config):
        cm.int_at_least(config, "data.toy_dim", 1)
        cm.int_at_least(config, "data.num_components", 1)
        cm.require(data.toy_dim == 2 or data.dataset == "gmm",
                   f"data.toy_dim={data.toy_dim}: only the 'gmm' toy exists in more than 2-D")
        return
    cm.require(data.image_size != 0 or config.model.name != "mlp",
               f"data.dataset={data.dataset!r} holds images but this config is for vector data "
               f"(data.image_size=0, model.name='mlp'); start from an image config, e.g. "
               f"--config=configs/digits_score.py --config.data.dataset={data.dataset}")
    cm.int_at_least(config, "data.image_size", 1)
    cm.int_at_least(config, "data.num_channels", 1)
    cm.as_config_error(data_lib.validate, _typed(DataSettings, data))


def _validate_image_model(config) -> None:
    model = config.model
    cm.require(model.name != "mlp", "model.name='mlp' is for toy data; images use 'unet' or "
               "'resnet_energy'")
    scalar = param_lib.SCALAR_OUTPUT[model.parameterization]
    cm.require(scalar == (model.name == "resnet_energy"),
               f"model.parameterization={model.parameterization!r} does not fit model.name="
               f"{model.name!r}: use 'resnet_energy' with 'resnet_energy' and 'unconstrained' or "
               "'conservative' with 'unet'")
    cm.int_at_least(config, "model.ch", 1)
    cm.int_at_least(config, "model.num_res_blocks", 1)
    cm.require(cm.is_int(model.num_groups) and model.num_groups >= 0,
               f"model.num_groups={model.num_groups!r} must be an integer >= 0 (0: no "
               "normalization)")
    cm.int_tuple(model.ch_mult, "model.ch_mult")
    size, levels = config.data.image_size, len(model.ch_mult)
    cm.require(size % 2 ** (levels - 1) == 0,
               f"data.image_size={size} is not divisible by 2**(len(model.ch_mult)-1)="
               f"{2 ** (levels - 1)}; shorten model.ch_mult or change the image size")
    if model.name != "unet":  # the ResNet energy has no attention: the field is unused
        return
    cm.int_tuple(model.attn_resolutions, "model.attn_resolutions", allow_empty=True)
    resolutions = {size // 2**i for i in range(levels)}
    bad = [r for r in model.attn_resolutions if r not in resolutions]
    cm.require(not bad, f"model.attn_resolutions={tuple(model.attn_resolutions)} has {bad}, "
               f"which are not feature-map sizes of this U-Net; valid: {sorted(resolutions)}")


def _validate_model(config) -> None:
    model = config.model
    cm.choice(model.name, tuple(models.NETWORKS), "model.name")
    cm.choice(model.parameterization, param_lib.PARAMETERIZATIONS, "model.parameterization")
    cm.choice(model.dtype, DTYPES, "model.dtype")
    cm.choice(model.energy_base, param_lib.ENERGY_BASES, "model.energy_base")
    cm.choice(getattr(model, "energy_head", "mean"), models.ENERGY_HEADS, "model.energy_head")
    cm.choice(getattr(model, "embedding", "sinusoidal"), EMBEDDINGS, "model.embedding")
    cm.choice(getattr(model, "activation", "swish"), tuple(ACTIVATIONS),
              "model.activation")
    cm.require(model.sigma_data > 0, f"model.sigma_data={model.sigma_data} must be positive")
    dropout = getattr(model, "dropout", 0.0)
    cm.require(0 <= dropout < 1, f"model.dropout={dropout!r} must lie in [0, 1)")
    if not cm.is_toy(config):
        _validate_image_model(config)
        return
    cm.require(model.name == "mlp", f"model.name={model.name!r} cannot take vector data "
               f"({config.data.dataset}); use model.name='mlp'")
    cm.int_tuple(model.hidden, "model.hidden")


def _validate_schedule(config, num_devices: int) -> None:
    cm.positive(config, ["training.n_iters", "training.batch_size", "training.log_every",
                         "training.checkpoint_every", "training.keep_checkpoints", "optim.lr"])
    cm.int_at_least(config, "training.sample_every", 0)  # 0: no sample grids while training
    cm.require(0 <= config.training.ema_decay < 1,
               f"training.ema_decay={config.training.ema_decay} must lie in [0, 1)")
    cm.choice(config.optim.optimizer, OPTIMIZERS, "optim.optimizer")
    cm.require(config.optim.warmup >= 0, f"optim.warmup={config.optim.warmup} must be >= 0")
    cm.require(config.optim.grad_clip >= 0,
               f"optim.grad_clip={config.optim.grad_clip} must be >= 0 (0 = off)")
    cm.require(0 <= config.optim.beta1 < 1 and 0 <= config.optim.beta2 < 1,
               f"optim.beta1={config.optim.beta1} and optim.beta2={config.optim.beta2} must "
               "lie in [0, 1)")
    cm.require(config.optim.eps > 0 and config.optim.weight_decay >= 0,
               f"optim.eps={config.optim.eps} must be positive and optim.weight_decay="
               f"{config.optim.weight_decay} >= 0")
    batch, accum = config.training.batch_size, config.training.get("grad_accum_steps", 1)
    cm.require(cm.is_int(accum) and accum >= 1,
                 f"training.grad_accum_steps={accum!r} must be an integer >= 1 (1 = off)")
    preflight.check_batch_split(batch, accum, num_devices)


def _validate_eval(config) -> None:
    """``eval.*`` sizes and counts (the evaluators read them as plain integers)."""
    for path in ("eval.num_examples", "eval.batch_size", "eval.asym_levels",
                 "eval.fid_batch_size"):
        if path.split(".")[1] in config.eval:
            cm.int_at_least(config, path, 1)
    for path in ("eval.asym_probes", "eval.nll_probes"):
        cm.int_at_least(config, path, 0)
    cm.int_at_least(config, "eval.checkpoint", -1)  # -1: the latest checkpoint



def _schedule(config) -> tuple[TrainingSettings, OptimSettings]:
    t, o = config.training, config.optim
    training = TrainingSettings(
        n_iters=int(t.n_iters), batch_size=int(t.batch_size), log_every=int(t.log_every),
        checkpoint_every=int(t.checkpoint_every), sample_every=int(t.sample_every),
        keep_checkpoints=int(t.keep_checkpoints), ema_decay=float(t.ema_decay),
        grad_accum_steps=int(t.get("grad_accum_steps", 1)))
    optim = OptimSettings(
        optimizer=str(o.optimizer), lr=float(o.lr), beta1=float(o.beta1),
        beta2=float(o.beta2), eps=float(o.eps), weight_decay=float(o.weight_decay),
        warmup=int(o.warmup), grad_clip=float(o.grad_clip))
    return training, optim


def _feature_sections(config) -> dict[str, Any]:
    """``compose.*`` (None without it), ``inpaint.*`` (defaults without it) and
    ``study.*`` (None without it; its own fields checked by the study planner)."""
    out: dict[str, Any] = {"compose": None, "study": None}
    if "compose" in config:
        out["compose"] = _typed(ComposeSettings, config.compose)
    section = config.get("inpaint", None)
    if section is not None:
        unknown = sorted(set(section.keys()) - {f.name for f in
                                               dataclasses.fields(InpaintSettings)})
        cm.require(not unknown, f"inpaint.{unknown[0] if unknown else ''} is not a field of "
                     f"the inpaint section; valid: {list(InpaintSettings.__annotations__)}")
    out["inpaint"] = _typed(InpaintSettings, section)
    if "study" in config:
        from ebm_vs_score.study import plan  # the planner owns the study's names

        plan.check_section(config)
        out["study"] = _typed(StudySettings, config.study)
    return out


_WARNED: set[str] = set()  # old names already warned about in this process


def with_current_names(config):
    """A copy of ``config`` with each old field name's value, where set, under its new name
    (``config_base.RENAMED_FIELDS``) and the old one cleared; one warning line per old name."""
    config = copy.deepcopy(config)
    for old, new in config_base.RENAMED_FIELDS.items():
        (section, name), (new_section, new_name) = old.split("."), new.split(".")
        if section not in config or config[section].get(name) is None:
            continue
        value = config[section][name]
        if old not in _WARNED:
            _WARNED.add(old)
            logging.warning("%s is deprecated: %s; set %s instead (now %r)", old,
                            config_base.RENAME_REASONS[old], new, value)
        with config.unlocked():
            config[new_section][new_name] = value
            config[section][name] = None
    return config


def read(config, *, num_devices: int = 1) -> Settings:
    """Checks every field once and returns the typed settings (``settings.from_config``).
    Old field names (``config_base.RENAMED_FIELDS``) are read as their new ones.

    Raises:
      ConfigError: one sentence naming the field, the bad value and the valid choices.
    """
    config = with_current_names(config)
    validate_finite(config)
    _validate_seed(config)
    _validate_data(config)
    _validate_model(config)
    sde = cm.sde_settings(config)
    _validate_schedule(config, num_devices)
    _validate_eval(config)
    features = _feature_sections(config)
    sampling = cm.sampling_settings(config)
    loss = cm.loss_settings(config)
    training, optim = _schedule(config)
    return Settings(
        seed=int(config.seed), family=str(config.get("family", "")),
        example_shape=cm.example_shape(config), data=_typed(DataSettings, config.data),
        model=_typed(ModelSettings, config.model), sde=sde, loss=loss, training=training,
        optim=optim, sampling=sampling, eval=_typed(EvalSettings, config.eval),
        drl=cm.drl_if_any(config, loss), time_invariant=cm.time_invariant_settings(config),
        config_json=config.to_json_best_effort(indent=2, sort_keys=True), **features)


def read_dict(tree: dict[str, Any], *, num_devices: int = 1) -> Settings:
    """:func:`read` of a plain nested config dict."""
    return read(ml_collections.ConfigDict(tree), num_devices=num_devices)


def with_changes(tree: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested dict ``tree`` with ``{dotted path: value}`` set."""
    out = copy.deepcopy(tree)
    for path, value in changes.items():
        *sections, name = path.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = list(value) if isinstance(value, tuple) else value
    return out


def defaults(scale: str, family: str) -> dict[str, Any]:
    """``config_base.get_config(scale, family)`` as a plain nested dict."""
    return json.loads(config_base.get_config(scale, family).to_json_best_effort())
