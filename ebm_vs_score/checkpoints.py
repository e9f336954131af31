"""Orbax checkpoints of the train state, and saving on preemption (DESIGN.md rule 6).

Checkpoints are written atomically by Orbax (a temporary directory renamed when
complete), so a kill at any moment leaves either the previous checkpoints or a new
complete one, never a half-written one.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils


class Checkpointer:
    """Keeps the last ``max_to_keep`` train states under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        # Local paths become absolute (Orbax needs that); gs:// and other URLs pass through.
        root = workdir if "://" in workdir else os.path.abspath(workdir)
        self.directory = epath.Path(root) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` at ``step`` (collectively on every process)."""
        tree = flax.serialization.to_state_dict(state)
        self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restores into the structure (and shardings) of ``template``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = flax.serialization.to_state_dict(template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return flax.serialization.from_state_dict(template, tree)

    def close(self) -> None:
        self._manager.close()


class PreemptionWatcher:
    """Turns SIGTERM into a flag the train loop polls between steps.

    With several processes, all must agree on the step at which to stop, so the check
    uses JAX's preemption sync point (set up by ``jax.distributed.initialize``).
    """

    def __init__(self):
        self._flag = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def _handle(self, signum, frame):
        del signum, frame
        self._flag = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._flag
        return multihost_utils.reached_preemption_sync_point(step)
