"""One XLA:CPU device per core, so that the data-parallel mesh keeps every core busy.

XLA:CPU runs most of the small convolutions of these U-Nets on one thread: the digits
demo kept 1.06 of 2 cores busy. Exposing one host device per core (``jax_num_cpu_devices``)
turns the one ``data`` mesh of DESIGN.md rule 3 into data parallelism across cores, with
no code path of its own: the batch is split over the devices exactly as over GPUs.

It must run before JAX starts its backends (before the first ``jax.devices()`` or array),
which is why ``main`` calls it first. It changes nothing where the user chose already
(``JAX_NUM_CPU_DEVICES`` or ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``)
or once the backends are up; ``main`` does not call it in multi-process runs (each
process's devices come from the launcher). On GPU and TPU hosts the extra CPU devices
exist but are unused: the mesh is built from ``jax.devices()``, the accelerators.
"""

from __future__ import annotations

import os

import jax


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def devices_for_batch(batch_size: int | None, cores: int) -> int:
    """The largest device count ≤ ``cores`` that divides ``batch_size`` (the mesh needs it)."""
    if not batch_size:
        return cores
    return max(n for n in range(1, cores + 1) if batch_size % n == 0)


def user_chose() -> bool:
    flags = os.environ.get("XLA_FLAGS", "")
    return "JAX_NUM_CPU_DEVICES" in os.environ or "host_platform_device_count" in flags


def use_cpu_cores(batch_size: int | None = None, cores: int | None = None) -> int:
    """Asks JAX for one CPU device per core (at most, a divisor of ``batch_size``).

    Args:
      batch_size: the global batch the mesh will split; None: no constraint.
      cores: how many cores to use; None: every core of this process's affinity mask.

    Returns:
      The CPU device count asked for, or 0 where nothing was changed (the user chose, or
      JAX's backends already started). Multi-process runs must not call it: each
      process's devices come from its launcher.
    """
    if user_chose() or _backends_up():
        return 0
    n = devices_for_batch(batch_size, cores or cpu_cores())
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialized: too late, keep what is there
        return 0
    except AttributeError:  # a JAX before the option (< 0.5): XLA's flag, read at start-up
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n


def _backends_up() -> bool:
    """Whether JAX's backends have started (after that the device count is fixed)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the probe: let update() decide
        return False
