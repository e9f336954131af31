"""The study's report: figures (sample grids, 2-D score fields, the QC lambda sweep) and
REPORT.md (Salimans & Ho 2021 Table 1 extended; Chao et al. 2023 Tables 2-3; AIS against
the ODE for the energies; the QC sweep; runs and commands).
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ebm_vs_score import builders, evaluate, plotting
from ebm_vs_score.evaluate import fields as fields_lib
from ebm_vs_score.settings import Settings
from ebm_vs_score.study import plan, report_energy
from ebm_vs_score.study import report_time_invariant as report_ti
from ebm_vs_score.study.plan import family_info

RunRecord = Any  # run.RunRecord (run imports this module)


def variant_label(variant: str, toy: bool) -> str:
    """The report's name of a variant: the family's label, or 'QC λ=<lambda>'."""
    family, weight = plan.parse_variant(variant)
    label, width = family_info(family, toy).label, plan.variant_width(variant)
    if width is not None:
        return f"{label} ch={width}"
    if plan.variant_form(variant) is not None:
        return f"{label} {plan.variant_form(variant)}"
    return label if weight is None else f"{label} λ={weight:g}"


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file ([] if it does not exist); a damaged file raises
    ``WorkdirError`` naming it and the fix (``workdir.read_jsonl``)."""
    from ebm_vs_score import workdir

    return workdir.read_jsonl(path)


def _first_done(records: Sequence[RunRecord], variant: str) -> RunRecord | None:
    return next((r for r in records if r.variant == variant and r.done is not None), None)


def _copy_sample_grids(s: Settings, study_dir: str, records) -> list[tuple[str, str, str]]:
    """figures/samples_<variant>_<sampler>.png from the first finished seed of each variant;
    returns (variant, sampler, path relative to the study directory) of each."""
    out = []
    os.makedirs(os.path.join(study_dir, "figures"), exist_ok=True)
    for family in plan.variants(s):
        record = _first_done(records, family)
        if record is None:
            continue
        step = int(record.done["step"])
        own = plan.run_settings(s, family, record.seed, study_dir).sampling.method
        methods = [own] + [m for m in [record.done.get("extra_sampler")] if m]
        for method in methods:
            src = evaluate.samples_path(record.run_dir, step, method)
            if os.path.exists(src):
                rel = os.path.join("figures", f"samples_{family}_{method}.png")
                if plan.is_writer():
                    shutil.copyfile(src, os.path.join(study_dir, rel))
                out.append((family, method, rel))
    return out


def _samples_panel(s: Settings, study_dir: str, grids: Sequence[tuple[str, str, str]]) -> str:
    """figures/samples_panel.png: every copied sample grid in one row, each panel labelled
    with its model and sampler (the figure the README shows)."""
    from PIL import Image

    toy = s.is_toy
    panels = [(f"{variant_label(variant, toy)} ({method})",
               np.asarray(Image.open(os.path.join(study_dir, rel)).convert("RGB")))
              for variant, method, rel in grids]
    rel = os.path.join("figures", "samples_panel.png")
    if plan.is_writer():
        image = plotting.labelled_panels(panels, title="samples of the first finished seed")
        plotting.save_png(image, os.path.join(study_dir, rel))
    return rel


def score_fields(s: Settings, study_dir: str, records) -> dict[str, dict[str, np.ndarray]]:
    """Score and curl grids (evaluate.score_field_grid) of seed 0 of each variant (2-D)."""
    fields = {}
    toy = s.is_toy
    for variant in plan.variants(s):
        record = _first_done(records, variant)
        if record is None:
            continue
        run = plan.run_settings(s, variant, record.seed, study_dir)
        model = builders.build_model(run)
        _, params = evaluate.restore_params(run, record.run_dir, model)
        fields[variant_label(variant, toy)] = fields_lib.score_field_grid(
            model.fns.score, params, s.study.field_times, float(s.study.field_lim),
            int(s.study.field_grid))
    return fields


