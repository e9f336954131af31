"""The composition experiment's report: ``W/compose/REPORT.md`` and ``samples.png``.

Reads only the results dict that :func:`ebm_vs_score.compose.run.run_compose` builds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ebm_vs_score import markdown, plotting, settings

FAMILY_LABELS = {"score": "U", "energy": "C", "qc": "QC", "resnet_energy": "C-ResNet"}
MAX_POINTS = 600  # points per scatter panel


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan" if isinstance(value, float) else "–"
    return format(value, fmt)


def _row_cells(row: dict) -> list[str]:
    cells = [FAMILY_LABELS.get(row["family"], row["family"]), row["sampler"]]
    if row["status"] != "ok":
        return cells + [row["status"], "", "", "", ""]
    return cells + [_num(1e3 * row["mmd"], ".2f"), _num(row.get("mode_tv"), ".3f"),
                    _num(row.get("nfe"), ".0f"), _num(row.get("acceptance"), ".2f"),
                    _num(row.get("seconds"), ".1f")]


def results_tables(results: dict, operators: Sequence[str]) -> list[str]:
    """One markdown table per composition operator."""
    lines = []
    header = ["family", "sampler", "MMD² ×10³ ↓", "mode TV ↓", "NFE", "acceptance", "s"]
    for op in operators:
        body = [_row_cells(r) for r in results["rows"] if r["operator"] == op]
        body.append(["exact", "grid (floor)", _num(1e3 * results["floor"][op], ".2f"), "0",
                     "", "", ""])
        lines += [f"### {op}", ""] + markdown.table(header, body) + [""]
    return lines


def _describe(c: settings.ComposeSettings) -> list[str]:
    a, b = c.datasets
    return [
        f"Components: one model per family on `{a}` (A) and one on `{b}` (B). Compositions: "
        f"product A^{c.product_weights[0]}·B^{c.product_weights[1]}, mixture "
        f"{c.mixture_weights[0]}·A + {c.mixture_weights[1]}·B, negation A / B^{c.alpha}.",
        f"Exact answer: the composed density of the exact toy densities on a "
        f"{c.grid_size}² grid over [-{c.grid_lim}, {c.grid_lim}]², sampled by grid cell "
        f"and uniform jitter; {c.num_samples} samples per cell. MMD² (unbiased, sum of RBF "
        "kernels with bandwidths 0.1, 0.3, 1) to the exact samples; the floor row is two "
        "independent exact sample sets. Mode TV: total variation between the fractions of "
        "points nearest to each component mean of the two toys, model vs exact.",
        f"Samplers: euler_maruyama {c.sde_steps} steps; ode (Heun) {c.ode_steps} steps; "
        f"ula/mala/hmc {c.mcmc_levels} levels × {c.n_steps_each} steps (annealed on the "
        "composed energy/score at each level). NFE counts composed evaluations; each costs "
        "one pass of each of the two networks.",
    ]


def write_report(out_dir: str, s: settings.Settings, results: dict) -> str:
    """Writes ``REPORT.md`` (tables, setup, command, figure) and returns its path."""
    c = s.compose
    runs = "; ".join(f"{FAMILY_LABELS.get(f, f)}: " + ", ".join(f"{d} {s}" for d, s in v.items())
                     for f, v in results["runs"].items())
    lines = ["# What only an energy can do: composing trained models", "",
             f"Command: `{markdown.command()}`", "",
             f"Training steps per component: {s.training.n_iters}. Runs: {runs}.", ""]
    lines += [p + "\n" for p in _describe(c)]
    lines += results_tables(results, list(c.operators))
    lines += ["![samples against the exact composed density](samples.png)", ""]
    return markdown.write(os.path.join(out_dir, "REPORT.md"), lines)


def _panel(ax, mass: np.ndarray, lim: float, x: np.ndarray | None, title: str) -> None:
    ax.imshow(mass, origin="lower", extent=(-lim, lim, -lim, lim), cmap="Greys",
              vmax=float(np.quantile(mass, 0.999)) or None)
    if x is not None:
        ax.scatter(x[:MAX_POINTS, 0], x[:MAX_POINTS, 1], s=1.5, c="tab:red", alpha=0.6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def write_figure(path: str, c: settings.ComposeSettings, refs: dict, shown: dict) -> None:
    """Rows: compositions; columns: exact samples, then each family x sampler."""
    combos = [(f, m) for f in c.families for m in c.samplers]
    ops = list(c.operators)
    fig = plotting.new_figure(figsize=(1.3 * (len(combos) + 1), 1.4 * len(ops)))
    axes = np.asarray(fig.subplots(len(ops), len(combos) + 1, squeeze=False))
    for i, op in enumerate(ops):
        mass, lim = refs[op]["mass"], float(c.grid_lim)
        _panel(axes[i, 0], mass, lim, refs[op]["x"], f"{op}: exact")
        for j, (fam, method) in enumerate(combos):
            x = shown.get((fam, op, method))
            label = f"{FAMILY_LABELS.get(fam, fam)} {method}" + ("" if x is not None else " –")
            _panel(axes[i, j + 1], mass, lim, x, label)
    fig.savefig(path, dpi=110, bbox_inches="tight")
