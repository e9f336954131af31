"""Timing, compile-time, memory and FLOP measurements shared by every benchmark row.

All times are wall-clock seconds of work that has finished on the device
(``jax.block_until_ready``), taken after compilation and one warm-up call, as the median
over ``repeats`` repeats of ``n`` back-to-back calls (``n`` calibrated so that a repeat
lasts at least ``min_time``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops as flops_lib
from ebm_vs_score import results as records


@dataclasses.dataclass
class Timing:
    """Seconds per call: the median over repeats, every repeat, and the calls per repeat.

    ``cpu_s`` is the process's CPU time (all threads, ``time.process_time``) per call, median
    over repeats: on a CPU backend it is the work done, which other processes on a shared
    machine inflate much less than the wall time (on GPU it is only the host's share).
    """

    median_s: float
    times_s: list[float]
    calls_per_repeat: int
    cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"time_s": self.median_s, "times_s": self.times_s,
                "calls_per_repeat": self.calls_per_repeat, "cpu_time_s": self.cpu_s}


def time_runner(run: Callable[[int], None], *, repeats: int, min_time: float) -> Timing:
    """Times ``run(n)``, which must do ``n`` calls and block until they are done.

    One warm-up call (not timed), one calibration call, then ``repeats`` timed repeats of
    ``n = ceil(min_time / t_calibration)`` calls each.
    """
    run(1)
    start = time.perf_counter()
    run(1)
    first = time.perf_counter() - start
    n = max(1, math.ceil(min_time / max(first, 1e-9))) if min_time > 0 else 1
    times, cpu = [], []
    for _ in range(max(1, repeats)):
        start, start_cpu = time.perf_counter(), time.process_time()
        run(n)
        times.append((time.perf_counter() - start) / n)
        cpu.append((time.process_time() - start_cpu) / n)
    return Timing(statistics.median(times), times, n, statistics.median(cpu))


def call_runner(fn: Callable, *args) -> Callable[[int], None]:
    """A runner for a pure function: ``n`` independent calls, blocking on the last one.

    Calls on one device execute in order, so the last result being ready means all are.
    """

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)

    return run


def compile_timed(jitted, *args) -> tuple[Any, dict[str, float]]:
    """``jitted.lower(*args).compile()``, how long tracing+lowering and XLA took, and the
    program's FLOPs.

    ``flops`` are model FLOPs counted on the jaxpr (``benchmarks/flops.py``: matrix
    products and convolutions, the same on every backend); ``xla_flops`` is XLA's cost
    analysis of the lowered program, which depends on the backend (on the GPU it left out
    the convolutions: 194.9 of a CIFAR U step's 4,777 GFLOP) and counts a loop body once.
    """
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return compiled, {"lower_s": lower_s, "compile_s": compile_s,
                      "flops": flops_lib.model_flops(jitted, *args),
                      "xla_flops": cost_flops(lowered)}


def cost_flops(program) -> float | None:
    """FLOPs of one call of a lowered or compiled program by XLA's cost analysis (None where
    the backend gives none).

    XLA counts a ``while``/``scan`` body once, not once per trip: use only for straight-line
    programs (train steps, single network evaluations).
    """
    try:
        cost = program.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def memory_info(compiled) -> dict[str, Any]:
    """XLA's static memory analysis of one executable and the device/process peak so far.

    ``xla_total_bytes`` = arguments + outputs + temporaries - donated (aliased) bytes: the
    executable's own footprint, comparable across rows. ``peak_bytes`` is the device's
    ``peak_bytes_in_use`` where the backend reports it (GPU/TPU), otherwise the process's
    maximum resident set size (``ru_maxrss``, CPU); both are peaks over the whole process
    so far, not of this row alone (``peak_source`` says which).
    """
    info: dict[str, Any] = {}
    try:
        mem = compiled.memory_analysis()
    except Exception:
        mem = None
    if mem is not None:
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                  "temp_size_in_bytes")
        info.update({f.replace("_size_in_bytes", "_bytes"): int(getattr(mem, f)) for f in fields})
        info["xla_total_bytes"] = (info["argument_bytes"] + info["output_bytes"]
                                   + info["temp_bytes"] - info["alias_bytes"])
    info.update(peak_memory())
    return info


def peak_memory() -> dict[str, Any]:
    """``{'peak_bytes', 'peak_source'}``: device peak if available, else process max RSS."""
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return {"peak_bytes": int(stats["peak_bytes_in_use"]),
                "peak_source": "device.memory_stats()['peak_bytes_in_use'] (process so far)"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return {"peak_bytes": int(rss), "peak_source": "process max RSS, ru_maxrss (process so far)"}


def matmul_peak(n: int, dtype: str, *, repeats: int, min_time: float) -> dict[str, Any]:
    """Achieved FLOP/s of an ``n x n`` by ``n x n`` matmul in ``dtype`` (default precision)."""
    keys = jax.random.split(jax.random.PRNGKey(0))
    a, b = (jax.random.normal(k, (n, n), jnp.dtype(dtype)) for k in keys)
    compiled, _ = compile_timed(jax.jit(jnp.matmul), a, b)
    timing = time_runner(call_runner(compiled, a, b), repeats=repeats, min_time=min_time)
    flops = 2.0 * n**3
    return {"n": n, "dtype": dtype, "flops": flops, **timing.as_dict(),
            "flops_per_s": flops / timing.median_s}


def machine_info(argv: list[str], module: str = "benchmarks.run") -> dict[str, Any]:
    """Devices, platform, cores, versions, date, load and the exact command line."""
    import jaxlib

    devices = jax.devices()
    return {
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "num_devices": len(devices),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_model": records.cpu_model(),
        "cpu_id": records.cpu_id(),  # family/model and vector units, where the name is generic
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "numpy_version": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": list(os.getloadavg()),
        "command": " ".join([os.path.basename(sys.executable), "-m", module, *argv]),
        "commit": records.commit()[0],  # the code measured (ebm_vs_score.results reads it)
    }