def make_figures(s: Settings, study_dir: str, records) -> dict[str, Any]:
    """Sample grids, the QC sweep, and for 2-D data the score fields and mean |curl|."""
    figures: dict[str, Any] = {"samples": _copy_sample_grids(s, study_dir, records)}
    if figures["samples"]:
        figures["samples_panel"] = _samples_panel(s, study_dir, figures["samples"])
    if s.study.qc_lambda_sweep:
        figures.update(_sweep_figure(s, study_dir, records))
    if not s.is_toy or int(s.data.toy_dim) != 2:
        return figures
    fields = score_fields(s, study_dir, records)
    if fields:
        image = plotting.score_field_figure(fields, s.study.field_times,
                                            title="score direction and curl ds_y/dx - ds_x/dy")
        rel = os.path.join("figures", "score_fields.png")
        if plan.is_writer():
            plotting.save_png(image, os.path.join(study_dir, rel))
        figures["score_fields"] = rel
        figures["curl"] = {label: np.mean(np.abs(g["curl"]), axis=(1, 2)).tolist()
                           for label, g in fields.items()}
    return figures


# ----------------------------------------------------------------------------------------
# REPORT.md
# ----------------------------------------------------------------------------------------


class Column(NamedTuple):
    title: str
    key: str


_IMAGE_QUALITY = (Column("FD ↓", "fd"), Column("IS ↑", "is"), Column("precision ↑", "precision"),
                  Column("recall ↑", "recall"), Column("FID (Inception) ↓", "fid"),
                  Column("IS (Inception) ↑", "inception_score"))
_IMAGE_LIKELIHOOD = (Column("NLL bits/dim ↓", "nll_bpd"),)
_TOY_QUALITY = (Column("MMD² ↓", "mmd"), Column("SWD ↓", "swd"))
_TOY_LIKELIHOOD = (Column("NLL nats ↓", "nll_nats"), Column("true NLL nats", "nll_true_nats"),
                   Column("NLL gap (KL) ↓", "nll_gap_nats"),
                   Column("Fisher div. (σ²-wt) ↓", "fisher"))
_CONSERVATIVENESS = (Column("Asym ↓", "asym"), Column("NAsym ↓", "nasym"))
_COST = (Column("NFE", "sample_nfe"), Column("train steps/s ↑", "steps_per_sec"),
         Column("params", "num_params"))


class Row(NamedTuple):
    """One table row: label, family, per-seed metrics of finished runs, failed seeds,
    whether it is the extra (energy-only) sampler's row, and the study variant."""

    label: str
    family: str
    runs: list[dict[str, float]]
    failed: int
    extra: bool = False
    variant: str = ""


def _run_metrics(done: dict, extra: bool) -> dict[str, float]:
    """Scalars of a run: model metrics, the (extra) sampler's metrics, the step speed."""
    values = evaluate.scalars(done["results"])
    if extra:
        values.update(evaluate.scalars(done["extra_results"]))
    values["steps_per_sec"] = float(done["timing"]["steps_per_sec"])
    values["num_params"] = float(done["num_params"])
    return values


def build_rows(s: Settings, records: Sequence[RunRecord]) -> list[Row]:
    """One row per variant (and per energy with an extra sampler), seeds aggregated."""
    toy, rows = s.is_toy, []
    for variant in plan.variants(s):
        family = plan.parse_variant(variant)[0]
        mine = [r for r in records if r.variant == variant]
        done = [r.done for r in mine if r.done is not None]
        label = variant_label(variant, toy)
        rows.append(Row(label, family, [_run_metrics(d, False) for d in done],
                        len(mine) - len(done), variant=variant))
        with_extra = [d for d in done if d.get("extra_results")]
        if with_extra:
            method = with_extra[0]["extra_sampler"]
            runs = [_run_metrics(d, True) for d in with_extra]
            acc = np.mean([r.get("sample_acceptance", np.nan) for r in runs])
            rows.append(Row(f"{label} + {method} (acc. {acc:.2f})", family, runs,
                            len(mine) - len(with_extra), extra=True, variant=variant))
    return rows


