"""Writing a config to the workdir and checking a resumed workdir (DESIGN.md rule 5).

Validation is :func:`ebm_vs_score.settings.validate` (re-exported here as ``validate``):
every check raises :class:`ConfigError` with one sentence that names the field, the bad
value and the valid choices, so that ``main`` can print it and stop before anything
(checkpoints, metrics) is touched.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

from ebm_vs_score import samplers, settings

# Validation lives in ``settings`` (the one config boundary); these names stay here for the
# callers of this module.
ConfigError = settings.ConfigError
validate = settings.validate
is_toy = settings.is_toy
data_dim = settings.data_dim
TOY_DATASETS = settings.TOY_DATASETS
IMAGE_DATASETS = settings.IMAGE_DATASETS
SAMPLERS = samplers.METHODS
MH_SAMPLERS = samplers.MH_METHODS


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
