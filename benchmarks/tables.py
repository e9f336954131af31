"""Document tables rendered from the harness's JSONs (``python -m ebm_vs_score.results``).

Each renderer takes the marker's :class:`ebm_vs_score.results.Spec` and its records
(label, record) and returns the block's lines; :data:`TABLE_KINDS` maps a marker's kind to
its renderer. Times are medians over the JSON's repeats; ``repeats`` and ``spread`` (max −
min over the median, in %) give each time's sample size and scatter; ``load`` is the
1-minute load average at the start and end of the run that wrote the JSON.
"""

from __future__ import annotations

import copy
import fnmatch
import statistics
from typing import Any

from benchmarks import report
from ebm_vs_score.results import RecordError, Spec


def _raw(record: Any) -> dict:
    if isinstance(record, list):  # a .jsonl source: its last run
        record = record[-1]
    return record["values"]


def _rows(raw: dict, kind: str, patterns: str | None) -> list[dict]:
    rows = [r for r in raw.get("rows", []) if r.get("kind") == kind and "error" not in r]
    if patterns:
        wanted = patterns.split(",")
        rows = [r for r in rows if any(fnmatch.fnmatchcase(r["name"], p) for p in wanted)]
    return rows


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _spread(row: dict) -> str:
    times = row.get("times_s") or []
    if len(times) < 2 or not row.get("time_s"):
        return "–"
    return f"{100 * (max(times) - min(times)) / row['time_s']:.0f}%"


def _repeats(row: dict) -> str:
    return str(len(row.get("times_s") or [])) or "–"


def _load(raw: dict) -> str:
    m = raw.get("machine", {})
    start, end = m.get("load_average_start"), m.get("load_average_end")
    if not start:
        return "–"
    return f"{start[0]:.1f} → {end[0]:.1f}" if end else f"{start[0]:.1f}"


def _cores(row: dict) -> float | None:
    if row.get("cpu_time_s") is None or not row.get("time_s"):
        return None
    return row["cpu_time_s"] / row["time_s"]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(cells) + " |" for cells in body])


def _need(records: list, count: int | None, kind: str) -> None:
    if not records or (count is not None and len(records) != count):
        raise RecordError(f"{kind} needs {count or 'at least one'} source(s), got {len(records)}")


def bench_text(spec: Spec, records: list) -> list[str]:
    """The harness's own text tables and ratio lines of one run (``report.render``), fenced."""
    _need(records, 1, "bench_text")
    parts = report.render(_raw(records[0][1])).split("\n\n")[2:]
    return ["```text", *"\n\n".join(parts).splitlines(), "```"]


def bench_train(spec: Spec, records: list) -> list[str]:
    """Train rows of one or more runs of one machine; ``x U`` recomputed over all of them
    (per scale and precision). Options: ``rows`` (comma-separated globs); ``mfu=1`` adds
    model GFLOP per step and MFU, the achieved FLOP/s over the run's own matmul peak in the
    row's compute dtype (``benchmarks/flops.py``)."""
    _need(records, None, "bench_train")
    rows = [copy.deepcopy(r) for _, rec in records
            for r in _rows(_raw(rec), "train", spec.options.get("rows"))]
    report.add_ratios(rows)
    mfu = spec.options.get("mfu") == "1"
    body = [[r["name"], str(r["batch"]), _fmt(r.get("steps_per_s"), ".2f"),
             _fmt(r.get("examples_per_s"), ",.0f"), _fmt(_ms(r.get("time_s")), ".2f"),
             _fmt(r.get("time_vs_U"), ".2f"), _fmt(r.get("compile_s"), ".1f"),
             _fmt(report._mib(r), ",.0f"), _repeats(r), _spread(r)]
            + (_mfu_cells(r) if mfu else []) for r in rows]
    return _table(["row", "batch", "steps/s", "examples/s", "ms/step", "x U", "compile s",
                   "XLA MiB", "repeats", "spread"] + (["GFLOP/step", "MFU"] if mfu else []),
                  body)


def _mfu_cells(row: dict) -> list[str]:
    """Model GFLOP per step and the row's ``peak_fraction`` in its compute dtype."""
    fraction = (row.get("peak_fraction") or {}).get(row.get("dtype", "float32"))
    if not (row.get("flops") and fraction):
        return ["–", "–"]
    return [f"{row['flops'] / 1e9:,.0f}", f"{100 * fraction:.0f}%"]