def _fmt(values: Sequence[float]) -> str:
    """mean ± sample std over seeds (just the value for one seed or a constant)."""
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    if std == 0.0:
        return f"{int(mean)}" if mean.is_integer() else f"{mean:.4g}"
    return f"{mean:.4g} ± {std:.2g}"


def _columns(candidates: Sequence[Column], rows: Sequence[Row]) -> list[Column]:
    """The candidate columns that every finished run of every row has."""
    runs = [m for row in rows for m in row.runs]
    return [c for c in candidates if runs and all(c.key in m for m in runs)]


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def metric_table(rows: Sequence[Row], columns: Sequence[Column], toy: bool,
                 with_kind: bool = False, missing: str = "n/a",
                 override: Callable[[Sequence[dict], str], str | None] | None = None
                 ) -> list[str]:
    """Markdown table: model [, conservative?, short-cuts?], one column per metric;
    ``missing`` fills a cell that some seed of the row lacks; ``override(runs, key)``,
    when not None, replaces a cell."""
    header = ["model"] + (["conservative?", "short-cuts to inputs?"] if with_kind else [])
    body = []
    for row in rows:
        label = row.label if not row.failed else f"{row.label} ({len(row.runs)} of " \
                                                 f"{len(row.runs) + row.failed} seeds)"
        info = family_info(row.family, toy)
        cells = [label] + ([info.conservative, info.shortcuts] if with_kind else [])
        cells += [_cell(row.runs, c.key, missing, override) for c in columns]
        body.append(cells)
    return markdown_table(header + [c.title for c in columns], body)


def _cell(runs: Sequence[dict], key: str, missing: str, override) -> str:
    if not runs:
        return "failed"
    if override is not None and (text := override(runs, key)) is not None:
        return text
    if any(key not in m for m in runs):  # e.g. no ODE without an SDE
        return missing
    return _fmt([m[key] for m in runs])


def _header(s: Settings, records: Sequence[RunRecord],
            classifier_accuracy: float | None) -> list[str]:
    toy, n = s.is_toy, len(s.study.seeds)
    finished = sum(r.done is not None for r in records)
    lines = [f"# Energy or score? Study on `{s.data.dataset}`", "",
             f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by "
             "`ebm_vs_score.study`. Families "
             + ", ".join(f"**{family_info(f, toy).label}** ({family_info(f, toy).description})"
                         for f in s.study.families)
             + f"; U, C and QC share one network, {family_info('resnet_energy', toy).label} "
             f"is the scalar-output network of the same config; same objective "
             f"(`{s.loss.objective}`), "
             f"optimizer, {s.training.n_iters} steps at batch {s.training.batch_size}, "
             f"SDE `{s.sde.name}`; sampler `{s.sampling.method}` with "
             f"{s.sampling.num_steps} steps for every model"
             + (" (the time-invariant families: their own objective and sampler, see their "
                "section)" if set(s.study.families) & set(report_ti.TI) else "")
             + ". Seeds "
             f"{tuple(s.study.seeds)}: cells are mean ± sample std over seeds. "
             f"{finished} of {len(records)} runs finished.", ""]
    if toy:
        lines += ["Toy metrics: MMD² (median-heuristic RBF) and sliced 2-Wasserstein (SWD) "
                  "between samples and test data; NLL by the probability-flow ODE (exact "
                  "divergence) against the true NLL of the test points (gap = KL(p‖q) "
                  "estimate); exact Fisher divergence E‖s − ∇log p_t‖², σ(t)²-weighted, "
                  f"averaged over {s.eval.asym_levels} noise levels (mixture toys).", ""]
    else:
        acc = "n/a" if classifier_accuracy is None else f"{classifier_accuracy:.3f}"
        lines += ["Image metrics: FD, IS, precision, recall (k=3) in the feature space of a "
                  "small CNN trained on the train split (`classifier/`, shared by all runs, "
                  f"test accuracy {acc}): comparable within this study only, not with "
                  "published FID/IS. NLL: test bits/dim of uniformly dequantized data, "
                  "offset log2(L) − 1 (Song et al. 2021, Table 2), "
                  f"{_divergence(s)}; AIS scores the same dequantized points.", ""]
        if s.eval.inception_weights is None:
            lines += ["FID/IS with the standard Inception network: skipped "
                      "(`eval.inception_weights` is not set).", ""]
    probes = int(s.eval.asym_probes)
    jacobian = "exact Jacobian" if probes == 0 else f"Hutchinson, {probes} probe(s)"
    lines += [f"Asym/NAsym (Chao et al. 2023): averaged over {s.eval.asym_levels} noise "
              f"levels and the test data ({jacobian}). "
              "Train steps/s: the steady-state speed between the train loop's first and last "
              "records in the run's metrics.jsonl (start-up and the compiling step excluded); "
              "the wall time of the training calls is in the Runs table.", ""]
    if n < 2:
        lines += ["(One seed: no standard deviations.)", ""]
    return lines


