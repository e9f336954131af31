"""Validating a config once at start-up, and writing it to the workdir (DESIGN.md rule 5).

Every check raises :class:`ConfigError` with one sentence that names the field, the bad
value and the valid choices, so that ``main`` can print it and stop before anything
(checkpoints, metrics) is touched.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

from ebm_vs_score import data as data_lib
from ebm_vs_score import parameterization as param_lib

TOY_DATASETS = data_lib.TOY_DATASETS  # the names live next to what they name
IMAGE_DATASETS = data_lib.IMAGE_DATASETS
NETWORKS = ("unet", "resnet_energy", "mlp")
SDES = ("ve", "vp", "subvp")
SAMPLERS = ("ald", "ancestral", "euler_maruyama", "pc", "ode", "ode_adaptive",
            "ula", "mala", "hmc", "uhmc")
MH_SAMPLERS = ("mala", "hmc")
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw")


class ConfigError(ValueError):
    """A config value is invalid; the message says which and how to fix it."""


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


def is_toy(config) -> bool:
    return config.data.dataset in TOY_DATASETS


def _validate_data(config) -> None:
    data = config.data
    _choice(data.dataset, TOY_DATASETS + IMAGE_DATASETS, "data.dataset")
    if is_toy(config):
        _require(data.toy_dim >= 1, f"data.toy_dim={data.toy_dim} must be >= 1")
        _require(data.toy_dim == 2 or data.dataset == "gmm",
                 f"data.toy_dim={data.toy_dim}: only the 'gmm' toy exists in more than 2-D")
        return
    _positive(config, ["data.image_size", "data.num_channels"])
    try:
        data_lib.validate(data)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_model(config) -> None:
    model = config.model
    _choice(model.name, NETWORKS, "model.name")
    _choice(model.parameterization, param_lib.PARAMETERIZATIONS, "model.parameterization")
    _choice(model.dtype, DTYPES, "model.dtype")
    _require(model.sigma_data > 0, f"model.sigma_data={model.sigma_data} must be positive")
    if is_toy(config):
        _require(model.name == "mlp", f"model.name={model.name!r} cannot take vector data "
                 f"({config.data.dataset}); use model.name='mlp'")
        _require(len(model.hidden) > 0 and min(model.hidden) > 0,
                 f"model.hidden={model.hidden} needs positive layer widths")
        return
    _require(model.name != "mlp", "model.name='mlp' is for toy data; images use 'unet' or "
             "'resnet_energy'")
    scalar = param_lib.SCALAR_OUTPUT[model.parameterization]
    _require(scalar == (model.name == "resnet_energy"),
             f"model.parameterization={model.parameterization!r} does not fit model.name="
             f"{model.name!r}: use 'resnet_energy' with 'resnet_energy' and 'unconstrained' or "
             "'conservative' with 'unet'")
    _positive(config, ["model.ch", "model.num_res_blocks", "model.num_groups"])
    _require(len(model.ch_mult) > 0 and min(model.ch_mult) > 0,
             f"model.ch_mult={model.ch_mult} needs positive multipliers")
    size, levels = config.data.image_size, len(model.ch_mult)
    _require(size % 2 ** (levels - 1) == 0,
             f"data.image_size={size} is not divisible by 2**(len(model.ch_mult)-1)="
             f"{2 ** (levels - 1)}; shorten model.ch_mult or change the image size")
    resolutions = {size // 2**i for i in range(levels)}
    if model.name != "unet":  # the ResNet energy has no attention: the field is unused
        return
    bad = [r for r in model.attn_resolutions if r not in resolutions]
    _require(not bad, f"model.attn_resolutions={tuple(model.attn_resolutions)} has {bad}, "
             f"which are not feature-map sizes of this U-Net; valid: {sorted(resolutions)}")


def _validate_sde(config) -> None:
    sde = config.sde
    _choice(sde.name, SDES, "sde.name")
    _positive(config, ["sde.num_scales", "sde.sigma_min", "sde.beta_min"])
    _require(sde.sigma_min < sde.sigma_max,
             f"sde.sigma_min={sde.sigma_min} must be below sde.sigma_max={sde.sigma_max}")
    _require(sde.beta_min < sde.beta_max,
             f"sde.beta_min={sde.beta_min} must be below sde.beta_max={sde.beta_max}")
    _require(0 < sde.eps < 1, f"sde.eps={sde.eps} must lie in (0, 1)")


def _validate_training(config) -> None:
    _positive(config, ["training.n_iters", "training.batch_size", "training.log_every",
                       "training.checkpoint_every", "training.sample_every",
                       "training.keep_checkpoints", "optim.lr"])
    _require(0 <= config.training.ema_decay < 1,
             f"training.ema_decay={config.training.ema_decay} must lie in [0, 1)")
    _choice(config.optim.optimizer, OPTIMIZERS, "optim.optimizer")
    _require(config.optim.warmup >= 0, f"optim.warmup={config.optim.warmup} must be >= 0")
    _require(config.optim.grad_clip >= 0,
             f"optim.grad_clip={config.optim.grad_clip} must be >= 0 (0 = off)")


def _validate_sampling(config) -> None:
    sampling = config.sampling
    _choice(sampling.method, SAMPLERS, "sampling.method")
    _positive(config, ["sampling.num_steps", "sampling.num_samples", "sampling.step_size"])
    target = sampling.target_acceptance
    _require(target is None or 0 < target < 1,
             f"sampling.target_acceptance={target} must lie in (0, 1), or be None for the "
             "method's default")
    conservative = config.model.parameterization != "unconstrained"
    _require(conservative or sampling.method not in MH_SAMPLERS,
             f"sampling.method={sampling.method!r} needs an energy for its Metropolis-Hastings "
             "ratio, but model.parameterization='unconstrained' is score-only; use "
             "'conservative' or 'resnet_energy', or an unadjusted sampler ('ula', 'ald', 'pc')")


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
    """Checks every field once; raises :class:`ConfigError` with one clear sentence."""
    for check in (_validate_data, _validate_model, _validate_sde, _validate_training,
                  _validate_sampling):
        check(config)
    _require(config.training.batch_size % num_devices == 0,
             f"training.batch_size={config.training.batch_size} is not divisible by the "
             f"{num_devices} devices; use a multiple of {num_devices}")
    _validate_objective(config)


def _validate_objective(config) -> None:
    from ebm_vs_score import losses

    conservative = config.model.parameterization != "unconstrained"
    if config.training.objective == "drl":
        _validate_drl(config, conservative)
        return
    try:
        losses.validate_training(config.training, conservative, data_dim(config),
                                 sde_name=config.sde.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_drl(config, conservative: bool) -> None:
    from ebm_vs_score import drl

    _require(conservative, "training.objective='drl' trains an energy: set "
             "model.parameterization='resnet_energy' or 'conservative'")
    try:
        drl.validate_drl(config.drl)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def data_dim(config) -> int:
    """Number of dimensions D of one example."""
    if is_toy(config):
        return int(config.data.toy_dim)
    return int(config.data.image_size**2 * config.data.num_channels)


def save(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the final config to ``workdir/config.json`` (process 0) and returns the path."""
    path = epath.Path(workdir) / "config.json"
    if jax.process_index() != 0:
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    return str(path)