def bench_samplers(spec: Spec, records: list) -> list[str]:
    """Sampler rows of one or more runs: ms per NFE against one lone network call and, where
    the run measured it, against one call inside a compiled loop of them (``loop ms``)."""
    _need(records, None, "bench_samplers")
    rows = [r for _, rec in records for r in _rows(_raw(rec), "sampler", spec.options.get("rows"))]
    body = [[r["name"], str(r["batch"]), str(r.get("num_steps", "–")), _fmt(r.get("nfe"), ".0f"),
             _fmt(_ms(r.get("time_s")), ".1f"), _fmt(_ms(r.get("time_per_nfe_s")), ".3f"),
             _fmt(_ms(r.get("bare_eval_s")), ".3f"), _fmt(_over(r, "bare_eval_s"), "+.2f"),
             _fmt(_ms(r.get("bare_loop_eval_s")), ".3f"),
             _fmt(_over(r, "bare_loop_eval_s"), "+.2f"),
             _fmt(r.get("info", {}).get("acceptance"), ".2f"), _repeats(r)] for r in rows]
    return _table(["row", "batch", "steps", "NFE", "ms total", "ms/NFE", "lone call ms",
                   "vs lone call", "loop ms", "vs loop", "accept", "repeats"], body)


def _over(row: dict, base: str) -> float | None:
    """A sampler's time per NFE over a baseline's, minus one."""
    if not (row.get("time_per_nfe_s") and row.get(base)):
        return None
    return row["time_per_nfe_s"] / row[base] - 1.0


def bench_runs(spec: Spec, records: list) -> list[str]:
    """One line per (labelled run, train row): the same rows measured in several runs.
    Options: ``rows`` (globs); ``x U`` within each run."""
    _need(records, None, "bench_runs")
    body = []
    for label, rec in records:
        raw = _raw(rec)
        rows = [copy.deepcopy(r) for r in _rows(raw, "train", None)]
        report.add_ratios(rows)
        wanted = spec.options.get("rows")
        for r in rows:
            if wanted and not any(fnmatch.fnmatchcase(r["name"], p) for p in wanted.split(",")):
                continue
            body.append([label or rec["path"], r["name"], _fmt(_ms(r.get("time_s")), ",.2f"),
                         _fmt(r.get("steps_per_s"), ".3g"), _fmt(_ms(r.get("cpu_time_s")), ",.1f"),
                         _fmt(_cores(r), ".2f"), _fmt(r.get("time_vs_U"), ".2f"), _repeats(r),
                         _spread(r), _load(raw)])
    return _table(["run", "row", "ms/step", "steps/s", "CPU ms/step", "cores busy",
                   "x U", "repeats", "spread", "load (1 min)"], body)


def bench_compare(spec: Spec, records: list) -> list[str]:
    """Rows of two runs (labels ``before`` and ``after``): time, speed-up, cores busy;
    sampler rows per NFE."""
    runs = dict(records)
    if set(runs) != {"before", "after"}:
        raise RecordError("bench_compare needs before=SOURCE and after=SOURCE")
    before, after = ({r["name"]: r for r in _raw(runs[k]).get("rows", []) if "error" not in r}
                     for k in ("before", "after"))
    body = []
    for name, a in after.items():
        b = before.get(name)
        if b is None:
            continue
        key = "time_per_nfe_s" if a["kind"] == "sampler" else "time_s"
        what = name + (", ms per NFE" if a["kind"] == "sampler" else "")
        tb, ta = _ms(b.get(key)), _ms(a.get(key))
        body.append([what, _fmt(tb, ".2f"), _fmt(ta, ".2f"),
                     _fmt(tb / ta if tb and ta else None, ".2f") + "x",
                     f"{_fmt(_cores(b), '.2f')} → {_fmt(_cores(a), '.2f')}",
                     f"{_repeats(b)} / {_repeats(a)}"])
    return _table(["row", "before ms", "after ms", "speed-up", "cores busy before → after",
                   "repeats"], body) + ["", f"1-minute load before: {_load(_raw(runs['before']))}; "
                                            f"after: {_load(_raw(runs['after']))}."]


