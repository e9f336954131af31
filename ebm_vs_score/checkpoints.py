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
  ``WORKDIR/checkpoints_broken/`` so that it can save that step again.
* Preemption: SIGTERM sets a flag that the train loop polls between steps; with several
  processes JAX's preemption sync point (the mechanism Orbax's own ``reached_preemption``
  uses) makes them all stop at the same step. Orbax's built-in check needs
  ``jax.distributed`` and so does nothing for a single process, hence this small watcher.
  Saves are synchronous: a toy or digits checkpoint takes milliseconds, and a save that is
  complete when ``save`` returns is what makes "saved at most once, then exit" simple.
"""

from __future__ import annotations

import os
import signal
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

from ebm_vs_score.errors import CheckpointError

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
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> bool:
        """Saves ``state`` at ``step`` (collectively on every process) unless that step is
        already saved; returns whether it saved."""
        if step in self._manager.all_steps():
            return False
        tree = flax.serialization.to_state_dict(state)
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()
        return True

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
                f"({_first_line(e)}); choose another step from {steps}") from None

    def _restore_step(self, template: Any, step: int) -> Any:
        target = flax.serialization.to_state_dict(template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return flax.serialization.from_state_dict(template, tree)

    def _report_broken(self, step: int, error: Exception, older: int | None) -> None:
        then = f"using step {older} instead" if older is not None else "no older one is left"
        kept = (f"it is moved to {self.workdir / BROKEN_DIR}" if self._set_aside_broken
                else "it is left in place")
        message = (f"checkpoint {step} in {self.directory} cannot be loaded "
                   f"({_first_line(error)}); {then}; {kept}, not deleted")
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
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("checkpoints_moved_aside")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


_SIGTERM = threading.Event()


def _set_sigterm_flag(signum, frame) -> None:
    del signum, frame
    _SIGTERM.set()


def catch_sigterm(already_received: bool = False) -> None:
    """Makes SIGTERM set the preemption flag instead of killing the process (one process).

    ``main`` calls it first thing in a single-process run, so a SIGTERM during start-up
    (restore, compilation) also ends in a clean preemption exit. It touches no JAX API
    (that would start the backend before ``jax.distributed.initialize``); with several
    processes JAX's preemption service owns SIGTERM and ``main`` does not call this.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _set_sigterm_flag)
    if already_received:  # a SIGTERM that came before this handler was installed
        _SIGTERM.set()


def sigterm_received() -> bool:
    return _SIGTERM.is_set()


class PreemptionWatcher:
    """Turns SIGTERM into a flag the train loop polls between steps.

    With several processes, all must agree on the step at which to stop, so the check
    uses JAX's preemption sync point (set up by ``jax.distributed.initialize``).
    """

    def __init__(self):
        self._previous = None

    def __enter__(self):
        installed = signal.getsignal(signal.SIGTERM) is _set_sigterm_flag
        if jax.process_count() == 1 and not installed:  # not by main: a fresh flag
            _SIGTERM.clear()
            self._previous = signal.signal(signal.SIGTERM, _set_sigterm_flag)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return _SIGTERM.is_set()
        return multihost_utils.reached_preemption_sync_point(step)