def _table_sections(rows: Sequence[Row], toy: bool) -> list[str]:
    """Salimans & Ho 2021 Table 1 (extended) and Chao et al. 2023 Tables 2-3."""
    quality = _TOY_QUALITY if toy else _IMAGE_QUALITY
    likelihood = _TOY_LIKELIHOOD if toy else _IMAGE_LIKELIHOOD
    chao_rows = [r for r in rows if r.family in ("score", "energy", "qc") and not r.extra]
    classic = [r for r in rows if r.family not in report_ti.TI] or rows  # their columns
    lines = ["## Table 1 (Salimans & Ho 2021, Table 1), extended", ""]
    lines += metric_table(rows, _columns(quality + likelihood + _CONSERVATIVENESS + _COST,
                                         classic), toy, with_kind=True)
    lines += ["", "## Likelihood and conservativeness (Chao et al. 2023, Table 2)", ""]
    lines += metric_table(chao_rows, _columns(likelihood + _CONSERVATIVENESS, chao_rows), toy)
    lines += ["", "## Sample quality (Chao et al. 2023, Table 3)", ""]
    lines += metric_table(chao_rows, _columns(quality + _COST[:1], chao_rows), toy)
    return lines + [""]


def _per_level_table(rows: Sequence[Row], records, key: str, title: str) -> list[str]:
    """Mean over seeds of a per-noise-level metric, one column per level."""
    per_family = {}
    for row in (r for r in rows if not r.extra):
        lists = [r.done["results"].get(key) for r in records
                 if r.variant == row.variant and r.done is not None]
        if lists and all(lists):
            per_family[row.label] = (np.mean(lists, axis=0), _first_t(records, row.variant))
    if not per_family:
        return []
    ts = next(iter(per_family.values()))[1]
    body = [[label] + [f"{v:.3g}" for v in values] for label, (values, _) in per_family.items()]
    return [f"## {title}", ""] + markdown_table(["model"] + [f"t={t:.3g}" for t in ts],
                                                body) + [""]


def _first_t(records, variant: str) -> list[float]:
    return next(r.done["results"]["t_levels"] for r in records
                if r.variant == variant and r.done is not None)


def _divergence(s: Settings) -> str:
    probes = int(s.eval.nll_probes)
    return "exact divergence" if probes == 0 else f"Hutchinson divergence, {probes} probe(s)"


