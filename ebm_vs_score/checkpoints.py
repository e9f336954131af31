"""Orbax checkpoints of the train state, fallback past broken ones, and preemption
(DESIGN.md rule 6).

* Saving is atomic (Orbax writes a temporary directory and renames it when complete), so a
  kill at any moment leaves the previous checkpoints plus, at most, one complete new one;
  temporary directories of an interrupted save are never listed as steps. A step is saved
  at most once: saving a step that is already there is a no-op (a SIGTERM right after a
  periodic save does not save again).
* Restoring without a step takes the newest checkpoint that loads: one that fails (a
  truncated or missing file) is reported in one sentence (log + ``WORKDIR/error.log``) and
  the next older one is used. Nothing is deleted; a training run moves the broken step to
  ``WORKDIR/checkpoints_broken/`` so that it can save that step again (and says so).
* A full disk: a save that fails with ENOSPC removes its own partial step (never an older
  one) and raises :class:`~ebm_vs_score.errors.DiskFullError` naming the workdir and the
  space one more checkpoint needs.
* Ctrl-C (SIGINT) in a training run is handled like preemption: the loop saves the current
  step once and ``main`` exits 130; a second Ctrl-C exits at once. A thread reading
  CPython's signal wakeup fd sees it even while the main thread is inside XLA.
* Preemption: SIGTERM sets a flag that the train loop polls between steps; with several
  processes JAX's preemption sync point (the mechanism Orbax's own ``reached_preemption``
  uses) makes them all stop at the same step. Orbax's built-in check needs
  ``jax.distributed`` and so does nothing for a single process, hence this small watcher.
  Saves are synchronous: a toy or digits checkpoint takes milliseconds, and a save that is
  complete when ``save`` returns is what makes "saved at most once, then exit" simple.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ebm_vs_score import errors, library_reports
from ebm_vs_score.errors import INTERRUPTED_EXIT_STATUS, CheckpointError

BROKEN_DIR = "checkpoints_broken"


class Checkpointer:
    """Keeps the last ``max_to_keep`` train states under ``workdir/checkpoints``.

    Args:
      workdir: the run's directory (local path or URL such as ``gs://``).
      max_to_keep: number of newest checkpoints kept.
      set_aside_broken: when a restore falls back past a broken checkpoint, move it to
        ``workdir/checkpoints_broken/`` (training: the step will be saved again); when
        False (evaluation) nothing is moved.
    """

    def __init__(self, workdir: str, max_to_keep: int = 3, *, set_aside_broken: bool = False):
        # Local paths become absolute (Orbax needs that); gs:// and other URLs pass through.
        root = workdir if "://" in workdir else os.path.abspath(workdir)
        self.workdir = epath.Path(root)
        self.directory = self.workdir / "checkpoints"
        self._set_aside_broken = set_aside_broken
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=False, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        # a failed save or restore reports once, in a sentence
        library_reports.silence_late_library_reports()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> bool:
        """Saves ``state`` at ``step`` (collectively on every process) unless that step is
        already saved; returns whether it saved.

        Raises:
          DiskFullError: the disk is full; the partial step is removed, older steps are
            untouched (one sentence naming the workdir and the space needed).
        """
        if step in self._manager.all_steps():
            return False
        tree = flax.serialization.to_state_dict(state)
        reports: list[str] = []
        try:
            with library_reports.library_reports(reports):
                self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
                self._manager.wait_until_finished()
        except Exception as e:
            self._log_reports(reports)
            library_reports.mute_late_orbax_errors()  # other I/O threads fail likewise, later
            if not errors.is_disk_full(e):
                raise
            self._remove_partial(step)
            raise self.disk_full(tree) from e
        sys.stderr.write("".join(reports))  # a save that worked: nothing is hidden
        return True

    def _log_reports(self, reports: list[str]) -> None:
        """Orbax's own reports of a failed save go to error.log, not the console."""
        if not reports or jax.process_index() != 0 or "://" in str(self.workdir):
            return
        try:
            with (self.workdir / "error.log").open("a") as f:
                f.write("".join(reports))
        except OSError:  # the disk may be full: the sentence of the error is what matters
            pass

    def _remove_partial(self, step: int) -> None:
        """Deletes what an interrupted save of ``step`` wrote (Orbax's temporary directory,
        or the step directory if Orbax had renamed it already): never an older step."""
        if jax.process_index() != 0 or not self.directory.exists():
            return
        for path in self.directory.iterdir():
            name = path.name
            if name != str(step) and not name.startswith(f"{step}.orbax-checkpoint-tmp"):
                continue
            if "://" in str(path):
                path.rmtree(missing_ok=True)
            else:
                shutil.rmtree(path, ignore_errors=True)

    def state_bytes_on_disk(self, tree: Any) -> int:
        """Space one checkpoint takes: the newest one on disk, or the state's bytes."""
        newest = newest_on_disk(str(self.workdir))
        if newest is not None:
            return newest[1]
        return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))

    def disk_full(self, tree: Any) -> errors.DiskFullError:
        """The one-sentence error of a checkpoint that did not fit on the disk."""
        from ebm_vs_score import workdir as workdir_lib

        newest = self.latest_step()
        # Orbax writes a step in full before it deletes the oldest one: room for one more
        # checkpoint, and a margin for its metadata and the run's logs.
        needed = self.state_bytes_on_disk(tree) + (1 << 20)
        resume = (f"to resume from step {newest}" if newest is not None
                  else "to start the run again")
        return workdir_lib.disk_full(str(self.workdir), needed, resume)

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restores into the structure (and shardings) of ``template``.

        Args:
          template: a train state with the shapes, dtypes and shardings to restore into.
          step: the step to restore; None: the newest checkpoint that loads.

        Raises:
          CheckpointError: no checkpoint, the given step is missing or broken, or none loads.
        """
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}; train first with "
                                  "--mode=train and the same --config and --workdir")
        if step is not None:
            return self._restore_given(template, step, steps)
        broken = []
        for i, candidate in enumerate(reversed(steps)):
            try:
                state = self._restore_step(template, candidate)
            except Exception as e:  # noqa: BLE001 - any failure to load means "broken"
                older = steps[-i - 2] if i + 1 < len(steps) else None
                self._report_broken(candidate, e, older)
                broken.append(candidate)
                continue
            self._move_aside(broken)
            return state
        raise CheckpointError(
            f"none of the checkpoints {steps} in {self.directory} can be loaded (details in "
            f"{self.workdir / 'error.log'}); they are kept as they are; if the config changed "
            "since they were written, rerun with the config in config.json")

    def _restore_given(self, template: Any, step: int, steps: list[int]) -> Any:
        if step not in steps:
            raise CheckpointError(f"checkpoint {step} is not in {self.directory}; available "
                                  f"steps: {steps}")
        try:
            return self._restore_step(template, step)
        except Exception as e:  # noqa: BLE001
            self._log_traceback(f"checkpoint {step} failed to load")
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} cannot be loaded "
                f"({errors.first_line(e)}); choose another step from {steps}") from None

    def _restore_step(self, template: Any, step: int) -> Any:
        target = flax.serialization.to_state_dict(template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return flax.serialization.from_state_dict(template, tree)

    def _report_broken(self, step: int, error: Exception, older: int | None) -> None:
        then = (f"using step {older} instead" if older is not None
                else "no older one is left")
        message = (f"checkpoint {step} in {self.directory} cannot be loaded "
                   f"({errors.first_line(error)}); {then}; it is not deleted")
        logging.warning("%s", message)
        self._log_traceback(message)

    def _log_traceback(self, message: str) -> None:
        if jax.process_index() != 0 or "://" in str(self.workdir):
            return
        with (self.workdir / "error.log").open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n{traceback.format_exc()}")

    def _move_aside(self, steps: list[int]) -> None:
        """Moves broken step directories out of Orbax's sight (never deletes them)."""
        if not steps or not self._set_aside_broken:
            return
        if jax.process_index() == 0:
            target = self.workdir / BROKEN_DIR
            target.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for step in steps:
                (self.directory / str(step)).rename(target / f"{step}_{stamp}")
                logging.warning("moved checkpoint %d to %s, so that the run can save that "
                                "step again", step, target / f"{step}_{stamp}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("checkpoints_moved_aside")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


def newest_on_disk(workdir: str) -> tuple[int, int] | None:
    """(step, bytes) of the newest complete checkpoint in a local ``workdir``, or None."""
    directory = os.path.join(workdir, "checkpoints")
    if "://" in workdir or not os.path.isdir(directory):
        return None
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
    if not steps:
        return None
    root = os.path.join(directory, str(steps[-1]))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
               for f in files)
    return steps[-1], size


