"""Verdicts on the seed papers' claims, computed from the study's per-seed numbers.

:data:`VERDICTS` defines the four verdict words once; :func:`verdict` applies them to the
95% paired interval of a claim's metric (:func:`ebm_vs_score.study.power.paired_interval`:
variant minus its baseline over the seeds both were trained with). The baseline is U, or
the model the claim names (EqM-E against EqM), or another metric of the same runs (the
adaptive sampler's NFE against its fixed step count), or a constant (an AUROC against
chance, 0.5). :data:`CLAIMS` (:mod:`ebm_vs_score.study.claims`) lists what the study can
test, including the testable claims of Equilibrium Matching (Wang & Du 2025) on the
time-invariant families. :func:`study_values` builds the study record's values (per-seed
metrics, real-vs-real floors, paired differences, claims with their verdicts and the seeds the
paper's effect would need); :func:`power_lines` writes them into REPORT.md and
:data:`TABLE_KINDS` renders README tables from the record (``python -m
ebm_vs_score.results``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ebm_vs_score.study import power
from ebm_vs_score.study.claims import CLAIMS, SELF, Claim, expand

REPRODUCED = "reproduced"
UNDERPOWERED = "consistent, underpowered"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"
VERDICTS = {
    REPRODUCED: "the 95% interval of the paired difference (variant − baseline over seeds; "
                "the baseline is U unless the claim names another model, another metric of "
                "the same runs or a constant such as chance) excludes zero on the side the "
                "paper reports, and no condition of the claim is shown violated; for a claim "
                "of no difference, the interval lies inside ± the paper's own gap",
    UNDERPOWERED: "the interval contains zero (or crosses the ± gap of a no-difference claim) "
                  "and also the paper's effect: these seeds cannot decide",
    NOT_REPRODUCED: "the interval excludes the paper's claim: it lies on the other side of "
                    "zero, below the paper's effect size, or outside ± the gap of a "
                    "no-difference claim; or a condition of the claim (e.g. no loss of "
                    "sample quality) is violated with its own interval excluding zero",
    NOT_TESTABLE: "the study did not measure this metric or model (e.g. Inception FID on "
                  "CIFAR-10), or it has no baseline runs with the same seeds to pair with",
}
LEVEL = 0.95
METRICS = ("fd", "is", "precision", "recall", "fid", "inception_score", "nll_bpd", "nll_nats",
           "mmd", "swd", "asym", "nasym")
FLOOR_METRICS = ("fd", "is", "precision", "recall")
TITLES = {"fd": "FD ↓", "is": "IS ↑", "precision": "precision ↑", "recall": "recall ↑",
          "fid": "FID ↓", "inception_score": "IS (Inception) ↑", "nll_bpd": "NLL bits/dim ↓",
          "nll_nats": "NLL nats ↓", "mmd": "MMD² ↓", "swd": "SWD ↓", "asym": "Asym ↓",
          "nasym": "NAsym ↓"}


def verdict(claim: Claim, interval: power.PairedInterval | None, baseline: float) -> str:
    """The verdict word (:data:`VERDICTS`) of ``claim`` given the paired interval of
    (variant − U) and U's mean ``baseline`` (sizes are relative to it)."""
    if interval is None or not math.isfinite(baseline):
        return NOT_TESTABLE
    low, high = interval.low, interval.high
    if claim.direction == 0:
        gap = (claim.size or 0.0) * abs(baseline)
        if -gap < low and high < gap:
            return REPRODUCED
        return NOT_REPRODUCED if (low >= gap or high <= -gap) else UNDERPOWERED
    low, high = sorted((claim.direction * low, claim.direction * high))  # > 0: as claimed
    if low > 0:
        return REPRODUCED
    size = 0.0 if claim.size is None else claim.size * abs(baseline)
    return NOT_REPRODUCED if (high < size or (claim.size is None and high <= 0)) else UNDERPOWERED


# ----------------------------------------------------------------------------------------
# The record's values
# ----------------------------------------------------------------------------------------


