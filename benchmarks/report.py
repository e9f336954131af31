"""Ratios between rows, and the plain-text tables printed at the end of a run."""

from __future__ import annotations

import subprocess
from typing import Any


def add_ratios(rows: list[dict], field: str = "time_s") -> dict[str, dict[str, float]]:
    """Per scale and precision, each train family's ``field`` over U's (``'C/U'`` = 2: C
    costs 2x U); bfloat16 rows are compared with bfloat16 U under the key ``<scale>-bf16``.

    ``field`` is ``time_s`` (wall) or ``cpu_time_s``; writes ``<field>_vs_U`` (``time_vs_U``
    for wall time) into each train row. Rows that failed are skipped.
    """
    train = [r for r in rows if r["kind"] == "train" and field in r]
    name = "time_vs_U" if field == "time_s" else f"{field[:-2]}_vs_U"
    ratios: dict[str, dict[str, float]] = {}
    for scale in dict.fromkeys(_group(r) for r in train):
        base = next((r for r in train if _group(r) == scale and r["family"] == "U"), None)
        if base is None:
            continue
        for r in train:
            if _group(r) == scale:
                r[name] = r[field] / base[field]
                if r["family"] != "U":
                    ratios.setdefault(scale, {})[f"{r['family']}/U"] = r[name]
    return ratios


def _group(row: dict) -> str:
    """The ratio group of a train row: its scale, ``-bf16`` appended for bfloat16 compute."""
    return row["scale"] + ("-bf16" if row.get("dtype") == "bfloat16" else "")


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mib(row: dict) -> float | None:
    b = row.get("memory", {}).get("xla_total_bytes")
    return None if b is None else b / 2**20


def _table(title: str, header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([title, fmt(header), fmt(["-" * w for w in widths])]
                     + [fmt(x) for x in lines])


def train_table(rows: list[dict], peaks: dict[str, float | None]) -> str:
    """``% peak``: achieved FLOP/s over the matmul peak of the row's compute dtype (float32
    rows against the float32 matmul, bfloat16 rows against the bfloat16 one)."""
    header = ["row", "batch", "steps/s", "examples/s", "ms/step", "cpu ms", "x U",
              "compile s", "GFLOP/step", "% peak", "XLA MiB"]
    lines = []
    for r in rows:
        peak = peaks.get(r.get("dtype", "float32"))
        frac = None if not (peak and r.get("flops_per_s")) else 100 * r["flops_per_s"] / peak
        flops = None if r.get("flops") is None else r["flops"] / 1e9
        lines.append([r["name"], str(r["batch"]), _f(r.get("steps_per_s"), ".2f"),
                      _f(r.get("examples_per_s"), ".0f"), _f(_ms(r.get("time_s")), ".2f"),
                      _f(_ms(r.get("cpu_time_s")), ".1f"),
                      _f(r.get("time_vs_U"), ".2f"), _f(r.get("compile_s"), ".1f"),
                      _f(flops, ".2f"), _f(frac, ".1f"), _f(_mib(r), ".0f")])
    return _table("training step (compile_train_step; after compile, median)", header, lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def sampler_table(rows: list[dict]) -> str:
    header = ["row", "batch", "steps", "NFE", "ms total", "ms/NFE", "bare ms", "loop ms",
              "overhead", "compile s", "accept"]
    lines = [[r["name"], str(r["batch"]), str(r.get("num_steps", "-")), _f(r.get("nfe"), ".0f"),
              _f(_ms(r.get("time_s")), ".1f"), _f(_ms(r.get("time_per_nfe_s")), ".3f"),
              _f(_ms(r.get("bare_eval_s")), ".3f"), _f(_ms(r.get("bare_loop_eval_s")), ".3f"),
              _f(r.get("overhead"), "+.2f"),
              _f(r.get("compile_s"), ".1f"),
              _f(r.get("info", {}).get("acceptance"), ".2f")] for r in rows]
    return _table("samplers (overhead = (time / NFE) / loop ms - 1; loop ms: one score eval in a "
                  "compiled loop of them, bare ms: one lone call)", header, lines)


def asym_table(rows: list[dict]) -> str:
    probes = sorted({int(k) for r in rows for k in r.get("probes", {})})
    header = ["row", "batch", "fwd ms", "score ms"]
    header += [h for k in probes for h in (f"K={k} ms/probe", f"K={k} probe/fwd")]
    lines = []
    for r in rows:
        line = [r["name"], str(r["batch"]), _f(_ms(r.get("forward_s")), ".3f"),
                _f(_ms(r.get("score_eval_s")), ".3f")]
        for k in probes:
            p = r.get("probes", {}).get(str(k), {})
            line += [_f(_ms(p.get("per_probe_s")), ".3f"),
                     _f(p.get("per_probe_over_forward"), ".2f")]
        lines.append(line)
    return _table("Hutchinson Asym (per probe vs one network forward)", header, lines)


def render(result: dict) -> str:
    """All tables of a run, with the machine line and any errors."""
    m = result["machine"]
    peaks = result.get("peak", {})
    peak_rates = {d: p.get("flops_per_s") for d, p in peaks.items()}
    parts = [f"{m['device_kind']} ({m['platform']}, {m['cpu_count']} cpus), jax "
             f"{m['jax_version']}, {m['date']}, load {m['load_average_start']}",
             "matmul peak: " + ", ".join(f"{d} {p['flops_per_s'] / 1e9:.1f} GFLOP/s (n={p['n']})"
                                         for d, p in peaks.items())]
    rows = result["rows"]
    for kind, render_fn in (("train", lambda r: train_table(r, peak_rates)),
                            ("sampler", sampler_table), ("asym", asym_table)):
        chosen = [r for r in rows if r["kind"] == kind and "error" not in r]
        if chosen:
            parts.append(render_fn(chosen))
    for key, what in (("ratios", "wall-time"), ("ratios_cpu", "CPU-time")):
        if result.get(key):
            parts.append(f"{what} ratios vs U: " + "; ".join(
                f"{s}: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items())
                for s, r in result[key].items()))
    parts += [f"ERROR {r['name']}: {r['error']}" for r in rows if "error" in r]
    return "\n\n".join(parts)


def checkout_commit(tree: str) -> dict:
    """The commit of a git checkout ``tree`` and whether tracked files differ from it."""
    def git(*cmd):
        r = subprocess.run(["git", "-C", tree, *cmd], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    return {"tree": tree, "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