def bench_peer(spec: Spec, records: list) -> list[str]:
    """Interleaved pairs against score_sde_pytorch: ours, theirs, ours/theirs, the median."""
    _need(records, 1, "bench_peer")
    raw = _raw(records[0][1])
    body = [[str(i), f"{p['ours_ms']:,.0f}", f"{p['theirs_ms']:,.0f}",
             f"{p['ours_ms'] / p['theirs_ms']:.3f}"] for i, p in enumerate(raw["pairs"])]
    return _table(["pair", "ours ms/step", "theirs ms/step", "ours/theirs"], body) + [
        "", f"Median of ours/theirs over {len(body)} pairs: {raw['ratio_median']:.3f} "
            f"(batch {raw.get('batch')}; 1-minute load {_load(raw)}{_peer_versions(raw)})."]


_PEER_COLUMNS = ["GFLOP", "ours ms", "theirs ms", "ours/theirs"]


def _peer_columns(item: dict) -> list[str]:
    return [f"{item['gflop']:.2f}", f"{item['ours_ms']:.2f}", f"{item['theirs_ms']:.2f}",
            f"{item['ratio']:.2f}"]


def _peer_summary(raw: dict, label: str, fmt: str, what: str = "") -> str:
    """The sums line under a ``peer_pytorch --kernels`` or ``--blocks`` table."""
    return (f"{label}: ours {raw['ours_total_ms']:{fmt}} ms, theirs {raw['theirs_total_ms']:{fmt}} "
            f"ms, ours/theirs {raw['ratio_total']:.3f} (batch {raw.get('batch')}; {what}medians "
            f"over {len(raw['pairs'])} interleaved pairs; 1-minute load "
            f"{_load(raw)}{_peer_versions(raw)}).")


def bench_peer_kernels(spec: Spec, records: list) -> list[str]:
    """``peer_pytorch --kernels``: each convolution's ms on both sides, ours/theirs, the sum."""
    _need(records, 1, "bench_peer_kernels")
    raw = _raw(records[0][1])
    body = [[k["kernel"], k["op"].replace("_", " "), *_peer_columns(k)] for k in raw["kernels"]]
    return _table(["convolution (H×W×C_in→C_out/stride)", "call", *_PEER_COLUMNS], body) + [
        "", _peer_summary(raw, f"All {len(body)} calls", ",.1f")]


def bench_peer_blocks(spec: Spec, records: list) -> list[str]:
    """``peer_pytorch --blocks``: each block's ms on both sides, how often a step calls it,
    ours/theirs, the count-weighted sums."""
    _need(records, 1, "bench_peer_blocks")
    raw = _raw(records[0][1])
    body = [[b["block"], str(b["count"]), *_peer_columns(b)] for b in raw["blocks"]]
    return _table(["block (H×W×C_in→C_out)", "calls per forward", *_PEER_COLUMNS], body) + [
        "", _peer_summary(raw, "Count-weighted", ",.0f", "forward + backward; ")]


def _peer_versions(raw: dict) -> str:
    """'; torch V, jax V, CPU (family, model, vector units)' where the record names them
    (records before 2026-12-02 name jax and the CPU only; older ones have no CPU id)."""
    machine, first = raw.get("machine", {}), (raw.get("pairs") or [{}])[0]
    names = [f"torch {first['theirs']['torch_version']}"
             if "torch_version" in first.get("theirs", {}) else None,
             f"jax {machine['jax_version']}" if machine.get("jax_version") else None,
             " ".join(filter(None, [machine.get("cpu_model"),
                                    machine.get("cpu_id") and f"({machine['cpu_id']})"]))]
    return "".join(f"; {n}" for n in names if n)


def _conv_label(key: str) -> str:
    """'32x32x128->128/s2' -> '32x32, 128 -> 128, stride 2'."""
    size, stride = key.split("/")
    height, width, channels = size.split("x")
    text = f"{height}x{width}, {channels.replace('->', ' -> ')}"
    return text + (", stride 2" if stride == "s2" else "")


