"""The CPU's fast path: XLA:CPU's own (Eigen) convolutions, and optionally one device per core.

``use_fast_cpu_kernels`` sets ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK
fusions) in ``XLA_FLAGS``, so that XLA:CPU runs convolutions and matrix products on its own
multi-threaded Eigen kernels, which are faster than YNNPACK's for the U-Net's 3x3
convolution weight gradients on x86-64 (BENCHMARKS.md; the measurements behind it:
docs/notes/cpu_fast_path.md). XLA's own reductions are slow, so the U-Net writes its
per-channel gradient sums as matrix products on the CPU (``models/channelwise.py``). It sets
the flag only on x86-64 (the CPUs measured), only where this jaxlib defines the flag (an
unknown XLA flag aborts the process), and never where the user's ``XLA_FLAGS`` mention it or
``EBM_XLA_CPU_DEFAULTS=1`` asks to keep XLA's defaults. ``main``, the benchmarks and the
tests call it before JAX starts; a notebook calls it before its first JAX array.

``use_cpu_cores`` (opt-in, ``EBM_CPU_DEVICES=all`` in ``main``): one XLA:CPU device per core
(``jax_num_cpu_devices``). It turns the one ``data`` mesh of DESIGN.md rule 3 into data
parallelism across cores, with no code path of its own: the batch is split over the devices
exactly as over GPUs. It is opt-in because multi-device XLA:CPU runs can hang in an
all-reduce on a loaded machine (docs/notes/cpu_fast_path.md).

Both must run before JAX starts its backends (before the first ``jax.devices()`` or array),
which is why ``main`` calls them first. They change nothing where the user chose already
(``JAX_NUM_CPU_DEVICES`` or ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``) or
once the backends are up; ``main`` does not call ``use_cpu_cores`` in multi-process runs
(each process's devices come from the launcher). On GPU and TPU hosts the extra CPU devices
exist but are unused: the mesh is built from ``jax.devices()``, the accelerators.
"""

from __future__ import annotations

import glob
import mmap
import os
import platform

import jax

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
KEEP_DEFAULTS_ENV = "EBM_XLA_CPU_DEFAULTS"
MEASURED_MACHINES = ("x86_64", "amd64")
CPU_DEVICES_ENV = "EBM_CPU_DEVICES"  # 'all': one XLA:CPU device per core (use_cpu_cores)


def devices_asked_for() -> bool:
    """Whether ``EBM_CPU_DEVICES=all`` asks for one XLA:CPU device per core."""
    return os.environ.get(CPU_DEVICES_ENV) == "all"


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


def use_fast_cpu_kernels() -> bool:
    """Turns XLA:CPU's YNNPACK fusions off, so that convolutions and matrix products run on
    XLA's multi-threaded Eigen kernels (module docstring). Returns whether it did; a no-op
    once the backends are up, off x86-64, where the user's ``XLA_FLAGS`` mention the flag,
    with ``EBM_XLA_CPU_DEFAULTS=1``, or where this jaxlib lacks the flag."""
    flags = os.environ.get("XLA_FLAGS", "")
    if (YNN_FLAG in flags or os.environ.get(KEEP_DEFAULTS_ENV, "") not in ("", "0")
            or platform.machine().lower() not in MEASURED_MACHINES
            or _backends_up() or not _xla_knows(YNN_FLAG)):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{YNN_FLAG}=".strip()
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
