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
    A full disk is bad input too: the sentence names the workdir and the space to free.
  * 75 (EX_TEMPFAIL, ``errors.PREEMPTED_EXIT_STATUS``): preempted. SIGTERM stopped the run
    after saving its current step (once) and the log says ``preempted at step N``;
    rerunning the same command resumes bit-identically. The launchers in ``launch/``
    requeue on this status.
  * 130 (128 + SIGINT, ``errors.INTERRUPTED_EXIT_STATUS``): Ctrl-C. A training run saves its
    current step once, like a preempted one, and says ``interrupted at step N``; a second
    Ctrl-C exits at once without saving. Eval and sample exit at once.

Training, study, compose and inpaint hold ``WORKDIR/run.lock`` (``runlock``): a second such
run on the same workdir is refused in one sentence naming the first (host and PID); eval
and sample only read checkpoints and may run beside a training run.

On resume the workdir accepts changes only to fields that are safe to change
(``workdir.RESUME_SAFE_FIELDS``: schedules, ``optim.lr`` / ``optim.warmup``, ``data.data_dir``,
``sampling.*``, ``eval.*``); ``--allow_config_change`` accepts any change. Accepted changes
are appended to ``WORKDIR/config_changes.jsonl``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback

# SIGTERM or Ctrl-C during the seconds of imports below must not kill the run with a
# traceback either: remember them (``main`` hands them to the train loop's stop flag, or
# exits before any work); a second Ctrl-C exits at once.
_EARLY_SIGNALS: list[int] = []


def _remember_early_signal(signum, frame) -> None:
    if signum == signal.SIGINT and signum in _EARLY_SIGNALS:
        os.write(2, b"interrupted again: exiting\n")
        os._exit(130)
    _EARLY_SIGNALS.append(signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _remember_early_signal)
    signal.signal(signal.SIGINT, _remember_early_signal)

# TensorFlow is only the TFDS input pipeline (it hides the GPUs from itself there); when
# it is loaded, its C++ start-up chatter stays out of the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ebm_vs_score import checkpoints, config_file, errors, hostcpu, library_reports, runlock  # noqa: E402
from ebm_vs_score import settings as settings_lib  # noqa: E402
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
_COORDINATOR_TIMEOUT = flags.DEFINE_integer(
    "coordinator_timeout", 300, "Seconds to wait for the coordinator and the other "
    "processes of a multi-process run before giving up with a message.", lower_bound=1)

_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir although fields that are not safe to "
    "change on resume differ from its config.json (the changes are recorded).")

flags.mark_flags_as_required(["config", "workdir"])


# --mode -> (module, function(settings, workdir)); imported lazily: each pulls its own modules.
_MODES = {
    "eval": ("ebm_vs_score.evaluate", "evaluate"),
    "sample": ("ebm_vs_score.evaluate", "sample"),
    "compose": ("ebm_vs_score.compose.run", "run_compose"),
    "inpaint": ("ebm_vs_score.inpaint.run", "run_inpaint"),
    "fid_stats": ("ebm_vs_score.evaluate.fid_stats", "write_reference_stats"),  # FID stats
    # trains (or reuses the run), then the long chains
    "drl_long_run": ("ebm_vs_score.drl.long_run", "run_long_run"),
    # a trained energy run, or every energy run of a study
    "energy_vs_ode": ("ebm_vs_score.evaluate.energy_vs_ode", "run_energy_vs_ode"),
    "study": ("ebm_vs_score.study", "run_study"),
}
# They write more than eval's files: one such run per workdir (train locks inside
# train_and_evaluate, which the others call for their runs too).
_LOCKED_MODES = ("study", "compose", "inpaint", "drl_long_run")
_SAVING_MODES = ("train", "study", "compose", "inpaint", "drl_long_run")  # Ctrl-C saves