def per_seed_metrics(records: Sequence[Any]) -> dict[str, dict[int, dict[str, float]]]:
    """{variant (``<variant>@<sampler>`` for the extra sampler): {seed: metrics}} of the
    finished runs (``run.RunRecord``)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for r in records:
        if r.done is None:
            continue
        results = dict(r.done["results"])
        out.setdefault(r.variant, {})[int(r.seed)] = _scalars(results)
        if r.done.get("extra_results"):
            extra = dict(results, **r.done["extra_results"])
            out.setdefault(f"{r.variant}@{r.done['extra_sampler']}", {})[int(r.seed)] = \
                _scalars(extra)
    return out


def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """The numbers claims are tested on: :data:`METRICS`, the OOD AUROCs (``ood_auroc_*``,
    evaluate/ood.py) and the NFE sweep's rows as ``nfe_sweep.<sampler>.<key>``
    (evaluate/time_invariant.py); an adaptive row (``tol`` > 0) also carries the row of the
    same sampler without the stop, at its ``num_steps``, as ``nfe_sweep.<sampler>.fixed.<key>``."""
    number = lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    out = {k: float(v) for k, v in results.items()
           if (k in METRICS or k.startswith("ood_auroc_")) and number(v)}
    rows = {row.get("sampler"): row for row in results.get("nfe_sweep") or ()}
    for label, row in rows.items():
        out.update({f"nfe_sweep.{label}.{k}": float(v) for k, v in row.items() if number(v)})
        fixed = rows.get(f"nag_{row.get('num_steps')}")
        if row.get("tol", 0) and fixed is not None:
            out.update({f"nfe_sweep.{label}.fixed.{k}": float(v) for k, v in fixed.items()
                        if number(v)})
    return out


def run_times(records: Sequence[Any]) -> dict[str, Any]:
    """Seeds and wall time (training and evaluation, seconds) of the finished runs."""
    done = [r for r in records if r.done is not None]
    train = sum(float(r.done["timing"]["train_wall_s"]) for r in done)
    evaluation = sum(float(r.done.get("eval_wall_s", 0.0)) for r in done)
    return {"runs": len(done), "seeds": sorted({int(r.seed) for r in done}),
            "train_wall_s": train, "eval_wall_s": evaluation}


def _summary(by_seed: Mapping[int, Mapping[str, float]], metric: str) -> dict[str, Any] | None:
    """Mean, standard error, sd and n over the seeds with a finite value; ``nonfinite``
    counts the others (a diverged run), ``per_seed`` keeps every value (None: not finite)."""
    seeds = sorted(s for s, m in by_seed.items() if metric in m)
    if not seeds:
        return None
    v = np.asarray([by_seed[s][metric] for s in seeds], np.float64)
    ok = v[np.isfinite(v)]
    sd = float(np.std(ok, ddof=1)) if len(ok) > 1 else None
    out = {"value": float(np.mean(ok)) if len(ok) else None,
           "se": None if sd is None else sd / math.sqrt(len(ok)), "sd": sd, "n": len(ok),
           "per_seed": {str(s): float(x) if math.isfinite(x) else None
                        for s, x in zip(seeds, v, strict=True)}}
    if len(ok) < len(v):
        out["nonfinite"] = len(v) - len(ok)
    return out


def _paired(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]],
            metric: str) -> power.PairedInterval | None:
    seeds = sorted(s for s in set(a) & set(b) if metric in a[s] and metric in b[s]
                   and math.isfinite(a[s][metric]) and math.isfinite(b[s][metric]))
    if not seeds:
        return None
    return power.paired_interval([a[s][metric] for s in seeds], [b[s][metric] for s in seeds],
                                 LEVEL)


def _interval_dict(iv: power.PairedInterval) -> dict[str, Any]:
    finite = lambda x: x if math.isfinite(x) else None
    return {"value": iv.mean, "se": finite(iv.se), "low": finite(iv.low),
            "high": finite(iv.high), "n": iv.n, "sd": finite(iv.sd)}


def _baseline_variant(claim: Claim, variant: str, per_seed, families,
                      u: str) -> str | None:
    """The runs ``claim`` pairs ``variant`` with: U (``u``), the variant itself, or the
    plain variant of the named family (None: the study did not run it)."""
    if claim.baseline == SELF:
        return variant
    if claim.baseline == "score":
        return u if u in per_seed else None
    mine = [v for v in per_seed if families.get(v) == claim.baseline and "@" not in v]
    return claim.baseline if claim.baseline in mine else next(iter(mine), None)


def _baseline_label(claim: Claim, base: str | None, labels) -> str:
    if claim.reference is not None:
        return format(claim.reference, "g")
    if claim.baseline == SELF:
        return title(claim.baseline_metric or claim.metric)
    default = "U" if claim.baseline == "score" else claim.baseline
    return labels.get(base, default) if base else default


def _pairs(claim: Claim, variant: str, base: str | None, per_seed
           ) -> tuple[dict[int, float], dict[int, float]]:
    """Per seed: the variant's value and its baseline's (finite values of seeds both
    have)."""
    mine = {s: m[claim.metric] for s, m in per_seed.get(variant, {}).items()
            if claim.metric in m and math.isfinite(m[claim.metric])}
    if claim.reference is not None:
        return mine, {s: float(claim.reference) for s in mine}
    metric = claim.baseline_metric or claim.metric
    other = {s: m[metric] for s, m in per_seed.get(base, {}).items()
             if metric in m and math.isfinite(m[metric])} if base else {}
    seeds = sorted(set(mine) & set(other))
    return {s: mine[s] for s in seeds}, {s: other[s] for s in seeds}


def _claim_entry(claim: Claim, variant: str, labels, per_seed, families, scale: str,
                 u: str) -> dict[str, Any]:
    base = _baseline_variant(claim, variant, per_seed, families, u)
    entry = {"key": claim.key, "statement": claim.statement, "source": claim.source,
             "metric": claim.metric, "variant": variant,
             "label": labels.get(variant, claim.family), "direction": claim.direction,
             "size": claim.size, "baseline": base,
             "baseline_metric": claim.baseline_metric or claim.metric,
             "baseline_label": _baseline_label(claim, base, labels)}
    if claim.reference is not None:
        entry["reference"] = claim.reference
    a, b = _pairs(claim, variant, base, per_seed)
    testable = (claim.scales is None or scale in claim.scales) and bool(a) and bool(b)
    iv = power.paired_interval(list(a.values()), list(b.values()), LEVEL) if testable \
        else None
    summary = _summary({s: {"v": v} for s, v in _all_baseline(claim, base, per_seed, a)},
                       "v") if testable else None
    base_value = summary["value"] if summary and summary["value"] is not None else math.nan
    entry["verdict"] = verdict(claim, iv, base_value)
    if iv is not None:
        entry.update(_interval_dict(iv), baseline_value=base_value,
                     per_seed={str(s): [a[s], b[s]] for s in a})
        effect = None if claim.size is None else claim.size * abs(base_value)
        entry["seeds_needed"] = (power.seeds_needed(effect, iv.sd)
                                 if effect and math.isfinite(iv.sd) else None)
    if claim.guard is not None:
        entry["guard"] = _claim_entry(claim.guard, variant, labels, per_seed, families,
                                      scale, u)
        entry["verdict"] = _guarded(entry["verdict"], entry["guard"]["verdict"])
    return entry


def _all_baseline(claim: Claim, base: str | None, per_seed, paired_mine):
    """(seed, value) of the baseline over all its seeds with the metric: the value the
    claim's size is relative to (U's mean, as for the differences table)."""
    if claim.reference is not None:
        return [(s, float(claim.reference)) for s in paired_mine]
    metric = claim.baseline_metric or claim.metric
    return [(s, m[metric]) for s, m in per_seed.get(base, {}).items() if metric in m]


def _guarded(word: str, guard_word: str) -> str:
    """A claim whose condition is shown violated is not reproduced; one whose condition
    was not measured is not testable."""
    if guard_word == REPRODUCED:
        return NOT_REPRODUCED
    if guard_word == NOT_TESTABLE:
        return NOT_TESTABLE
    return word


def study_values(per_seed: Mapping[str, Mapping[int, Mapping[str, float]]],
                 families: Mapping[str, str], labels: Mapping[str, str],
                 floors: Mapping[str, power.Floor] | None, *, scale: str,
                 runs: Mapping[str, Any] | None = None, baseline: str = "score") -> dict:
    """The study record's values: per-variant metrics (mean, se, n, per seed), floors,
    paired differences against U and the claims with their verdicts."""
    values: dict[str, Any] = {"scale": scale, "level": LEVEL, "baseline": baseline,
                              "verdicts": VERDICTS, "runs": dict(runs or {})}
    values["variants"] = {
        v: {"label": labels[v], "family": families[v],
            "metrics": {m: s for m in METRICS if (s := _summary(by_seed, m)) is not None}}
        for v, by_seed in per_seed.items()}
    values["floors"] = {m: f._asdict() | {"value": f.mean} for m, f in (floors or {}).items()}
    values["differences"] = {}
    if baseline in per_seed:
        for v in per_seed:
            if v != baseline:
                diffs = {m: _interval_dict(iv) for m in METRICS
                         if (iv := _paired(per_seed[v], per_seed[baseline], m)) is not None}
                values["differences"][v] = diffs
    values["claims"] = []
    for template in CLAIMS:
        mine = [v for v in per_seed if families[v] == template.family and "@" not in v]
        keys = {k for v in mine for m in per_seed[v].values() for k in m}
        for claim in expand(template, keys):
            for v in mine or [claim.family]:
                values["claims"].append(_claim_entry(claim, v, labels, per_seed, families,
                                                     scale, baseline))
    return values


# ----------------------------------------------------------------------------------------
# Tables (REPORT.md and, through ebm_vs_score.results, README.md)
# ----------------------------------------------------------------------------------------


def _g(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return format(x, "+.3g" if signed else ".3g").replace("-", "−")


def _interval_text(d: Mapping[str, Any]) -> str:
    if d.get("low") is None:
        return f"{_g(d['value'], True)} (n = {d['n']}, no interval)"
    return f"{_g(d['value'], True)} [{_g(d['low'], True)}, {_g(d['high'], True)}]"


def _md(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(row) + " |" for row in body])


def title(metric: str) -> str:
    """Table title of a metric name: :data:`TITLES`, an OOD AUROC or an NFE-sweep row."""
    if metric in TITLES:
        return TITLES[metric]
    if metric.startswith("ood_auroc_"):
        score, _, ood_set = metric[len("ood_auroc_"):].rpartition("_")
        return f"AUROC of {score} vs {ood_set} ↑"
    if metric.startswith("nfe_sweep."):
        _, row, key = metric.split(".", 2)
        key, fixed = (key[len("fixed."):], True) if key.startswith("fixed.") else (key, False)
        name = {"sample_nfe_mean": "NFE", "num_steps": "steps"}.get(key, TITLES.get(key, key))
        return f"{name} ({row}{' without the stop' if fixed else ''})"
    return metric


def _difference_label(c: Mapping[str, Any]) -> str:
    """'<model> − <baseline>' ('− U' in records written before claims had baselines)."""
    if c.get("baseline_metric", c["metric"]) != c["metric"] and "reference" not in c:
        return f"{c['label']}: {title(c['metric'])} − {c['baseline_label']}"
    return f"{c['label']} − {c.get('baseline_label', 'U')}"


def claims_table(values: Mapping[str, Any]) -> list[str]:
    """Claim, difference, metric, paired difference with its 95% interval (and the
    interval of the claim's condition, if any), seeds the paper's effect needs at the
    measured spread, verdict."""
    body = []
    for c in values["claims"]:
        diff = _interval_text(c) if "value" in c else "–"
        guard = c.get("guard")
        if guard is not None:
            diff += (f"; {title(guard['metric'])} − {guard['baseline_label']}: "
                     + (_interval_text(guard) if "value" in guard else "–"))
        rel = "–" if "value" not in c or not c.get("baseline_value") else \
            f"{100 * c['value'] / abs(c['baseline_value']):+.0f}%".replace("-", "−")
        size = "no size given" if c["size"] is None else f"{100 * c['size']:.0f}%"
        need = "–" if c.get("seeds_needed") is None else str(c["seeds_needed"])
        body.append([f"{c['statement']} ({c['source']})", _difference_label(c),
                     title(c["metric"]), diff, rel, str(c.get("n", "–")), size, need,
                     f"**{c['verdict']}**"])
    return _md(["claim (source)", "difference", "metric", "mean [95% interval]",
                "relative to the baseline", "seeds", "paper's effect",
                "seeds it needs (80% power)", "verdict"], body)


def differences_table(values: Mapping[str, Any]) -> list[str]:
    """Every variant minus U, per metric: mean [95% paired t-interval], n seeds."""
    diffs = values["differences"]
    metrics = [m for m in METRICS if any(m in d for d in diffs.values())]
    body = [[values["variants"][v]["label"] + " − U"]
            + [_interval_text(d[m]) if m in d else "–" for m in metrics]
            + [str(max((d[m]["n"] for m in d), default=0))] for v, d in diffs.items()]
    return _md(["difference"] + [TITLES[m] for m in metrics] + ["seeds"], body)


def floors_table(values: Mapping[str, Any]) -> list[str]:
    """Real-vs-real floor of each image metric at the study's sample size."""
    body = [[TITLES[m], _g(f["value"]), _g(f["sd"]), f"[{_g(f['low'])}, {_g(f['high'])}]",
             str(f["n"]), str(f["draws"])] for m, f in values["floors"].items()]
    return _md(["metric", "real vs real (mean)", "sd", "95% of draws", "n per set", "draws"],
               body)


def metrics_table(values: Mapping[str, Any]) -> list[str]:
    """Each variant's mean ± standard error over seeds, with the floors as the last row."""
    variants = values["variants"]
    metrics = [m for m in METRICS if any(m in v["metrics"] for v in variants.values())]
    fmt = lambda s: "–" if s is None else (
        _g(s["value"]) + ("" if s.get("se") is None else f" ± {_g(s['se'])}"))
    body = [[v["label"]] + [fmt(v["metrics"].get(m)) for m in metrics]
            + [str(max((s["n"] for s in v["metrics"].values()), default=0))]
            for v in variants.values()]
    floors = values.get("floors", {})
    if floors:
        n = next(iter(floors.values()))["n"]
        body.append([f"real vs real (n = {n})"]
                    + [fmt(floors.get(m)) if m in floors else "–" for m in metrics] + ["–"])
    return _md(["model"] + [TITLES[m] for m in metrics] + ["seeds"], body)


def verdict_lines() -> list[str]:
    return [f"- **{word}**: {meaning}." for word, meaning in VERDICTS.items()]


def power_lines(values: Mapping[str, Any]) -> list[str]:
    """The REPORT.md section: floors, paired differences, claims and verdicts."""
    lines = ["## Power: floors, paired differences and verdicts", "",
             "Cells: mean ± standard error over seeds. Differences are paired by seed "
             "(variant − U, both trained with the same seed; a claim's difference is "
             "against its own baseline, named in its row), with the 95% t-interval "
             "over seeds (n − 1 degrees of freedom).", ""]
    lines += metrics_table(values) + [""]
    if values.get("floors"):
        lines += ["Real-vs-real floor: the metric between a draw of n real training images "
                  "and the test images the samples are scored against, over repeated draws; "
                  "a model inside this range is indistinguishable from real data here.", ""]
        lines += floors_table(values) + [""]
    if values.get("differences"):
        lines += differences_table(values) + [""]
    lines += ["Claims, and the seeds the paper's effect would need (two-sided paired t-test, "
              "5% level, 80% power, at the measured spread of the differences):", ""]
    lines += claims_table(values) + [""] + verdict_lines() + [""]
    return lines


def _values(records: list) -> Mapping[str, Any]:
    if len(records) != 1:
        from ebm_vs_score.results import RecordError
        raise RecordError(f"a study table needs one study record, got {len(records)}")
    record = records[0][1]
    return (record[-1] if isinstance(record, list) else record)["values"]


def _provenance(record: Mapping[str, Any]) -> str:
    runs = record["values"].get("runs", {})
    wall = runs.get("train_wall_s", 0.0) + runs.get("eval_wall_s", 0.0)
    return (f"From `{record['path']}`: `{record['command']}` at commit "
            f"{(record.get('commit') or 'unknown')[:10]}, {record['date']}, seeds "
            f"{runs.get('seeds', '?')}, {wall / 3600:.1f} h of training and evaluation.")


TABLE_KINDS = {
    "study_claims": lambda spec, records: claims_table(_values(records)) + [
        "", _provenance(records[0][1])],
    "study_metrics": lambda spec, records: metrics_table(_values(records)),
    "study_differences": lambda spec, records: differences_table(_values(records)),
    "study_floors": lambda spec, records: floors_table(_values(records)),
}
