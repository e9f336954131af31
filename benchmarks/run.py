"""Speed harness: the cost of conservativeness, in one process and one run.

    python -m benchmarks.run --suite=cpu [--out=FILE.json] [--repeats N] [--only ROWS]
                             [--profile DIR]

Times, after compilation, the real train step of U, C, C-ResNet and QC on each backbone,
the samplers per network evaluation, and the Hutchinson Asym estimator per probe; prints
tables and writes JSON (see benchmarks/README.md for every column).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import profile, report, rows, suites, timing
from ebm_vs_score import hostcpu


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True, choices=sorted(suites.SUITES))
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--repeats", type=int, help="timed repeats per row (median taken)")
    p.add_argument("--min-time", type=float, help="seconds each repeat lasts at least")
    p.add_argument("--only", help="comma-separated rows: a name part (toy, train, C) or a "
                                  "glob on the whole name ('train/digits/*')")
    p.add_argument("--sampler-steps", type=int, help="sampler num_steps (suite default)")
    p.add_argument("--asym-probes", help="comma-separated Hutchinson probe counts (suite "
                                         "default: 1,4)")
    p.add_argument("--matmul-size", type=int, help="side of the peak-FLOP/s matmul")
    p.add_argument("--profile", metavar="DIR",
                   help="also capture an XLA profile of a few U and C train steps in DIR")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--list", action="store_true", help="list the suite's rows and exit")
    return p.parse_args(argv)


def measure(spec: suites.RowSpec, opts: rows.Options, cache: dict) -> tuple[dict, Any]:
    """One row's measurements; ``cache`` shares bare evaluations between rows."""
    if spec.kind == "train":
        return rows.train_row(spec, opts)
    key = (spec.scale, spec.family, spec.batch)
    if key not in cache:
        cache[key] = rows.score_and_energy_evals(spec, opts)
    evals = cache[key]
    if spec.kind == "sampler":
        return rows.sampler_row(spec, opts, evals["score"], evals["score_loop"]), None
    return rows.asym_row(spec, opts, evals), None


def run_rows(specs: list[suites.RowSpec], opts: rows.Options,
             on_row: Callable[[list[dict]], None] = lambda rows: None
             ) -> tuple[list[dict], dict]:
    """Measures every row; a failing row records its error and the others still run.

    ``on_row(rows so far)`` runs after each row (``main`` rewrites the JSON file then, so a
    run stopped by a time limit keeps every row it finished).
    """
    results, runners, cache = [], {}, {}
    for spec in specs:
        batch = "config default" if spec.batch is None else spec.batch
        print(f"[benchmarks] {spec.name} (batch {batch}) ...", file=sys.stderr, flush=True)
        row = {k: v for k, v in dataclasses.asdict(spec).items() if v != ""}
        try:
            measured, runner = measure(spec, opts, cache)
            row.update(measured)
            if runner is not None and spec.family in ("U", "C"):
                runners[spec.name] = runner
        except Exception as e:  # record, report, go on with the next row
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"
        results.append(row)
        on_row(results)
    return results, runners


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    hostcpu.use_fast_cpu_kernels()  # as main does; and one device per core only if asked
    cpu_devices = hostcpu.use_cpu_cores() if hostcpu.devices_asked_for() else 0
    suite = suites.SUITES[args.suite]
    specs = suites.select(suites.plan(suite), args.only)
    if args.list:
        print("\n".join(s.name for s in specs))
        return {}
    opts = rows.Options(
        repeats=args.repeats or suite.repeats,
        min_time=suite.min_time if args.min_time is None else args.min_time,
        sampler_steps=args.sampler_steps or suite.sampler_steps,
        asym_probes=(tuple(int(k) for k in args.asym_probes.split(",")) if args.asym_probes
                     else suite.asym_probes),
        keep_runners=bool(args.profile))
    result: dict[str, Any] = {"schema_version": 1, "machine": timing.machine_info(argv),
                              "suite": suite.name, "options": dataclasses.asdict(opts),
                              "only": args.only, "peak": {}, "cpu_devices": cpu_devices}
    for n, dtype in suite.matmul:
        n = args.matmul_size or n
        result["peak"][dtype] = timing.matmul_peak(n, dtype, repeats=opts.repeats,
                                                   min_time=opts.min_time)
    save = lambda done: _write_json(args.out, {**result, "rows": done, "partial": True})
    result["rows"], runners = run_rows(specs, opts, save if args.out else lambda done: None)
    result["ratios"] = report.add_ratios(result["rows"], "time_s")
    result["ratios_cpu"] = report.add_ratios(result["rows"], "cpu_time_s")
    _add_peak_fractions(result)
    if args.profile:
        result["profile"] = profile.capture(args.profile, runners, args.profile_steps)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    print(report.render(result))
    if "profile" in result:
        print("\n" + profile.render(result["profile"]["top_ops"]))
    if args.out:
        _write_json(args.out, result)
        print(f"\nwrote {args.out}")
    return result


def _write_json(path: str, result: dict) -> None:
    """Writes ``result`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def _add_peak_fractions(result: dict) -> None:
    """``peak_fraction[dtype]`` = achieved FLOP/s over the matmul peak, for timed programs."""
    for row in result["rows"]:
        for r in [row, *row.get("probes", {}).values()]:
            if r.get("flops_per_s"):
                r["peak_fraction"] = {d: r["flops_per_s"] / p["flops_per_s"]
                                      for d, p in result["peak"].items()}


if __name__ == "__main__":
    out = main()
    sys.exit(1 if any("error" in r for r in out.get("rows", [])) else 0)
