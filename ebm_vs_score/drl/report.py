"""The DRL long run's outputs: ``long_run.json`` and ``long_run.png``.

Reads only what :func:`ebm_vs_score.drl.long_run.run_long_run` builds. The figure has one
row per image set for images (16 chains per row: held-out data, the chains' start, then
each snapshot), and one row of scatter panels per chain for 2-D toys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from ebm_vs_score import plotting
from ebm_vs_score.evaluate.files import write_json_atomic

FIGURE_CHAINS = 16  # images per figure row
SCATTER_POINTS = 1000  # points per scatter panel
SCATTER_LIM = 4.0


def output_dir(workdir: str, start: str) -> str:
    """``WORKDIR/long_run`` (chains from samples) or ``WORKDIR/long_run_from_data``."""
    return os.path.join(workdir, "long_run" if start == "sample" else "long_run_from_data")


def _snapshot_rows(rows: Mapping[str, np.ndarray], steps: Sequence[int],
                   chain: str) -> list[tuple[str, np.ndarray]]:
    """(label, points) per snapshot of ``chain``; the conditional's step 0 is x_1."""
    start = "x_1 (start)" if chain == "conditional" else "marg. step 0"
    return [(f"{chain[:4]}. step {s}" if s else start, x)
            for s, x in zip(steps, rows[chain], strict=True)]


def _image_figure(path: str, panels: Sequence[tuple[str, np.ndarray]]) -> None:
    """Rows of images (FIGURE_CHAINS each) with a label per row, as a PNG."""
    n = min(FIGURE_CHAINS, min(len(x) for _, x in panels))
    images = np.stack([np.clip(x[:n], -1, 1) for _, x in panels])
    grid = plotting.image_grid(images.reshape((-1,) + images.shape[2:]), cols=n)
    cell = images.shape[2] + 1  # image_grid's pad is 1
    fig = plotting.new_figure(figsize=(0.45 * n + 1.2, 0.45 * len(panels) + 0.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([1 + cell * (i + 0.5) for i in range(len(panels))],
                  [label for label, _ in panels], fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    plotting.save_png(plotting.figure_to_array(fig), path)


def _scatter_figure(path: str, grid: Sequence[Sequence[tuple[str, np.ndarray]]]) -> None:
    """Rows of 2-D scatter panels (the first two coordinates), as a PNG."""
    cols = max(len(row) for row in grid)
    fig = plotting.new_figure(figsize=(1.6 * cols, 1.7 * len(grid)))
    axes = np.asarray(fig.subplots(len(grid), cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, row in enumerate(grid):
        for j, (label, x) in enumerate(row):
            ax = axes[i, j]
            ax.scatter(x[:SCATTER_POINTS, 0], x[:SCATTER_POINTS, 1], s=0.5, alpha=0.5)
            ax.set_xlim(-SCATTER_LIM, SCATTER_LIM)
            ax.set_ylim(-SCATTER_LIM, SCATTER_LIM)
            ax.set_title(label, fontsize=7)
    plotting.save_png(plotting.figure_to_array(fig), path)


def write_figure(path: str, result: dict, held_out: np.ndarray,
                 rows: Mapping[str, np.ndarray]) -> None:
    """``long_run.png`` of the run's held-out data, the chains' start and the snapshots."""
    steps = result["snapshot_steps"]
    first = [("data (held out)", held_out), (f"start: {result['start']}", rows["start"])]
    chains = [c for c in ("conditional", "marginal") if c in rows]
    if held_out.ndim == 4:
        panels = first + [p for c in chains for p in _snapshot_rows(rows, steps, c)]
        _image_figure(path, panels)
    else:
        _scatter_figure(path, [first] + [_snapshot_rows(rows, steps, c) for c in chains])


def write(out_dir: str, result: dict, held_out: np.ndarray,
          rows: Mapping[str, np.ndarray]) -> str:
    """Writes ``long_run.json`` and ``long_run.png`` to ``out_dir``; returns the JSON path."""
    path = os.path.join(out_dir, "long_run.json")
    write_json_atomic(path, result)
    write_figure(os.path.join(out_dir, "long_run.png"), result, held_out, rows)
    summary = {k: result[k] for k in ("metric", "distance_progressive_sample",
                                      "distance_real_same_n") if k in result}
    logging.info("drl_long_run: %s; conditional drift %.4g; written to %s", summary,
                 result["conditional"]["drift"], out_dir)
    return path
