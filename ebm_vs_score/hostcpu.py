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

import glob
import mmap
import os

import jax

# XLA:CPU aborts the whole process ("Termination timeout for `all reduce` ... exceeded")
# when one device thread waits more than 40 s (the default) for another at a collective.
# On a loaded machine (more runnable threads than cores) a device thread can be off the
# CPU that long: two study processes on 2 cores died this way mid-run. An hour still
# stops a real deadlock; the user's own XLA_FLAGS value wins.
COLLECTIVE_TIMEOUT_FLAG = "xla_cpu_collective_call_terminate_timeout_seconds"
COLLECTIVE_TIMEOUT_S = 3600


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
    if n > 1:
        tolerate_descheduled_devices()
    return n


def tolerate_descheduled_devices() -> bool:
    """Raises XLA:CPU's collective termination timeout to ``COLLECTIVE_TIMEOUT_S`` (see
    above) unless XLA_FLAGS sets it or this jaxlib lacks the flag (an unknown XLA flag is
    fatal). Returns whether it was set; it must run before the backends start."""
    flags = os.environ.get("XLA_FLAGS", "")
    if COLLECTIVE_TIMEOUT_FLAG in flags or not _xla_knows(COLLECTIVE_TIMEOUT_FLAG):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{COLLECTIVE_TIMEOUT_FLAG}={COLLECTIVE_TIMEOUT_S}".strip()
    return True


def _xla_knows(flag: str) -> bool:
    """Whether the installed jaxlib's XLA defines ``flag`` (its name is in the library)."""
    import jaxlib

    needle = flag.encode()
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "**", "*.so"),
                          recursive=True):
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
        except (OSError, ValueError):  # unreadable or empty file
            continue
    return False


def _backends_up() -> bool:
    """Whether JAX's backends have started (after that the device count is fixed)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the probe: let update() decide
        return False
