"""The inpainting report: ``REPORT.md`` (label agreement table) and ``completions.png``.

Reads only the results dict that :func:`ebm_vs_score.inpaint.run.run_inpaint` builds.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ebm_vs_score import markdown, plotting


def _fmt(v: Any, f: str) -> str:
    return "–" if v is None else format(v, f)


def write_report(out_dir: str, results: dict) -> str:
    """``REPORT.md``: the label-agreement table, baselines and command."""
    b, s = results["baselines"], results["settings"]
    body = [["real digits", "–", f"{b['real']:.3f}", "", "", ""],
            [f"{s['mask']} half hidden (background)", "–", f"{b['half']:.3f}", "", "", ""]]
    for r in results["rows"]:
        if r["status"] != "ok":
            body.append([r["method"], r["status"], "", "", "", ""])
            continue
        body.append([r["method"], _fmt(r.get("nfe"), ".0f"), f"{r['agreement']:.3f}",
                     f"{r['mse_hidden']:.3f}", _fmt(r.get("acceptance"), ".2f"),
                     f"{r['seconds']:.0f}"])
    lines = [f"# Inpainting: family {results['family']}, checkpoint step {results['step']}", "",
             f"Command: `{markdown.command()}`", "",
             f"{s['num_images']} test digits, the {s['mask']} half hidden and completed; label "
             "agreement = fraction the offline classifier (test accuracy "
             f"{b['classifier_test_accuracy']:.3f}) labels with the true digit; MSE on the "
             "hidden pixels in [-1, 1] units.", ""]
    lines += markdown.table(["method", "NFE", "label agreement ↑", "MSE hidden ↓",
                             "acceptance", "s"], body)
    lines += ["", "![completions](completions.png)", ""]
    return markdown.write(os.path.join(out_dir, "REPORT.md"), lines)


def write_figure(path: str, truth, known, shown: dict, s: dict) -> None:
    """Rows: real digits, the known half, then each method's completions."""
    n = int(s["num_shown"])
    rows = [("real", truth), ("known", known)] + [(m, x) for m, x in shown.items()
                                                   if x is not None]
    fig = plotting.new_figure(figsize=(0.5 * n, 0.6 * len(rows)))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (name, x) in zip(axes, rows, strict=True):
        ax.imshow(plotting.image_grid(np.clip(x[:n], -1, 1), cols=n), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
