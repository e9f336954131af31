"""What a workdir holds about its run: the config, the changes made on resume, and checks
that the directory can be used at all (DESIGN.md rules 5, 6 and 8).

A run commits its config (``WORKDIR/config.json``) only with its first checkpoint, so a
run that failed before (missing data, a bad value found late, a divergence) leaves nothing
that would refuse the corrected command. On resume, a field may change only if doing so keeps
the run meaningful (:data:`RESUME_SAFE_FIELDS`, :data:`MUTABLE_SECTIONS`: schedules, the
learning rate after a divergence, where the data lives, sampling and evaluation), or when
the user passes ``--allow_config_change``; every accepted change is appended to
``WORKDIR/config_changes.jsonl`` with the step it applies from, and ``config.json`` is the
config now in force.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

import jax
from etils import epath

from ebm_vs_score import errors, settings
from ebm_vs_score.errors import WorkdirError

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
METRICS_FILE = "metrics.jsonl"

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


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{dotted path: value}`` of the leaves of a nested dict."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _is_mutable(path: str, fields: tuple[str, ...]) -> bool:
    return path.split(".")[0] in MUTABLE_SECTIONS or path in fields


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
    """Fields that never acted on a saved run: the time-invariant families' (no earlier run
    used them) and eval.long_run_* (only a later mode reads them)."""
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
    **{f"eval.long_run_{name}": (None, _never)
       for name in ("steps", "chains", "start", "marginal")},
}


def _with_added_fields(saved_flat: dict, now: dict) -> dict:
    """``saved_flat`` completed with the fields it predates (see FIELDS_ADDED_LATER)."""
    out = dict(saved_flat)
    for path, (old, applies) in FIELDS_ADDED_LATER.items():
        if path in now and path not in out:
            out[path] = old if applies is None or applies(saved_flat) else now[path]
    return out


def changes(saved: dict, s: settings.Settings) -> dict[str, list]:
    """Every field where the config of ``s`` differs from ``saved``: ``{path: [before, now]}``."""
    now = settings.current_names(flatten(settings.require(s).as_dict()))
    before = _with_added_fields(settings.current_names(flatten(saved)), now)
    return {p: [before.get(p), now.get(p)] for p in sorted(set(now) | set(before))
            if before.get(p) != now.get(p)}


def config_differences(saved: dict, s: settings.Settings, *,
                       mutable: tuple[str, ...] = MUTABLE_FIELDS) -> list[str]:
    """Fields, other than ``mutable`` ones and ``sampling.*`` / ``eval.*``, where the config
    of ``s`` differs from ``saved``, as ``"path: old -> new"``."""
    return [f"{p}: {a!r} -> {b!r}" for p, (a, b) in changes(saved, s).items()
            if not _is_mutable(p, mutable)]


def damaged_file_message(path, problem: str, fix: str) -> str:
    """One sentence for a workdir file that cannot be read; it is never rewritten."""
    return f"{path} {problem}; it is left as it is: {fix}"


def _move_aside_fix(path) -> str:
    return (f"move it aside (mv {path} {path}.damaged) and rerun the same command, or use "
            "another --workdir")


def read_json(path, *, fix: str | None = None) -> dict | None:
    """The JSON object in ``path`` (None if there is no such file).

    Raises:
      WorkdirError: the file is a directory, not UTF-8, not JSON (truncated, empty, random
        bytes) or not an object: one sentence naming the file and ``fix`` (default: move it
        aside). The file is not touched.
    """
    path = epath.Path(path)
    fix = fix or _move_aside_fix(path)
    try:
        if not path.exists():
            return None
        if path.is_dir():
            raise WorkdirError(damaged_file_message(path, "is a directory, not a file", fix))
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WorkdirError(damaged_file_message(path, "is not text (not UTF-8)", fix)) from None
    except OSError as e:
        raise WorkdirError(damaged_file_message(path, f"cannot be read ({e.strerror})", fix)
                           ) from None
    if not text.strip():
        raise WorkdirError(damaged_file_message(path, "is empty", fix))
    try:
        value = json.loads(text)
    except ValueError as e:
        raise WorkdirError(damaged_file_message(
            path, f"is not valid JSON (line {e.lineno}: {e.msg})", fix)) from None
    if not isinstance(value, dict):
        raise WorkdirError(damaged_file_message(path, "does not hold a JSON object", fix))
    return value


def read_jsonl(path, *, fix: str | None = None) -> list[dict]:
    """The records of a JSON-lines file ([] if there is none).

    A last line without its newline that does not parse is an append cut short (a kill
    during the write) and is left out. Any other damage raises :class:`WorkdirError`
    naming the file, the line and ``fix`` (default: move it aside).
    """
    path = epath.Path(path)
    fix = fix or _move_aside_fix(path)
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WorkdirError(damaged_file_message(path, "is not text (not UTF-8)", fix)) from None
    except OSError as e:
        what = "is a directory, not a file" if path.is_dir() else f"cannot be read ({e.strerror})"
        raise WorkdirError(damaged_file_message(path, what, fix)) from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number < len(lines):  # the last piece (no newline after it) may be cut short
            raise WorkdirError(damaged_file_message(
                path, f"line {number} is not a JSON object", fix))
    return records


def load_saved(workdir: str) -> dict | None:
    """The config saved in ``workdir`` as a plain dict, or None if there is none.

    Raises:
      WorkdirError: ``config.json`` is damaged (one sentence naming it and the fix).
    """
    path = epath.Path(workdir) / CONFIG_FILE
    return read_json(path, fix=(
        f"move it aside (mv {path} {path}.damaged) and rerun with the --config the run was "
        "trained with (a training run saves it again), or use another --workdir"))


def save(s: settings.Settings, workdir: str) -> str:
    """Writes the config of ``s`` to ``workdir/config.json`` (process 0, atomically);
    returns the path."""
    path = epath.Path(workdir) / CONFIG_FILE
    if jax.process_index() != 0:
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{CONFIG_FILE}.tmp"
    try:
        tmp.write_text(settings.require(s).config_json)
    except OSError:  # a full disk: no half-written temporary file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    tmp.replace(path)
    return str(path)


def check_workdir(s: settings.Settings, workdir: str, *,
                  allow_changes: bool = False, training: bool = False,
                  same_network: Callable[[dict], bool] | None = None) -> None:
    """Refuses a workdir whose saved config differs in a field that is not safe to change
    on resume, unless ``allow_changes`` (``--allow_config_change``, read by training only).

    Args:
      s: the settings of this command.
      workdir: the run's directory.
      allow_changes: accept any difference (training records it in config_changes.jsonl),
        except a network of another shape, which no checkpoint of the run can load into.
      training: the refusal offers ``--allow_config_change`` (eval and sample do not read
        it, so they offer the saved config or another workdir instead).
      same_network: ``saved config -> bool``, whether its network has this config's
        parameter shapes (training passes it when the workdir holds checkpoints).
    """
    saved = load_saved(workdir)
    if saved is None:
        return
    diff = config_differences(saved, s, mutable=RESUME_SAFE_FIELDS)
    shown = "; ".join(diff[:3]) + ("; ..." if len(diff) > 3 else "")
    path = epath.Path(workdir) / CONFIG_FILE
    if diff and same_network is not None and not same_network(saved):
        raise WorkdirError(
            f"workdir {workdir} holds checkpoints of a network of another shape ({shown}), "
            "which cannot be loaded into this one, with or without --allow_config_change; "
            f"use a new --workdir, or the config the run was trained with (in {path})")
    if not diff or allow_changes:
        return
    if training:
        raise WorkdirError(
            f"workdir {workdir} holds a run of a different config ({shown}); use a new "
            "--workdir, or the saved config to resume it, or add --allow_config_change to "
            f"resume with these changes (recorded in {CHANGES_FILE})")
    raise WorkdirError(
        f"workdir {workdir} holds a run of a different config ({shown}); pass the --config "
        f"and --config.* flags the run was trained with (its values are in {path}), or "
        "another --workdir")


def commit(s: settings.Settings, workdir: str, step: int) -> None:
    """Records the config of ``s`` as the one in force from ``step`` on (after that step
    trained).

    Appends the changes from the saved config, if any, to ``config_changes.jsonl`` and
    rewrites ``config.json``; a first commit just writes ``config.json``.
    """
    if jax.process_index() != 0:
        return
    saved = load_saved(workdir)
    diff = {} if saved is None else changes(saved, s)
    if saved is not None and not diff:
        return
    if diff:
        record = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "changes": diff}
        with (epath.Path(workdir) / CHANGES_FILE).open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    save(s, workdir)


def _check_remote(workdir: str) -> None:
    """A gs:// (or other remote) workdir must be reachable: created and listed once."""
    try:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        path.exists()
    except Exception as e:  # noqa: BLE001 - each storage layer raises its own types
        raise WorkdirError(
            f"cannot reach --workdir={workdir} ({errors.first_line(e)}); check the bucket "
            "name, your credentials and the network, or use a local --workdir") from None