def bench_convs(spec: Spec, records: list) -> list[str]:
    """GFLOP/s of the 3x3 convolutions (forward, input and weight gradients) of two or more
    labelled runs of ``benchmarks.experiments --only=convs``."""
    _need(records, None, "bench_convs")
    labels = [label or rec["path"] for label, rec in records]
    convs = [_raw(rec)["convs"] for _, rec in records]
    header = [f"3x3 conv, batch {spec.options.get('batch', '?')} (GFLOP/s)"]
    header += [f"{part.replace('_', ' ')} {' / '.join(labels)}"
               for part in ("forward", "input_grad", "weight_grad")]
    body = [[_conv_label(key)] + [" / ".join(f"{c[key][part]['gflop_per_s']:.0f}" for c in convs)
                                  for part in ("forward", "input_grad", "weight_grad")]
            for key in convs[0]]
    return _table(header, body)


def bench_smoke(spec: Spec, records: list) -> list[str]:
    """``scripts/accelerator_smoke.py``: each config's train rate and peak device memory."""
    _need(records, 1, "bench_smoke")
    raw = _raw(records[0][1])
    body = [[f"`{r['config']}`", "yes" if r.get("ok") else "no",
             _fmt(r.get("train", {}).get("examples_per_s"), ",.0f"),
             _fmt(r["peak_device_bytes"] / 2**30 if r.get("peak_device_bytes") else None, ".1f"),
             _fmt(r.get("num_params"), ",d")] for r in raw["records"]]
    return _table(["config", "ok", "images/s", "peak device GiB (so far)", "params"], body)


def bench_runtime(spec: Spec, records: list) -> list[str]:
    """Expected training time of each train row at its measured rate: ``steps`` optimizer
    steps (option, e.g. the CIFAR configs' ``training.n_iters``) at the row's batch, in
    hours, before sampling and evaluation. Options: ``rows`` (globs), ``steps``."""
    _need(records, None, "bench_runtime")
    if "steps" not in spec.options:
        raise RecordError("bench_runtime needs steps=N (optimizer steps)")
    steps = int(float(spec.options["steps"]))
    rows = [r for _, rec in records for r in _rows(_raw(rec), "train", spec.options.get("rows"))]
    body = [[r["name"], str(r["batch"]), r.get("dtype", "–"),
             _fmt(r.get("examples_per_s"), ",.0f"),
             _fmt(steps / r["steps_per_s"] / 3600 if r.get("steps_per_s") else None, ".1f")]
            for r in rows]
    return _table(["row", "batch", "precision", "images/s", f"hours for {steps:,} steps"],
                  body)


def _side_load(side: dict) -> str:
    start, end = side.get("load_average_start"), side.get("load_average_end")
    return "–" if not start else f"{start[0]:.1f} → {end[0]:.1f}" if end else f"{start[0]:.1f}"


def bench_loops(spec: Spec, records: list) -> list[str]:
    """``benchmarks.loops`` with ``--before``: per family and loop, ms per NFE inside the loop
    and its ratio to the bare call (wall and CPU), before and after, the non-canonical
    convolutions of each compiled loop, then each energy's per-NFE cost over U's in the
    same loop and run, and the load of every side."""
    _need(records, 1, "bench_loops")
    raw = _raw(records[0][1])
    summary, sides = raw["summary"], raw["sides"]
    codes = [c for c in ("before", "after") if c in summary]
    label = " / ".join(codes)
    body, per_nfe = [], {}
    for family, loops in summary[codes[-1]].items():
        for loop in loops:
            rows = {c: summary[c][family][loop] for c in codes}
            bare = [sides[c][0]["families"][family][rows[c]["bare"]]["time_s"] for c in codes]
            for c in codes:
                per_nfe[(c, family, loop)] = rows[c]["ms_per_nfe_median"]
            body.append([family, loop, " / ".join(f"{1e3 * b:.1f}" for b in bare)] + [
                " / ".join(format(rows[c][key], fmt) for c in codes)
                for key, fmt in (("ms_per_nfe_median", ".1f"), ("ratio_median", ".2f"),
                                 ("cpu_ratio_median", ".2f"), ("non_canonical", "d"))])
    lines = _table(["family", "loop", f"bare ms ({label})", f"ms per NFE ({label})",
                    f"× bare ({label})", f"CPU × bare ({label})",
                    f"non-canonical convs ({label})"], body)
    def cpu_per_nfe(code, family, loop):
        row = sides[code][0]["families"][family][loop]
        return row["cpu_time_s"] / row["nfe"] if "cpu_time_s" in row else None

    def over_u(value, base):
        return "–" if value is None or not base else f"{value / base:.2f}"

    ratios = [[f, loop, " / ".join(f"{per_nfe[(c, f, loop)] / per_nfe[(c, 'U', loop)]:.2f}"
                                   for c in codes),
               " / ".join(over_u(cpu_per_nfe(c, f, loop), cpu_per_nfe(c, "U", loop))
                          for c in codes)]
              for (code, f, loop) in per_nfe if code == codes[-1] and f != "U"
              and (code, "U", loop) in per_nfe]
    if ratios:
        lines += [""] + _table(["family", "loop", f"ms per NFE over U's ({label})",
                                f"CPU per NFE over U's ({label})"], ratios)
    loads = "; ".join(f"{c} {i}: {_side_load(s)}" for c in codes
                      for i, s in enumerate(sides[c]))
    return lines + ["", f"1-minute load at the start → end of each side: {loads}."]


