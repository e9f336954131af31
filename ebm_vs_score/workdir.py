"""What a workdir holds about its run: the config, the changes made on resume, and checks
that the directory can be used at all (DESIGN.md rules 5, 6 and 8).

A run commits its config (``WORKDIR/config.json``) only once its first step has trained,
so a run that failed before (missing data, a bad value found late) leaves nothing that
would refuse the corrected command. On resume, a field may change only if doing so keeps
the run meaningful (:data:`RESUME_SAFE_FIELDS`, :data:`MUTABLE_SECTIONS`: schedules, the
learning rate after a divergence, where the data lives, sampling and evaluation), or when
the user passes ``--allow_config_change``; every accepted change is appended to
``WORKDIR/config_changes.jsonl`` with the step it applies from, and ``config.json`` is the
config now in force.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from etils import epath

from ebm_vs_score.errors import WorkdirError

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"

# Left out by :func:`config_differences` (schedules and evaluation; the study adds its own
# rules on top of it).
MUTABLE_SECTIONS = ("sampling", "eval")
MUTABLE_FIELDS = ("training.n_iters", "training.log_every", "training.checkpoint_every",
                  "training.sample_every", "training.keep_checkpoints")
# Safe to change when resuming a run: they do not change what the checkpoint's state means.
RESUME_SAFE_FIELDS = MUTABLE_FIELDS + (
    "training.grad_accum_steps", "model.remat",  # memory only: same math
    "optim.lr", "optim.warmup",  # the advice after a divergence (same optimizer state)
    "data.data_dir",  # where the same data lives
    "data.cache_dir", "data.input_workers",  # where and how fast it is read
    # how it is read: a TFDS run started before the indexable reader existed continues with
    # another batch order unless resumed with --config.data.input_pipeline=tf_data
    "data.input_pipeline",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _is_mutable(path: str, fields: tuple[str, ...]) -> bool:
    return path.split(".")[0] in MUTABLE_SECTIONS or path in fields


def _as_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


# Fields added after workdirs of earlier versions were written: ``path -> (old, applies)``.
# A saved config without the field compares as ``old`` (what those runs did) when
# ``applies(saved)``, else as whatever is set now (the field does not act on that run).
# The C-ResNet energy had no base term before ``model.energy_base``: resuming such a run
# needs ``--config.model.energy_base=none``, and the refusal says so.
def _is_resnet(saved: dict) -> bool:
    return saved.get("model.parameterization") == "resnet_energy"


def _has_qc(saved: dict) -> bool:
    return (saved.get("training.qc_weight") or 0) > 0


def _never(saved: dict) -> bool:
    """Fields of the time-invariant families (issue #26): no earlier run used them."""
    return False


_TIME_INVARIANT_FIELDS = ("model.energy_form", "eqm.c_max", "eqm.interp") + tuple(
    f"energy_matching.{f}" for f in ("time_cutoff", "lambda_cd", "num_gibbs", "dt", "eps_max",
                                     "phase1_steps", "cd_trim_fraction", "cd_neg_clamp",
                                     "split_negatives"))

FIELDS_ADDED_LATER = {
    **{path: (None, _never) for path in _TIME_INVARIANT_FIELDS},
    "model.energy_base": ("none", _is_resnet),
    "training.qc_fraction": (1.0, _has_qc), "training.qc_every": (1, _has_qc),
    "model.remat": (False, None), "training.ism_max_dim": (64, None),
    "training.grad_accum_steps": (1, None), "data.input_pipeline": ("auto", None),
    "data.cache_dir": (None, None), "data.input_workers": (4, None),
    "drl.energy_scale": ("sigma", None), "model.energy_head": ("mean", None),
}


def _with_added_fields(saved_flat: dict, now: dict) -> dict:
    """``saved_flat`` completed with the fields it predates (see FIELDS_ADDED_LATER)."""
    out = dict(saved_flat)
    for path, (old, applies) in FIELDS_ADDED_LATER.items():
        if path in now and path not in out:
            out[path] = old if applies is None or applies(saved_flat) else now[path]
    return out


def changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, list]:
    """Every field where ``config`` differs from ``saved``: ``{path: [before, now]}``."""
    now = _flatten(_as_dict(config))
    before = _with_added_fields(_flatten(saved), now)
    return {p: [before.get(p), now.get(p)] for p in sorted(set(now) | set(before))
            if before.get(p) != now.get(p)}


def config_differences(saved: dict, config: ml_collections.ConfigDict, *,
                       mutable: tuple[str, ...] = MUTABLE_FIELDS) -> list[str]:
    """Fields, other than ``mutable`` ones and ``sampling.*`` / ``eval.*``, where ``config``
    differs from ``saved``, as ``"path: old -> new"``."""
    return [f"{p}: {a!r} -> {b!r}" for p, (a, b) in changes(saved, config).items()
            if not _is_mutable(p, mutable)]


def load_saved(workdir: str) -> dict | None:
    """The config saved in ``workdir`` as a plain dict, or None if there is none."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def save(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes ``config`` to ``workdir/config.json`` (process 0, atomically); returns the path."""
    path = epath.Path(workdir) / CONFIG_FILE
    if jax.process_index() != 0:
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{CONFIG_FILE}.tmp"
    tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    tmp.replace(path)
    return str(path)


def check_workdir(config: ml_collections.ConfigDict, workdir: str, *,
                  allow_changes: bool = False) -> None:
    """Refuses to resume a workdir whose saved config differs in a field that is not safe
    to change on resume, unless ``allow_changes`` (``--allow_config_change``)."""
    saved = load_saved(workdir)
    diff = [] if saved is None or allow_changes else config_differences(
        saved, config, mutable=RESUME_SAFE_FIELDS)
    if diff:
        shown = "; ".join(diff[:3]) + ("; ..." if len(diff) > 3 else "")
        raise WorkdirError(
            f"workdir {workdir} holds a run of a different config ({shown}); use a new "
            "--workdir, or the saved config to resume it, or add --allow_config_change to "
            f"resume with these changes (recorded in {CHANGES_FILE})")


def commit(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
    """Records ``config`` as the one in force from ``step`` on (after that step trained).

    Appends the changes from the saved config, if any, to ``config_changes.jsonl`` and
    rewrites ``config.json``; a first commit just writes ``config.json``.
    """
    if jax.process_index() != 0:
        return
    saved = load_saved(workdir)
    diff = {} if saved is None else changes(saved, config)
    if saved is not None and not diff:
        return
    if diff:
        record = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "changes": diff}
        with (epath.Path(workdir) / CHANGES_FILE).open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    save(config, workdir)


def prepare_for_writing(workdir: str) -> None:
    """Creates ``workdir`` if needed; raises :class:`WorkdirError` if it cannot be written."""
    if "://" in workdir:  # gs:// and other remote paths: the storage layer reports errors
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory; pass the path "
                           "of a directory (it is created if missing)")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"cannot write to --workdir={workdir} ({e.strerror}); choose a "
                           "directory you can write to") from None


def require_run(workdir: str, mode: str) -> None:
    """For ``--mode=eval`` / ``sample``: refuses (creating nothing) a workdir without a run."""
    directory = os.path.join(workdir, "checkpoints")
    if "://" in workdir or (os.path.isdir(directory) and
                            any(name.isdigit() for name in os.listdir(directory))):
        return
    what = "does not exist" if not os.path.exists(workdir) else "holds no trained run"
    raise WorkdirError(f"--workdir={workdir} {what}, so there is nothing to {mode}; train "
                       "first with the same --config and --workdir and --mode=train")