def load_saved(workdir: str) -> dict | None:
    """The config saved in ``workdir`` as a plain dict, or None if there is none."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


# Fields that may change between runs in the same workdir (schedules and evaluation),
# everything else must match the config the workdir was created with.
MUTABLE_SECTIONS = ("sampling", "eval")
MUTABLE_FIELDS = ("training.n_iters", "training.log_every", "training.checkpoint_every",
                  "training.sample_every", "training.keep_checkpoints")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _is_mutable(path: str) -> bool:
    return path.split(".")[0] in MUTABLE_SECTIONS or path in MUTABLE_FIELDS


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """Fields (other than schedules and evaluation) where ``config`` differs from ``saved``."""
    now = _flatten(json.loads(config.to_json_best_effort()))
    before = _flatten(saved)
    paths = sorted(set(now) | set(before))
    return [f"{p}: {before.get(p)!r} -> {now.get(p)!r}" for p in paths
            if not _is_mutable(p) and before.get(p) != now.get(p)]


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume a workdir whose saved config is a different experiment."""
    saved = load_saved(workdir)
    if saved is None:
        return
    diff = config_differences(saved, config)
    _require(not diff, f"workdir {workdir} holds a run of a different config ({'; '.join(diff[:3])}"
             f"{'; ...' if len(diff) > 3 else ''}); use a new --workdir, or the same config to "
             "resume it")
