"""REPORT.md sections of the time-invariant families (EqM, EqM-E, Energy Matching; issue
#26), the OOD table of every family, and the verdicts on the two papers' testable claims.

Verdicts are computed from intervals over seeds: a difference of means d with standard
error se = sqrt(s1^2/n1 + s2^2/n2) (sample stds), interval d +- 2 se. "reproduced": the
interval lies on the claimed side of 0; "consistent, underpowered": it contains 0 and d is
on the claimed side; "not reproduced": d is on the other side; "not testable here": fewer
than two seeds on either side, or a metric is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ebm_vs_score.evaluate.ood import OOD_SETS
from ebm_vs_score.evaluate.time_invariant import AIS_TARGET
from ebm_vs_score.settings import Settings
from ebm_vs_score.study import plan

Row = Any  # report.Row
TI = plan.TIME_INVARIANT_FAMILIES


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _fmt(values: Sequence[float]) -> str:
    values = np.asarray([v for v in values if v is not None], np.float64)
    if values.size == 0:
        return "n/a"
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return f"{values.mean():.4g}" if std == 0.0 else f"{values.mean():.4g} ± {std:.2g}"


def _quality_key(s: Settings) -> tuple[str, str]:
    return ("mmd", "MMD² ↓") if s.is_toy else ("fd", "FD ↓")


def _results(records, variant: str) -> list[dict]:
    return [r.done["results"] for r in records if r.variant == variant and r.done is not None]


def _sweep_values(records, variant: str, label: str, key: str) -> list[float]:
    """Per seed: ``key`` of the NFE-sweep row ``label`` (seeds without it left out)."""
    out = []
    for results in _results(records, variant):
        rows = [row for row in results.get("nfe_sweep", []) if row.get("sampler") == label]
        if rows and key in rows[0]:
            out.append(float(rows[0][key]))
    return out


def verdict(claimed: Sequence[float], other: Sequence[float], direction: int) -> str:
    """Verdict that mean(claimed) - mean(other) has the sign ``direction`` (module doc)."""
    a, b = np.asarray(claimed, np.float64), np.asarray(other, np.float64)
    if a.size < 2 or b.size < 2:
        return "not testable here"
    d = direction * (a.mean() - b.mean())
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    if d - 2 * se > 0:
        return "reproduced"
    return "consistent, underpowered" if d > 0 else "not reproduced"


def _summary_lines(s: Settings, ti_rows: Sequence[Row], study_dir: str) -> list[str]:
    key, title = _quality_key(s)
    unit = "nats" if s.is_toy else "bpd"
    body = []
    for row in ti_rows:
        run = plan.run_settings(s, row.variant, s.study.seeds[0], study_dir)
        sampler = f"{run.sampling.method}, {run.sampling.num_steps} steps"
        keys = (key, "nasym", f"ais_nll_{unit}", "sample_nfe", "steps_per_sec")
        body.append([row.label, sampler] + [_fmt([m.get(k) for m in row.runs]) for k in keys])
    return _table(["model", "sampler", title, "NAsym ↓", f"AIS NLL {unit} ↓", "NFE",
                   "train steps/s ↑"], body) + [""]


def _gamma_lines(ti_rows: Sequence[Row], records) -> list[str]:
    body, gammas = [], None
    for row in ti_rows:
        lists = [r.get("nasym_per_gamma") for r in _results(records, row.variant)]
        lists = [v for v in lists if v]
        if lists:
            gammas = _results(records, row.variant)[0]["gamma_levels"]
            body.append([row.label] + [f"{v:.3g}" for v in np.mean(lists, axis=0)])
    if not body:
        return []
    return (["### NAsym on the EqM path x_γ = γ x + (1 − γ) ε (γ = 1: the test data)", ""]
            + _table(["model"] + [f"γ={g:g}" for g in gammas], body) + [""])


def _sweep_labels(records, ti_rows) -> list[str]:
    for row in ti_rows:
        for results in _results(records, row.variant):
            if results.get("nfe_sweep"):
                return [r["sampler"] for r in results["nfe_sweep"]]
    return []


def _nfe_lines(s: Settings, ti_rows: Sequence[Row], records) -> list[str]:
    labels = _sweep_labels(records, ti_rows)
    if not labels:
        return []
    key, title = _quality_key(s)
    body = []
    for row in ti_rows:
        for label in labels:
            nfe = _sweep_values(records, row.variant, label, "sample_nfe_mean")
            quality = _sweep_values(records, row.variant, label, key)
            if quality:
                body.append([row.label, label, _fmt(nfe), _fmt(quality)])
    return (["### Sample quality against NFE (gd, nag, nag in the EqM code's form; "
             "nag_tol<τ>: adaptive stops at ‖f‖ < τ)", "",
             "NFE is the mean over examples of the evaluations each made before it stopped.",
             ""] + _table(["model", "sampler", "NFE / example", title], body) + [""])


def ood_lines(rows: Sequence[Row]) -> list[str]:
    """AUROC of every family's scores against each OOD set (evaluate/ood.py)."""
    keys = sorted({k for row in rows for m in row.runs for k in m if k.startswith("ood_")})
    if not keys:
        return []
    scores = sorted({k[len("ood_auroc_"):].rsplit("_", 1)[0] for k in keys})
    sets = [s for s in OOD_SETS if any(k.endswith("_" + s) for k in keys)]
    columns = [(score, s) for score in scores for s in sets
               if f"ood_auroc_{score}_{s}" in keys]
    body = []
    for row in (r for r in rows if not r.extra and r.runs):
        cells = [_fmt([m.get(f"ood_auroc_{sc}_{s}") for m in row.runs]) for sc, s in columns]
        if any(c != "n/a" for c in cells):
            body.append([row.label] + cells)
    return (["## OOD detection: AUROC (test images vs noise, inverted, grey patches)", "",
             "Scores: `energy` E(x); `grad_norm` ‖f(x)‖ of the time-invariant field; "
             "`score_norm` ‖s(x, ε)‖ of the time-conditional models (t = sde.eps). 0.5 is "
             "chance; below 0.5 the score ranks the OOD set as more in-distribution.", ""]
            + _table(["model"] + [f"{sc} vs {s}" for sc, s in columns], body) + [""])


