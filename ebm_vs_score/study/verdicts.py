"""Verdicts on the seed papers' claims, computed from the study's per-seed numbers.

:data:`VERDICTS` defines the four verdict words once; :func:`verdict` applies them to the
95% paired interval of a claim's metric (:func:`ebm_vs_score.study.power.paired_interval`:
variant minus U over the seeds both were trained with). :data:`CLAIMS` lists what the
study can test. :func:`study_values` builds the study record's values (per-seed metrics,
real-vs-real floors, paired differences, claims with their verdicts and the seeds the
paper's effect would need); :func:`power_lines` writes them into REPORT.md and
:data:`TABLE_KINDS` renders README tables from the record (``python -m
ebm_vs_score.results``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ebm_vs_score.study import power

REPRODUCED = "reproduced"
UNDERPOWERED = "consistent, underpowered"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"
VERDICTS = {
    REPRODUCED: "the 95% interval of the paired difference (variant − U over seeds) excludes "
                "zero on the side the paper reports; for a claim of no difference, the "
                "interval lies inside ± the paper's own gap",
    UNDERPOWERED: "the interval contains zero (or crosses the ± gap of a no-difference claim) "
                  "and also the paper's effect: these seeds cannot decide",
    NOT_REPRODUCED: "the interval excludes the paper's claim: it lies on the other side of "
                    "zero, below the paper's effect size, or outside ± the gap of a "
                    "no-difference claim",
    NOT_TESTABLE: "the study did not measure this metric or model (e.g. Inception FID on "
                  "CIFAR-10), or it has no U runs with the same seeds to pair with",
}
LEVEL = 0.95
METRICS = ("fd", "is", "precision", "recall", "fid", "inception_score", "nll_bpd", "nll_nats",
           "mmd", "swd", "asym", "nasym")
FLOOR_METRICS = ("fd", "is", "precision", "recall")
TITLES = {"fd": "FD ↓", "is": "IS ↑", "precision": "precision ↑", "recall": "recall ↑",
          "fid": "FID ↓", "inception_score": "IS (Inception) ↑", "nll_bpd": "NLL bits/dim ↓",
          "nll_nats": "NLL nats ↓", "mmd": "MMD² ↓", "swd": "SWD ↓", "asym": "Asym ↓",
          "nasym": "NAsym ↓"}


class Claim(NamedTuple):
    """A claim of a seed paper about ``metric`` of ``family`` against U.

    ``direction``: the sign of (family − U) the paper reports (+1 higher, −1 lower), or 0
    for "no difference". ``size``: the paper's effect relative to U's value (for direction
    0: the gap within which the two count as equal); None when the paper gives no size.
    ``scales``: the data scales the claim is about (None: any).
    """

    key: str
    statement: str
    source: str
    metric: str
    family: str
    direction: int
    size: float | None = None
    scales: tuple[str, ...] | None = None


CLAIMS = (
    # Salimans & Ho 2021, Table 1: CIFAR-10 FIDs of the energy and score U-Nets about 5%
    # apart (6.5 vs 6.8): "can perform just as well".
    Claim("c_matches_u", "C matches U's sample quality", "Salimans & Ho 2021, Table 1",
          "fd", "energy", 0, 0.05),
    Claim("c_matches_u_fid", "C matches U's FID", "Salimans & Ho 2021, Table 1", "fid",
          "energy", 0, 0.05, scales=("cifar",)),
    Claim("no_shortcuts", "an energy without short-cuts to its input samples worse than U",
          "Salimans & Ho 2021, Table 1", "fd", "resnet_energy", +1),
    Claim("qc_nasym", "the QC regularizer lowers NAsym", "Chao et al. 2023, Table 2",
          "nasym", "qc", -1),
    Claim("qc_quality", "QC improves sample quality", "Chao et al. 2023, Table 3", "fd",
          "qc", -1),
)


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
    return {k: float(v) for k, v in results.items()
            if k in METRICS and isinstance(v, int | float) and not isinstance(v, bool)}


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


def _claim_entry(claim: Claim, variant: str, label: str, values: dict, per_seed, scale: str,
                 baseline: str) -> dict[str, Any]:
    entry = {"key": claim.key, "statement": claim.statement, "source": claim.source,
             "metric": claim.metric, "variant": variant, "label": label,
             "direction": claim.direction, "size": claim.size}
    base = values["variants"].get(baseline, {}).get("metrics", {}).get(claim.metric)
    testable = (claim.scales is None or scale in claim.scales) and base is not None \
        and variant in per_seed and baseline in per_seed
    iv = _paired(per_seed[variant], per_seed[baseline], claim.metric) if testable else None
    entry["verdict"] = verdict(claim, iv, base["value"] if base and base["value"] is not None
                               else math.nan)
    if iv is not None:
        entry.update(_interval_dict(iv), baseline_value=base["value"])
        effect = None if claim.size is None else claim.size * abs(base["value"])
        entry["seeds_needed"] = (power.seeds_needed(effect, iv.sd)
                                 if effect and math.isfinite(iv.sd) else None)
    return entry


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
    for claim in CLAIMS:
        mine = [v for v in per_seed if families[v] == claim.family and "@" not in v]
        for v in mine or [claim.family]:
            values["claims"].append(_claim_entry(claim, v, labels.get(v, claim.family), values,
                                                 per_seed, scale, baseline))
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


def claims_table(values: Mapping[str, Any]) -> list[str]:
    """Claim, model, metric, paired difference with its 95% interval, seeds the paper's
    effect needs at the measured spread, verdict."""
    body = []
    for c in values["claims"]:
        diff = _interval_text(c) if "value" in c else "–"
        rel = "–" if "value" not in c or not c.get("baseline_value") else \
            f"{100 * c['value'] / abs(c['baseline_value']):+.0f}%".replace("-", "−")
        size = "no size given" if c["size"] is None else f"{100 * c['size']:.0f}%"
        need = "–" if c.get("seeds_needed") is None else str(c["seeds_needed"])
        body.append([f"{c['statement']} ({c['source']})", f"{c['label']} − U",
                     TITLES[c["metric"]], diff, rel, str(c.get("n", "–")), size, need,
                     f"**{c['verdict']}**"])
    return _md(["claim (source)", "difference", "metric", "mean [95% interval]",
                "relative to U", "seeds", "paper's effect", "seeds it needs (80% power)",
                "verdict"], body)


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
             "(variant − U, both trained with the same seed), with the 95% t-interval "
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