def _energy_table(rows: Sequence[Row], toy: bool) -> list[str]:
    """AIS log Z and NLL next to the ODE NLL on the same points (Gao et al. 2021, Table 4)."""
    energy_rows = [r for r in rows if not r.extra and r.runs and r.family not in report_ti.TI
                   and any(k in r.runs[0] for k in report_energy.ROW_KEYS)]
    if not energy_rows:
        return []
    runs = [m for row in energy_rows for m in row.runs]
    columns = [Column(title, key) for title, key in report_energy.columns(toy)
               if any(key in m for m in runs)]
    return (["## Energies only: AIS (t = eps) against the ODE, same points and offset", ""]
            + metric_table(energy_rows, columns, toy, missing="skipped",
                           override=report_energy.unconverged_cell)
            + ["", report_energy.NOTE, ""])


def _figure_lines(figures: dict[str, Any], s: Settings) -> list[str]:
    toy = s.is_toy
    lines = ["## Samples (first finished seed)", ""]
    if "samples_panel" in figures:
        lines += [f"![samples, every model, labelled]({figures['samples_panel']})", ""]
    for variant, method, rel in figures["samples"]:
        lines.append(f"![{variant_label(variant, toy)}, {method}]({rel})")
    lines.append("")
    if "score_fields" in figures:
        times = list(s.study.field_times)
        lines += ["## Score fields and curl (first finished seed)", "",
                  f"![score fields]({figures['score_fields']})", "",
                  "Mean |curl| = |∂s_y/∂x − ∂s_x/∂y| over the grid "
                  f"[-{s.study.field_lim}, {s.study.field_lim}]² "
                  "(0 up to float error for a conservative field):", ""]
        body = [[label] + [f"{v:.3g}" for v in values]
                for label, values in figures["curl"].items()]
        lines += markdown_table(["model"] + [f"t={t:g}" for t in times], body) + [""]
    return lines


def _runs_lines(records: Sequence[RunRecord]) -> list[str]:
    body = []
    for r in records:
        if r.done is None:
            body.append([r.name, r.status, "-", "-", "-", "-", f"`{r.run_dir}`"])
            continue
        timing = r.done["timing"]
        body.append([r.name, r.status, str(r.done["step"]), f"{timing['steps_per_sec']:.3g}",
                     f"{timing['train_wall_s']:.1f}", f"{r.done['eval_wall_s']:.1f}",
                     f"`{r.run_dir}`"])
    lines = ["## Runs", ""] + markdown_table(
        ["run", "status", "step", "train steps/s", "train wall s", "eval wall s", "directory"],
        body) + [""]
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r.error}" for r in failed] + [
            "", "Rerun the same command to retry only these runs.", ""]
    return lines


def _command_lines(s: Settings, study_dir: str) -> list[str]:
    lines = ["## Commands", "", "Every invocation of this study directory:", ""]
    for entry in read_jsonl(os.path.join(study_dir, "commands.jsonl")):
        lines += [f"- {entry['time']}:", "", "  ```", f"  {entry['command']}", "  ```", ""]
    scale = s.study.scale
    shared = plan.study_overrides(s)
    lines += [f"Overrides of `configs/study_{scale}.py`: "
              + (" ".join(f"`{o}`" for o in shared) or "none"), "",
              f"Each run `runs/<family>_seed<k>` is `config_base.get_config('{scale}', family)` "
              "with these overrides and `--config.seed=<k>` (fields marked * are added by the "
              "study and do not exist in the family config files):", ""]
    for family in s.study.families:
        items = plan.family_overrides(s, family, study_dir)
        lines += [f"- `configs/{scale}_{family}.py`: " + (" ".join(f"`{o}`" for o in items)
                                                        or "no overrides")]
    return lines + [""]


def _sweep_columns(toy: bool) -> tuple[Column, ...]:
    quality = Column("MMD² ↓", "mmd") if toy else Column("FD ↓", "fd")
    nll = Column("NLL nats ↓", "nll_nats") if toy else Column("NLL bits/dim ↓", "nll_bpd")
    return (Column("NAsym ↓", "nasym"), quality, nll, Column("train steps/s ↑", "steps_per_sec"))