@contextlib.contextmanager
def _locked(workdir: str):
    """Holds the workdir's lock; a workdir this created and left empty is removed."""
    created = "://" not in workdir and not os.path.exists(workdir)
    workdir_lib.prepare_for_writing(workdir)
    try:
        with runlock.hold(workdir):
            yield
    finally:
        if created and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)


def _run_mode(mode: str, config, workdir: str):
    """Turns the config into settings (the one crossing), checks that they fit --mode, then
    dispatches to the mode's function."""
    from ebm_vs_score import preflight

    s = settings_lib.from_config(config, num_devices=jax.device_count())
    preflight.check_mode(mode, s)
    if mode == "train":
        from ebm_vs_score.train import train_and_evaluate

        return train_and_evaluate(s, workdir, allow_config_change=_ALLOW_CHANGE.value)
    if mode in ("eval", "sample", "inpaint") or (mode == "energy_vs_ode" and s.study is None):
        workdir_lib.require_run(workdir, mode)
    if mode in ("eval", "sample"):
        preflight.check(s, num_devices=jax.device_count())
    module, name = _MODES[mode]
    run = getattr(importlib.import_module(module), name)
    if mode not in _LOCKED_MODES:
        return run(s, workdir)
    with _locked(workdir):
        return run(s, workdir)


def _coordinator_watchdog(timeout: int) -> threading.Timer:
    """Says in one sentence that the coordinator did not answer, before JAX aborts (JAX
    ends the process with a C++ fatal error and no Python exception)."""
    address, process = _COORDINATOR.value, _PROCESS_ID.value
    if not address:
        what = "the other processes of this multi-process run did not all start"
    elif process == 0:
        what = (f"the other {(_NUM_PROCESSES.value or 2) - 1} process(es) did not connect to "
                f"the coordinator at {address}")
    else:
        what = f"nobody answered at the coordinator address {address}"
    message = (f"error: {what} within {timeout} s (--coordinator_timeout); start every process "
               "with the same --coordinator_address and --num_processes and its own "
               "--process_id (0 on the coordinator's host), check that the address is "
               "reachable from here, or raise --coordinator_timeout\n")

    def give_up():
        os.write(2, message.encode())
        os._exit(1)

    timer = threading.Timer(timeout, give_up)
    timer.daemon = True
    return timer


def _initialize_distributed() -> None:
    if not (_COORDINATOR.value or _DISTRIBUTED.value):
        return
    timeout = int(_COORDINATOR_TIMEOUT.value)
    logging.info("connecting to the other processes (coordinator %s, up to %d s)",
                 _COORDINATOR.value or "auto-detected", timeout)
    watchdog = _coordinator_watchdog(timeout)
    watchdog.start()
    try:  # JAX's own deadline comes later than the watchdog's, so the sentence is said
        if _COORDINATOR.value:
            jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                       num_processes=_NUM_PROCESSES.value,
                                       process_id=_PROCESS_ID.value,
                                       initialization_timeout=timeout + 30)
        else:
            jax.distributed.initialize(initialization_timeout=timeout + 30)
    finally:
        watchdog.cancel()


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
    if workdir and "://" not in workdir and os.path.isdir(workdir) and os.access(
            workdir, os.W_OK):
        try:
            with open(os.path.join(workdir, "error.log"), "a") as f:
                f.write(f"error: {message}\n{traceback.format_exc()}")
        except OSError:  # a full disk: the sentence below is what matters
            pass
    sys.stderr.write(f"error: {message}\n")
    sys.exit(status)


def _one_line(text) -> str:
    return " ".join(str(text).replace("\\n", " ").split())