_STOP = threading.Event()  # a stop signal (SIGTERM, or a first SIGINT) was received
_STOP_SIGNALS: list[int] = []  # the signals received, in order
_WATCHER: list[threading.Thread] = []


def _set_stop_flag(signum, frame) -> None:
    del frame
    if signum not in _STOP_SIGNALS:
        _STOP_SIGNALS.append(signum)
    _STOP.set()


def _ignore_here(signum, frame) -> None:
    """SIGINT's Python-level handler: the wakeup-fd watcher thread acts on it (so that a
    second Ctrl-C exits at once even while the main thread is inside XLA); this only keeps
    Python from raising KeyboardInterrupt."""
    del signum, frame


def _exit_now(message: str) -> None:
    os.write(2, f"{message}\n".encode())
    os._exit(INTERRUPTED_EXIT_STATUS)


def _on_sigint(save: bool) -> None:
    if save and signal.SIGINT not in _STOP_SIGNALS:
        _set_stop_flag(signal.SIGINT, None)
        os.write(2, b"interrupted: saving the current step, then exiting (press Ctrl-C again "
                    b"to exit at once without saving)\n")
        return
    _exit_now("interrupted again: exiting without saving" if save else "interrupted")


def _watch(read_fd: int, save: bool) -> None:
    """Reads the signal numbers CPython writes to the wakeup fd, as they arrive."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        if not data:
            return
        for signum in data:
            if signum == signal.SIGINT:
                _on_sigint(save)
            elif signum == signal.SIGTERM and save:
                _set_stop_flag(signum, None)


def _watch_sigint(save: bool) -> bool:
    """Installs the wakeup-fd watcher for SIGINT; False where it cannot be (not the main
    thread, or a wakeup fd already in use)."""
    if threading.current_thread() is not threading.main_thread() or _WATCHER:
        return bool(_WATCHER)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    if signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False) != -1:
        signal.set_wakeup_fd(-1)
        os.close(read_fd)
        os.close(write_fd)
        return False
    thread = threading.Thread(target=_watch, args=(read_fd, save), name="signal watcher",
                              daemon=True)
    thread.start()
    _WATCHER.append(thread)
    return True


def _ignore_while_exiting(save: bool) -> None:
    """At exit, CPython puts the default action back on signals with Python handlers,
    so a Ctrl-C (or SIGTERM) during the last second of a finished run would kill it with
    the signal instead of its exit status; ignored (which CPython keeps), it cannot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if save:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def catch_stop_signals(*, save: bool, already_received: tuple[int, ...] = ()) -> None:
    """How this process answers SIGTERM and Ctrl-C (SIGINT); ``main`` calls it first thing.

    Args:
      save: a training run in one process. SIGTERM (preemption) and a first SIGINT set the
        stop flag that the train loop polls: it saves the current step once and returns;
        a second SIGINT exits at once (status 130) without saving. Otherwise (eval, sample,
        several processes) SIGINT exits at once with status 130 and SIGTERM is left to JAX
        or to its default.
      already_received: signals that came before (during imports): they count as received.

    It touches no JAX API (that would start the backend before ``jax.distributed``).
    """
    if threading.current_thread() is threading.main_thread():
        if save:
            signal.signal(signal.SIGTERM, _set_stop_flag)
        signal.signal(signal.SIGINT, _ignore_here)
        if not _watch_sigint(save):  # no watcher: act in the Python-level handler
            signal.signal(signal.SIGINT, lambda signum, frame: _on_sigint(save))
        atexit.register(_ignore_while_exiting, save)
    for signum in already_received:
        if signum == signal.SIGINT:
            _on_sigint(save)
        elif save:
            _set_stop_flag(signum, None)


