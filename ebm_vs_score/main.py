"""Entry point: ``python -m ebm_vs_score.main --config=configs/X.py --workdir=DIR [--mode=...]``.

Thin by design (flax examples): it parses flags, starts JAX's multi-process runtime when
asked to, and calls ``train_and_evaluate`` / ``evaluate`` / ``sample`` / ``run_study``,
which notebooks and tests call directly too.

Exit status:
  * 0: the mode finished (a training run reached ``training.n_iters``).
  * 1: bad input (a config file or field, a workdir, missing data, a checkpoint that is not
    there) or a diverged run: one sentence on stderr starting with ``error:``, the
    traceback in ``WORKDIR/error.log``; nothing already written is touched. Any other
    exception is a bug and keeps its traceback.
  * 75 (EX_TEMPFAIL, ``errors.PREEMPTED_EXIT_STATUS``): preempted. SIGTERM stopped the run
    after saving its current step (once) and the log says ``preempted at step N``;
    rerunning the same command resumes bit-identically. The launchers in ``launch/``
    requeue on this status.

On resume the workdir accepts changes only to fields that are safe to change
(``workdir.RESUME_SAFE_FIELDS``: schedules, ``optim.lr`` / ``optim.warmup``, ``data.data_dir``,
``sampling.*``, ``eval.*``); ``--allow_config_change`` accepts any change. Accepted changes
are appended to ``WORKDIR/config_changes.jsonl``.
"""

from __future__ import annotations

import logging as pylogging
import os
import re
import signal
import sys
import threading
import traceback

# SIGTERM during the seconds of imports below must not kill the run either: remember it
# (``main`` hands it to the train loop's preemption flag, or exits 75 before any work).
_EARLY_SIGTERM = threading.Event()
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: _EARLY_SIGTERM.set())

# TensorFlow is only the TFDS input pipeline (it hides the GPUs from itself there); when
# it is loaded, its C++ start-up chatter stays out of the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ebm_vs_score import checkpoints, errors, hostcpu  # noqa: E402
from ebm_vs_score import workdir as workdir_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "study",
                                              "compose", "inpaint", "fid_stats",
                                              "drl_long_run", "energy_vs_ode"],
                          "What to do with the config.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs that JAX "
    "cannot auto-detect (it can on TPU pods and SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with auto-detection "
    "(TPU pods, SLURM); implied by --coordinator_address.")

_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir although fields that are not safe to "
    "change on resume differ from its config.json (the changes are recorded).")

flags.mark_flags_as_required(["config", "workdir"])


def _run_mode(mode: str, config, workdir: str):
    """Dispatches --mode to its function (imported lazily: each pulls its own modules)."""
    if mode == "train":
        from ebm_vs_score.train import train_and_evaluate

        return train_and_evaluate(config, workdir, allow_config_change=_ALLOW_CHANGE.value)
    if mode in ("eval", "sample") or (mode == "energy_vs_ode" and "study" not in config):
        workdir_lib.require_run(workdir, mode)
    if mode == "eval":
        from ebm_vs_score.evaluate import evaluate

        return evaluate(config, workdir)
    if mode == "sample":
        from ebm_vs_score.evaluate import sample

        return sample(config, workdir)
    if mode == "compose":
        from ebm_vs_score.compose.run import run_compose

        return run_compose(config, workdir)
    if mode == "inpaint":
        from ebm_vs_score.inpaint.run import run_inpaint

        return run_inpaint(config, workdir)
    if mode == "fid_stats":  # FID reference statistics of the train split
        from ebm_vs_score.evaluate.fid_stats import write_reference_stats

        return write_reference_stats(config, workdir)
    if mode == "drl_long_run":  # trains (or reuses the run), then the long chains
        from ebm_vs_score.drl.long_run import run_long_run

        return run_long_run(config, workdir)
    if mode == "energy_vs_ode":  # a trained energy run, or every energy run of a study
        from ebm_vs_score.evaluate.energy_vs_ode import run_energy_vs_ode

        return run_energy_vs_ode(config, workdir)
    from ebm_vs_score.study import run_study

    return run_study(config, workdir)


def _initialize_distributed() -> None:
    if _COORDINATOR.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