def _sweep_rows(rows: Sequence[Row]) -> list[Row]:
    """U (lambda = 0) and the QC rows of a sweep, in increasing lambda."""
    mine = [r for r in rows if not r.extra and r.family in ("score", "qc") and r.runs]
    return sorted(mine, key=lambda r: plan.parse_variant(r.variant)[1] or 0.0)


def _sweep_lines(s: Settings, rows: Sequence[Row], figures: dict[str, Any]) -> list[str]:
    """The QC lambda sweep (Chao et al. 2023, Table 2 claim): one row per lambda."""
    if not s.study.qc_lambda_sweep or "qc" not in s.study.families:
        return []
    toy = s.is_toy
    sweep = _sweep_rows(rows)
    lines = ["## QC λ sweep (L = DSM + λ L_QC; U is λ = 0)", "",
             f"L_QC is the Hutchinson estimate of Asym with {s.loss.qc_probes} "
             "probe(s), as `losses.qc_regularizer` computes it; λ multiplies it as given.", ""]
    lines += metric_table(sweep, _columns(_sweep_columns(toy), sweep), toy)
    if "qc_sweep" in figures:
        lines += ["", f"![QC λ sweep]({figures['qc_sweep']})"]
    return lines + [""]


def sweep_image(rows: Sequence[Row], toy: bool) -> np.ndarray:
    """Each sweep metric against lambda (log axis; mean ± std over seeds), U as a line."""
    columns = _sweep_columns(toy)
    fig = plotting.new_figure(figsize=(4 * len(columns), 3.2))
    axes = fig.subplots(1, len(columns))
    qc = [r for r in rows if r.family == "qc"]
    lams = [plan.parse_variant(r.variant)[1] for r in qc]
    for ax, col in zip(axes, columns, strict=True):
        values = [[m[col.key] for m in r.runs if col.key in m] for r in qc]
        ax.errorbar(lams, [np.mean(v) for v in values],
                    yerr=[np.std(v) for v in values], marker="o", label="QC")
        for r in rows:
            if r.family == "score" and r.runs and col.key in r.runs[0]:
                ax.axhline(np.mean([m[col.key] for m in r.runs]), ls="--", c="gray",
                           label="U (λ = 0)")
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_title(col.title)
    axes[0].legend()
    return plotting.figure_to_array(fig)


def _sweep_figure(s: Settings, study_dir: str, records) -> dict[str, Any]:
    rows = _sweep_rows(build_rows(s, records))
    if not any(r.family == "qc" for r in rows):
        return {}
    rel = os.path.join("figures", "qc_sweep.png")
    if plan.is_writer():
        image = sweep_image(rows, s.is_toy)
        plotting.save_png(image, os.path.join(study_dir, rel))
    return {"qc_sweep": rel}


def write_report(s: Settings, study_dir: str, records: Sequence[RunRecord], figures: dict[str, Any],
                 classifier_accuracy: float | None = None,
                 power_lines: Sequence[str] = ()) -> str:
    """Writes ``study_dir/REPORT.md`` (atomically) and returns its path; ``power_lines``
    (``verdicts.power_lines``) follow the tables."""
    toy = s.is_toy
    rows = build_rows(s, records)
    lines = _header(s, records, classifier_accuracy)
    lines += _table_sections(rows, toy) + list(power_lines)
    lines += _per_level_table(rows, records, "nasym_per_level", "NAsym per noise level")
    if toy:
        lines += _per_level_table(rows, records, "fisher_per_level",
                                  "Exact Fisher divergence per noise level (unweighted)")
    lines += _energy_table(rows, toy)
    lines += report_ti.time_invariant_lines(s, rows, records, study_dir)
    lines += _sweep_lines(s, rows, figures)
    lines += _figure_lines(figures, s)
    lines += _runs_lines(records)
    lines += _command_lines(s, study_dir)
    path = os.path.join(study_dir, "REPORT.md")
    if not plan.is_writer():
        return path
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
    return path