def prepare_for_writing(workdir: str) -> None:
    """Creates ``workdir`` if needed; raises :class:`WorkdirError` if it cannot be written
    (or reached, for a remote path) and :class:`DiskFullError` if its disk is full."""
    if "://" in workdir:
        return _check_remote(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory; pass the path "
                           "of a directory (it is created if missing)")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("x")
        os.remove(probe)
    except OSError as e:
        if errors.is_disk_full(e):
            raise disk_full(workdir, 0, "") from None
        raise WorkdirError(f"cannot write to --workdir={workdir} ({e.strerror}); choose a "
                           "directory you can write to") from None


def free_bytes(workdir: str) -> int | None:
    """Bytes free for this user on the filesystem of ``workdir`` (None: remote or unknown)."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        stat = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


def disk_full(workdir: str, needed: int, resume: str) -> errors.DiskFullError:
    """The one sentence of a write that found no space in ``workdir``.

    Args:
      workdir: the run's directory.
      needed: bytes the failed write needs at least (0: unknown; 1 MiB is asked for).
      resume: what rerunning does, e.g. "to resume from step 40" ("" for nothing).
    """
    free = free_bytes(workdir)
    needed = max(int(needed), 1 << 20)
    have = f" ({errors.format_bytes(free)} free now)" if free is not None else ""
    return errors.DiskFullError(
        f"the disk of --workdir={workdir} is full{have}: free at least "
        f"{errors.format_bytes(needed)} there, or use a --workdir on another disk, and rerun "
        f"the same command{(' ' + resume) if resume else ''}")


def _remote_steps(workdir: str) -> list[str]:
    try:
        directory = epath.Path(workdir) / "checkpoints"
        return [p.name for p in directory.iterdir()] if directory.exists() else []
    except Exception as e:  # noqa: BLE001 - each storage layer raises its own types
        raise WorkdirError(
            f"cannot reach --workdir={workdir} ({errors.first_line(e)}); check the bucket "
            "name, your credentials and the network") from None


def require_run(workdir: str, mode: str) -> None:
    """For ``--mode=eval`` / ``sample``: refuses (creating nothing) a workdir without a run."""
    if "://" in workdir:
        names = _remote_steps(workdir)
    else:
        directory = os.path.join(workdir, "checkpoints")
        names = os.listdir(directory) if os.path.isdir(directory) else []
    if any(name.isdigit() for name in names):
        return
    exists = "://" in workdir or os.path.exists(workdir)
    what = "holds no trained run" if exists else "does not exist"
    raise WorkdirError(f"--workdir={workdir} {what}, so there is nothing to {mode}; train "
                       "first with the same --config and --workdir and --mode=train")


def append_metrics(workdir: str, record: dict) -> None:
    """Appends one JSON line to ``WORKDIR/metrics.jsonl`` (process 0; never rewritten: a
    line that does not fit on a full disk is cut back off, so the file holds whole lines)."""
    if jax.process_index() != 0:
        return
    path = epath.Path(workdir) / METRICS_FILE
    line = json.dumps(record, sort_keys=True) + "\n"
    if "://" in workdir:
        with path.open("a") as f:
            f.write(line)
        return
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path, "a+b") as f:
            if size:  # after an append cut short by a kill, start on a line of its own
                f.seek(size - 1)
                line = line if f.read(1) == b"\n" else "\n" + line
            f.write(line.encode())
    except OSError:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise
