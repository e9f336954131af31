"""Figures written during training and evaluation: sample grids, 2-D scatter plots,
score fields with their curl.

Images are returned as uint8 arrays (H, W, 3) so the same picture goes to a PNG file and
to TensorBoard.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np


def image_grid(images: np.ndarray, pad: int = 1, cols: int | None = None) -> np.ndarray:
    """Tiles (N, H, W, C) images in [-1, 1] into one uint8 (rows*H, cols*W, 3) grid."""
    n, h, w, c = images.shape
    cols = int(math.ceil(math.sqrt(n))) if cols is None else cols
    rows = int(math.ceil(n / cols))
    pixels = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    if c == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = pixels[i, ..., :3]
    return grid


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling, so that 8x8 digits are visible in a PNG."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def new_figure(figsize=(4, 4)):
    """A matplotlib Figure that does not touch pyplot's global backend (notebook-safe)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def figure_to_array(fig) -> np.ndarray:
    """Renders a matplotlib figure to uint8 RGB."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    buf.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buf).convert("RGB"))


def scatter_image(points: np.ndarray, reference: np.ndarray | None = None,
                  lim: float = 4.0, title: str = "") -> np.ndarray:
    """A 2-D scatter plot of samples (and optionally data) as uint8 RGB."""
    fig = new_figure()
    ax = fig.subplots()
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="tab:gray", alpha=0.4, label="data")
    ax.scatter(points[:, 0], points[:, 1], s=1, c="tab:blue", alpha=0.6, label="samples")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title)
    return figure_to_array(fig)


def samples_image(samples: np.ndarray) -> np.ndarray:
    """The picture of a batch of samples: a grid for images, a scatter for 2-D points."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        grid = image_grid(samples)
        return upscale(grid, max(1, 256 // grid.shape[0]))
    return scatter_image(samples[:, :2])


def labelled_panels(panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> np.ndarray:
    """Images (uint8 RGB) side by side in one row, each under its label, as uint8 RGB."""
    fig = new_figure(figsize=(3.2 * len(panels), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (label, image) in zip(axes, panels, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    return figure_to_array(fig)


def save_png(image: np.ndarray, path) -> None:
    """Writes uint8 RGB to ``path`` (a local path or any etils.epath, e.g. gs://)."""
    from etils import epath
    from PIL import Image

    with epath.Path(path).open("wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def score_field_figure(fields: Mapping[str, Mapping[str, np.ndarray]], times: Sequence[float],
                       title: str = "") -> np.ndarray:
    """Score fields side by side with their curl, as uint8 RGB.

    One row per model, one column per noise level: the heat map is the rotation density
    ds_y/dx - ds_x/dy (diverging colours, 0 = white, one symmetric scale per column so the
    models compare at a glance; a conservative field stays white), the arrows the score
    direction (unit length); panel titles give max |curl|.

    Args:
      fields: model label -> ``evaluate.score_field_grid`` output: ``'x'``, ``'y'`` (n, n)
        grid coordinates, ``'score'`` (T, n, n, 2) and ``'curl'`` (T, n, n).
      times: the T noise levels (for the panel titles).
      title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(fields), len(times)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    vmax = [max(max(float(np.max(np.abs(g["curl"][c]))) for g in fields.values()), 1e-12)
            for c in range(cols)]
    for r, (label, grid) in enumerate(fields.items()):
        x, y = grid["x"], grid["y"]
        extent = (x.min(), x.max(), y.min(), y.max())
        for c, t in enumerate(times):
            ax, curl, s = axes[r, c], grid["curl"][c], grid["score"][c]
            im = ax.imshow(curl, origin="lower", extent=extent, cmap="RdBu_r", vmin=-vmax[c],
                           vmax=vmax[c])
            norm = np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), 1e-12)
            ax.quiver(x, y, *(s / norm).transpose(2, 0, 1), angles="xy",
                      scale=1.5 * x.shape[0], width=0.004)
            ax.set_title(f"{label}, t={t:g}\nmax|curl|={np.max(np.abs(curl)):.2g}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title)
    return figure_to_array(fig)