def _row(ti_rows, family: str, form: str | None = None) -> Row | None:
    return next((r for r in ti_rows if r.family == family
                 and plan.variant_form(r.variant) == form), None)


def _claims(s: Settings, ti_rows: Sequence[Row], records) -> list[list[str]]:
    key, _ = _quality_key(s)
    implicit = _row(ti_rows, "eqm")
    out = []
    for form in s.study.eqm_energy_forms:
        explicit = _row(ti_rows, "eqm_energy", form)
        if implicit and explicit:
            a, b = [m[key] for m in explicit.runs], [m[key] for m in implicit.runs]
            out.append([f"EqM-E ({form}) samples slightly worse than EqM ({key} higher)",
                        f"{_fmt(a)} vs {_fmt(b)}", verdict(a, b, +1)])
    steps = list(s.eval.nfe_sweep_steps)
    for row in [r for r in ti_rows if r.family in ("eqm", "eqm_energy")]:
        if not steps:
            break
        n = max(steps)
        for tol in s.eval.nfe_sweep_tols:
            nfe = _sweep_values(records, row.variant, f"nag_tol{tol:g}", "sample_nfe_mean")
            qa = _sweep_values(records, row.variant, f"nag_tol{tol:g}", key)
            qb = _sweep_values(records, row.variant, f"nag_{n}", key)
            saved = verdict([float(n)] * len(nfe), nfe, +1)
            if verdict(qa, qb, +1) == "reproduced":  # the interval says quality was lost
                saved = f"not reproduced ({key} worse)"
            out.append([f"{row.label}: adaptive stops (τ={tol:g}) save NFE against {n} "
                        f"nag steps at no loss of {key}",
                        f"NFE {_fmt(nfe)} vs {n}; {key} {_fmt(qa)} vs {_fmt(qb)}", saved])
        gd = _sweep_values(records, row.variant, f"gd_{n}", key)
        nag = _sweep_values(records, row.variant, f"nag_eqm_{n}", key)
        out.append([f"{row.label}: NAG-GD (EqM form) beats GD at {n} steps ({key} lower)",
                    f"{_fmt(nag)} vs {_fmt(gd)}", verdict(gd, nag, +1)])
    for row in [r for r in ti_rows if r.family != "eqm"]:
        for s in OOD_SETS:
            auc = [m[f"ood_auroc_energy_{s}"] for m in row.runs
                   if f"ood_auroc_energy_{s}" in m]
            if auc:
                out.append([f"{row.label}: OOD by energy vs {s} (AUROC > 0.5)", _fmt(auc),
                            verdict(auc, [0.5] * len(auc), +1)])
    return out


def time_invariant_lines(s: Settings, rows: Sequence[Row], records, study_dir: str) -> list[str]:
    """The time-invariant families' section (empty without them) and the OOD table."""
    ti_rows = [r for r in rows if r.family in TI and not r.extra and r.runs]
    lines = []
    if ti_rows:
        lines += ["## Time-invariant families (EqM, EqM-E, Energy Matching)", "",
                  "No time input: each is sampled by its own sampler from N(0, I) (EqM: "
                  "Nesterov descent; Energy Matching: Langevin with its temperature "
                  "schedule); same backbone, budget and seeds as the rows above. NAsym: "
                  "mean over the path's γ (table below). AIS NLL: the test points under "
                  f"{AIS_TARGET} (not the samplers' law); there is no ODE likelihood.", ""]
        lines += _summary_lines(s, ti_rows, study_dir)
        lines += _gamma_lines(ti_rows, records) + _nfe_lines(s, ti_rows, records)
    lines += ood_lines(rows)
    claims = _claims(s, ti_rows, records) if ti_rows else []
    if claims:
        lines += ["## Reproduction: Equilibrium Matching / Energy Matching claims", "",
                  "Verdicts from ± 2 standard errors over seeds "
                  "(ebm_vs_score/study/report_time_invariant.py).", ""]
        lines += _table(["claim", "measured", "verdict"], claims) + [""]
    return lines