def catch_sigterm(already_received: bool = False) -> None:
    """SIGTERM sets the stop flag (one training process); SIGINT is left as it is."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _set_stop_flag)
    if already_received:
        _set_stop_flag(signal.SIGTERM, None)


def stop_signal() -> int | None:
    """The first signal that asked this process to stop (SIGTERM or SIGINT), or None."""
    return _STOP_SIGNALS[0] if _STOP_SIGNALS else None


def sigterm_received() -> bool:
    """Whether a stop signal (SIGTERM, or Ctrl-C in a training run) was received."""
    return _STOP.is_set()


class PreemptionWatcher:
    """Turns SIGTERM into a flag the train loop polls between steps.

    With several processes, all must agree on the step at which to stop, so the check
    uses JAX's preemption sync point (set up by ``jax.distributed.initialize``).
    """

    def __init__(self):
        self._previous = None

    def __enter__(self):
        installed = signal.getsignal(signal.SIGTERM) is _set_stop_flag
        if jax.process_count() == 1 and not installed:  # not by main: a fresh flag
            _STOP.clear()
            _STOP_SIGNALS.clear()
            self._previous = signal.signal(signal.SIGTERM, _set_stop_flag)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return _STOP.is_set()
        return multihost_utils.reached_preemption_sync_point(step)