def _load_config():
    """The --config value; ml_collections loads a missing file only when it is read."""
    try:
        config = _CONFIG.value
        config.get("seed")  # a config file that failed to load raises on first access
        return config
    except (AttributeError, KeyError, OSError, SyntaxError) as e:
        _fail(config_file.override_error(e, sys.argv), None)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, after running the --config file once (``config_file``), with
    one sentence instead of a traceback for a config file or override that fails."""
    found = config_file.path_from_argv(argv)
    if found is not None:
        problem = config_file.check(*found)
        if problem:
            _fail(problem, None)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, (AttributeError, KeyError, OSError, SyntaxError)):
            _fail(config_file.override_error(cause, argv), None)
        _fail(f"{_one_line(e)} (see --helpshort)", None)
    except (AttributeError, KeyError, OSError, SyntaxError) as e:
        _fail(config_file.override_error(e, argv), None)
    return []  # not reached


def _take_over_signals() -> None:
    """SIGTERM and Ctrl-C from now on (``checkpoints.catch_stop_signals``).

    Training in one process (train, study, compose, inpaint's runs): both make the train
    loop save its current step once and stop; a second Ctrl-C exits at once. Several
    processes: JAX's preemption service owns SIGTERM and Ctrl-C exits at once; so does
    Ctrl-C in eval and sample. A SIGTERM that came during start-up of a run that does not
    save stops it before any work (status 75, nothing written).
    """
    distributed = _COORDINATOR.value or _DISTRIBUTED.value
    save = not distributed and _MODE.value in _SAVING_MODES
    checkpoints.catch_stop_signals(save=save, already_received=tuple(_EARLY_SIGNALS))
    if save:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.SIGTERM in _EARLY_SIGNALS:
        sys.stderr.write("preempted before the run started: rerun the same command\n")
        sys.exit(errors.PREEMPTED_EXIT_STATUS)


def _stop_status() -> tuple[str, int]:
    if checkpoints.stop_signal() == signal.SIGINT:
        return "interrupted", errors.INTERRUPTED_EXIT_STATUS
    return "preempted", errors.PREEMPTED_EXIT_STATUS


def _disk_full(workdir: str) -> errors.DiskFullError:
    """The sentence of a write that found no space, outside a checkpoint save."""
    newest = checkpoints.newest_on_disk(workdir)
    if newest is None:
        return workdir_lib.disk_full(workdir, 0, "")
    step, size = newest
    return workdir_lib.disk_full(workdir, size + (1 << 20), f"to resume from step {step}")


def _run(config, workdir: str, mode: str):
    """The mode, with every failure a user can cause turned into one sentence."""
    try:
        return _run_mode(mode, config, workdir)
    except errors.UserError as e:
        message = _one_line(str(e).splitlines()[0]) if str(e) else type(e).__name__
        stopped = checkpoints.sigterm_received() and mode in ("study", "compose")
        ours = not isinstance(e, errors.WorkdirBusyError)  # else: another run's workdir
        _fail(message, workdir if ours else None, _stop_status()[1] if stopped else 1)
    except Exception as e:
        if errors.is_disk_full(e):
            _fail(str(_disk_full(workdir)), workdir)
        if checkpoints.sigterm_received():  # a mode that reports a stopped run its own way
            word, status = _stop_status()
            _fail(f"{word}: {errors.first_line(e)}", workdir, status)
        raise


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected argument(s) {' '.join(argv[1:])}: every option is a flag, e.g. "
              "--config=configs/toy_score.py --workdir=DIR (quote values with spaces)", None)
    _take_over_signals()
    library_reports.quiet_library_info()
    hostcpu.use_fast_cpu_kernels()  # before JAX starts: XLA:CPU's Eigen convolutions
    config, workdir, mode = _load_config(), _WORKDIR.value, _MODE.value
    _use_every_cpu_core(config)
    _initialize_distributed()
    if jax.process_count() > 1:
        logging.info("JAX process %d/%d, devices: %s", jax.process_index(),
                     jax.process_count(), jax.devices())
    result = _run(config, workdir, mode)
    if mode == "train" and int(result.step) < int(config.training.n_iters):
        word, status = _stop_status()
        saved = ("its checkpoint is saved" if int(result.step) > 0
                 else "nothing was trained yet")
        sys.stderr.write(f"{word} at step {int(result.step)}: {saved}; rerun the same command "
                         f"to resume (exit status {status})\n")
        sys.exit(status)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