# One XLA:CPU device per core (``hostcpu``) is opt-in: ``EBM_CPU_DEVICES=all``. It made the
# digits U step 1.4x faster on 2 cores with YNNPACK's kernels, but on a loaded 2-core
# machine 5 of 6 C-ResNet training runs with 2 devices hung in an XLA:CPU all-reduce (one
# device thread never reached the rendezvous; XLA aborts after 40 s) within 500 steps. A
# run that can hang is not a default; JAX_NUM_CPU_DEVICES=N sets the count directly.
def _use_every_cpu_core(config) -> None:
    """With ``EBM_CPU_DEVICES=all``, one XLA:CPU device per core in single-process runs
    (``hostcpu``), before JAX starts: the micro-batch of each optimizer step must split
    evenly over the devices."""
    if _COORDINATOR.value or _DISTRIBUTED.value or not hostcpu.devices_asked_for():
        return
    batch = int(config.training.batch_size)
    accum = int(config.training.get("grad_accum_steps", 1) or 1)
    hostcpu.use_cpu_cores(batch // accum if batch % accum == 0 else batch)


def _fail(message: str, workdir: str | None, status: int = 1) -> None:
    """One sentence on stderr (the traceback, if any, appended to ``WORKDIR/error.log``)."""
    if workdir and os.path.isdir(workdir) and os.access(workdir, os.W_OK):
        with open(os.path.join(workdir, "error.log"), "a") as f:
            f.write(f"error: {message}\n{traceback.format_exc()}")
    sys.stderr.write(f"error: {message}\n")
    sys.exit(status)


def _one_line(text) -> str:
    return " ".join(str(text).replace("\\n", " ").split())


def _config_file_error(error: Exception, argv: list[str]) -> str:
    """One sentence for a --config flag that cannot be parsed (file or override)."""
    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    path = paths[-1].split(":")[0] if paths else None
    if isinstance(error, SyntaxError):
        return (f"config file {error.filename or path} has a syntax error at line "
                f"{error.lineno}: {error.msg}; fix the file")
    if path is not None and not os.path.isfile(path):
        return (f"config file {path!r} does not exist; pass --config=configs/<name>.py "
                "(relative to the directory you run from)")
    if isinstance(error, (AttributeError, KeyError)):
        suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(error))
        if suggestion:
            return (f"the config has no field {suggestion.group(2)!r}; did you mean "
                    f"{suggestion.group(1)!r}? (check the --config.* flags)")
        return f"a --config.* flag names a field the config does not have ({_one_line(error)})"
    return f"--config could not be loaded: {_one_line(error)}"


def _load_config():
    """The --config value; ml_collections loads a missing file only when it is read."""
    try:
        config = _CONFIG.value
        config.get("seed")  # a config file that failed to load raises on first access
        return config
    except (AttributeError, KeyError, OSError, SyntaxError) as e:
        _fail(_config_file_error(e, sys.argv), None)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one sentence instead of a traceback for a bad --config."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, (AttributeError, KeyError, OSError, SyntaxError)):
            _fail(_config_file_error(cause, argv), None)
        _fail(f"{_one_line(e)} (see --helpshort)", None)
    except (AttributeError, KeyError, OSError, SyntaxError) as e:
        _fail(_config_file_error(e, argv), None)
    return []  # not reached


def _is_ours_or_loud(record: pylogging.LogRecord) -> bool:
    """This program's own log lines, and every library's warnings and errors."""
    return (record.levelno >= pylogging.WARNING
            or f"{os.sep}ebm_vs_score{os.sep}" in record.pathname)


def _quiet_library_logs() -> None:
    """Keeps libraries' INFO lines (JAX's backend probing, Orbax's per-save lines,
    matplotlib's font cache) out of the log and off stderr; ``--verbosity=1`` shows them."""
    if logging.get_verbosity() >= logging.DEBUG:
        return
    logging.get_absl_handler().addFilter(_is_ours_or_loud)


def _take_over_sigterm() -> None:
    """Training or a study in one process: SIGTERM sets the train loop's preemption flag
    from now on. Several processes: JAX's preemption service owns SIGTERM; eval / sample:
    SIGTERM stops them at once, as usual. In these two cases a SIGTERM that came during
    start-up stops the run before any work (status 75, nothing written)."""
    distributed = _COORDINATOR.value or _DISTRIBUTED.value
    if not distributed and _MODE.value in ("train", "study"):
        checkpoints.catch_sigterm(already_received=_EARLY_SIGTERM.is_set())
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _EARLY_SIGTERM.is_set():
        sys.stderr.write("preempted before the run started: rerun the same command\n")
        sys.exit(errors.PREEMPTED_EXIT_STATUS)


def main(argv):
    _take_over_sigterm()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _quiet_library_logs()
    hostcpu.use_fast_cpu_kernels()  # before JAX starts: XLA:CPU's Eigen convolutions
    config, workdir, mode = _load_config(), _WORKDIR.value, _MODE.value
    _use_every_cpu_core(config)
    _initialize_distributed()
    if jax.process_count() > 1:
        logging.info("JAX process %d/%d, devices: %s", jax.process_index(),
                     jax.process_count(), jax.devices())
    try:
        result = _run_mode(mode, config, workdir)
    except errors.UserError as e:
        if checkpoints.sigterm_received() and mode == "study":
            _fail(_one_line(str(e).splitlines()[0]), workdir, errors.PREEMPTED_EXIT_STATUS)
        _fail(_one_line(str(e).splitlines()[0]) if str(e) else type(e).__name__, workdir)
    if mode == "train" and int(result.step) < int(config.training.n_iters):
        sys.stderr.write(f"preempted at step {int(result.step)}: rerun the same command to "
                         f"resume (exit status {errors.PREEMPTED_EXIT_STATUS})\n")
        sys.exit(errors.PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
