"""REPORT.md sections of the time-invariant families (EqM, EqM-E, Energy Matching; issue
#26): their summary, NAsym along the EqM path, sample quality against NFE, and the OOD
table of every family.

The verdicts on Equilibrium Matching's testable claims (explicit energy slightly worse
than the implicit field, adaptive compute saves NFE, OOD detection by energy, NAG-GD beats
GD) are not computed here: they are claims of ``study.claims``, judged by
``study.verdicts`` from paired per-seed intervals, written into the study record and shown
in the report's power section (and README's reproduction table) with the other claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ebm_vs_score.evaluate.ood import OOD_SETS
from ebm_vs_score.evaluate.time_invariant import AIS_TARGET
from ebm_vs_score.settings import Settings
from ebm_vs_score.study import plan, report_energy

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


def _cell(runs: Sequence[dict], key: str) -> str:
    """A metric over seeds; an AIS NLL that the tail test skipped (Z = inf) says so."""
    if key.startswith("ais_nll") and any(m.get("energy_tail_rising_fraction", 0) > 0
                                          for m in runs):
        return "skipped: exp(−E) not normalizable"
    if (text := report_energy.unconverged_cell(runs, key)) is not None:
        return text
    return _fmt([m.get(key) for m in runs])


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


def _summary_lines(s: Settings, ti_rows: Sequence[Row], study_dir: str) -> list[str]:
    key, title = _quality_key(s)
    unit = "nats" if s.is_toy else "bpd"
    body = []
    for row in ti_rows:
        run = plan.run_settings(s, row.variant, s.study.seeds[0], study_dir)
        sampler = f"{run.sampling.method}, {run.sampling.num_steps} steps"
        keys = (key, "nasym", f"ais_nll_{unit}", "sample_nfe", "steps_per_sec")
        body.append([row.label, sampler] + [_cell(row.runs, k) for k in keys])
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
             "NFE is the mean over examples of the evaluations each made before it stopped. "
             "Each fixed-step form is one chain per example read after each step count, and "
             "every row of a run starts from the same noise (paired rows).",
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
                  f"{AIS_TARGET} (not the samplers' law); there is no ODE likelihood. "
                  "The Equilibrium Matching claims these rows test, with paired intervals "
                  "and verdicts, are in the claims table of the power section.", ""]
        lines += _summary_lines(s, ti_rows, study_dir)
        lines += _gamma_lines(ti_rows, records) + _nfe_lines(s, ti_rows, records)
    lines += ood_lines(rows)
    return lines