_EVAL_GROUPS = (("restore", ("restore",)), ("Asym", ("asym",)), ("ODE NLL", ("ode_nll",)),
                ("AIS", ("ais",)), ("samples + FD/IS/PR", ("samples", "sample_quality")),
                ("OOD", ("ood",)), ("path Asym + AIS (time-invariant)", ("time_invariant",)),
                ("NFE sweep", ("nfe_sweep",)))


def bench_eval_cost(spec: Spec, records: list) -> list[str]:
    """``benchmarks.eval_cost``: per family, seconds of each metric group (the eval JSON's
    ``wall_s`` where the code writes it, else its log timestamps; ``restore`` is then the
    process start to the first metric), and the process's wall time, before / after; with
    ``--pairs`` > 1 each cell is the mean over the pairs and the load runs from the first
    run's start to the last run's end."""
    _need(records, 1, "bench_eval_cost")
    raw = _raw(records[0][1])
    runs = raw["runs"]
    codes = [c for c in ("before", "after") if any(r["code"] == c for r in runs)]
    families = list(dict.fromkeys(r["family"] for r in runs))
    cell: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        cell.setdefault((r["code"], r["family"]), []).append(r)

    def seconds(code, family, keys):
        per_run = []
        for r in cell.get((code, family), []):
            metrics = r.get("metric_wall_s") or r.get("log_phases") or {}
            found = [metrics[k] for k in keys if k in metrics]
            if found:
                per_run.append(sum(found))
        return f"{statistics.fmean(per_run):,.0f}" if per_run else "–"

    def wall(code, family):
        rs = cell.get((code, family))
        return "–" if not rs else f"{statistics.fmean(r['process_wall_s'] for r in rs):,.0f}"

    def load(code, family):
        rs = cell.get((code, family))
        return "–" if not rs else _side_load({
            "load_average_start": rs[0].get("load_average_start"),
            "load_average_end": rs[-1].get("load_average_end")})

    label = " / ".join(codes)
    groups = [(name, keys) for name, keys in _EVAL_GROUPS  # those some run measured
              if any(seconds(c, f, keys) != "–" for c in codes for f in families)]
    body = [[family] + [" / ".join(seconds(c, family, keys) for c in codes)
                        for _, keys in groups]
            + [" / ".join(wall(c, family) for c in codes),
               " / ".join(load(c, family) for c in codes)]
            for family in families]
    return _table(["family"] + [f"{name} s ({label})" for name, _ in groups]
                  + [f"process wall s ({label})", "1-minute load (start → end)"], body)


