"""``--profile DIR``: an XLA profile of a few train steps, and where their time goes.

The trace (``jax.profiler.trace``) opens in TensorBoard's profile plugin or Perfetto; the
optimized HLO of each step is written beside it; and the host-side XLA op events of the
trace (XLA:CPU thunks) are summed per op kind within each row, so that the largest costs
are printed without any viewer. On GPU the device ops appear on their own planes and the
summary then only covers host-side events; use the viewer there.
"""

from __future__ import annotations

import collections
import glob
import os
import re

import jax

_SKIP = ("ROW ", "ThunkExecutor", "SlinkyThreadPool", "$")


def capture(directory: str, runners: dict, steps: int) -> dict:
    """Traces ``steps`` steps of every ``runners[name] = (compiled, run)``; returns
    ``{'dir', 'steps', 'hlo': [paths], 'top_ops': {name: [[op kind, ms/step, share]]}}``."""
    os.makedirs(directory, exist_ok=True)
    with jax.profiler.trace(directory):
        for name, (_, run) in runners.items():
            with jax.profiler.TraceAnnotation("ROW " + name):
                run(steps)
    hlo = []
    for name, (compiled, _) in runners.items():
        path = os.path.join(directory, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".hlo.txt")
        with open(path, "w") as f:
            f.write(compiled.as_text())
        hlo.append(path)
    try:
        top = summarize(directory, steps)
    except Exception as e:  # the summary is a convenience; the trace is what matters
        top = {"error": f"{type(e).__name__}: {e}"}
    return {"dir": directory, "steps": steps, "hlo": hlo, "top_ops": top}


def summarize(directory: str, steps: int, top: int = 12) -> dict:
    """Thread-time per op kind (``fusion.12`` -> ``fusion``) inside each row's window."""
    paths = sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True))
    data = jax.profiler.ProfileData.from_file(paths[-1])
    lines = [line for plane in data.planes for line in plane.lines]
    windows = [(e.name[4:], e.start_ns, e.start_ns + e.duration_ns)
               for line in lines for e in line.events if e.name.startswith("ROW ")]
    out = {}
    for name, start, end in windows:
        per_kind: collections.Counter = collections.Counter()
        for line in lines:
            if line.name == "python":
                continue
            for e in line.events:
                if start <= e.start_ns < end and not e.name.startswith(_SKIP):
                    per_kind[re.sub(r"\.\d+$", "", e.name)] += e.duration_ns
        total = sum(per_kind.values()) or 1
        out[name] = [[kind, ns / 1e6 / steps, ns / total] for kind, ns in
                     per_kind.most_common(top)]
    return out


def render(top_ops: dict) -> str:
    if "error" in top_ops:
        return f"profile summary unavailable: {top_ops['error']}"
    parts = []
    for name, ops in top_ops.items():
        parts.append(f"{name}: op kinds by thread-time (ms/step, share)\n" + "\n".join(
            f"  {ms:9.2f}  {100 * share:5.1f}%  {kind}" for kind, ms, share in ops))
    return "\n".join(parts)