def bench_ais_budget(spec: Spec, records: list) -> list[str]:
    """``benchmarks.ais_budget``: per budget (pilot chains M, 0 = the fixed step size 0.1;
    targets K; chains N) the mean log Z over the repeats ± their standard deviation (the
    error of one run), the within-run delta-method standard error, ESS, acceptance, the
    last target's step size and the seconds per run; then the energy along rays."""
    _need(records, 1, "bench_ais_budget")
    raw = _raw(records[0][1])
    body = [[str(b["tune_chains"]), str(b["num_steps"]), str(b["num_chains"]),
             f"{b['log_z_mean']:.1f} ± {b['log_z_sd']:.1f} ({len(b['repeats'])})",
             f"{b['stderr_mean']:.2f}", f"{b['ess_mean']:.1f}", f"{b['acceptance_mean']:.2f}",
             f"{statistics.fmean(r['last_step_size'] for r in b['repeats']):.2g}",
             f"{b['run_s']:.1f}"] for b in raw["budgets"]]
    lines = _table(["pilot chains M", "targets K", "chains N", "log Z (sd over runs, n)",
                    "stderr (chains)", "ESS", "acceptance", "last step size", "s / run"],
                   body)
    rays = raw["rays"]
    medians = ", ".join(f"{r}: {rays['summary'][str(r)]:.0f}" for r in rays["radii"])
    tail = rays["tail"]
    return lines + ["", f"Median E(r u) over {len(rays['energy_along_rays']['0'])} random "
                    f"unit directions u, by radius r: {medians}. Rays through the test "
                    f"points where exp(-E) does not fall off between {tail['scales'][0]:g} "
                    f"and {tail['scales'][1]:g} times their median radius: "
                    f"{tail['rising_fraction']:.0%} (median growth "
                    f"{tail['growth_nats']:.3g} nats, needed > {tail['needed_nats']:.3g})."]


def bench_energy_tails(spec: Spec, records: list) -> list[str]:
    """``benchmarks.ais_budget`` records of several energies, one row each: the median energy
    along random rays by radius, and the evaluation's tail test at the test points."""
    _need(records, None, "bench_energy_tails")
    raws = [(label, _raw(record)) for label, record in records]
    radii = raws[0][1]["rays"]["radii"]
    body = []
    for label, raw in raws:
        rays, tail = raw["rays"], raw["rays"]["tail"]
        body.append([label or raw.get("family", "?"), str(raw.get("step", "?"))]
                    + [f"{rays['summary'][str(r)]:.0f}" for r in radii]
                    + [f"{tail['rising_fraction']:.0%}",
                       f"{tail['growth_nats']:.3g} (> {tail['needed_nats']:.3g})"])
    return _table(["energy", "train steps"] + [f"E at r={r}" for r in radii]
                  + ["rays not falling", "E(16R u) − E(8R u) nats (needed)"], body)


def bench_divergence(spec: Spec, records: list) -> list[str]:
    """``benchmarks.divergence``: per estimator (0 = exact, K Hutchinson probes) the NLL in
    bits/dim ± its standard error over examples, the probe noise of one example and of the
    mean, the paired difference from the exact divergence, NFE and seconds per call (the
    last call: the first compiles)."""
    _need(records, 1, "bench_divergence")
    body = []
    for e in _raw(records[0][1])["estimators"]:
        exact = e["num_probes"] == 0
        diff = "–" if exact or "diff_vs_exact" not in e else \
            f"{e['diff_vs_exact']:+.3f} ± {e['diff_vs_exact_se']:.3f}"
        body.append(["exact" if exact else str(e["num_probes"]),
                     f"{e['bpd']:.3f} ± {e['bpd_se']:.3f}",
                     "0" if exact else f"{e['probe_std']:.3f}",
                     "0" if exact else f"{e['probe_se']:.3f}", diff, f"{e['nfe']:.0f}",
                     f"{e['call_s'][-1]:.0f}"])
    return _table(["divergence (probes)", "NLL bits/dim ± SE (examples)", "probe std (one "
                   "example)", "probe SE (mean)", "minus exact (paired)", "NFE",
                   "s per call"], body)


TABLE_KINDS = {
    "bench_text": bench_text,
    "bench_train": bench_train,
    "bench_samplers": bench_samplers,
    "bench_runs": bench_runs,
    "bench_compare": bench_compare,
    "bench_peer": bench_peer,
    "bench_peer_kernels": bench_peer_kernels,
    "bench_peer_blocks": bench_peer_blocks,
    "bench_convs": bench_convs,
    "bench_smoke": bench_smoke,
    "bench_runtime": bench_runtime,
    "bench_loops": bench_loops,
    "bench_eval_cost": bench_eval_cost,
    "bench_ais_budget": bench_ais_budget,
    "bench_energy_tails": bench_energy_tails,
    "bench_divergence": bench_divergence,
}
