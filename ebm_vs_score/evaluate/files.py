"""Where evaluation results and samples go, and how they are written (never half-written)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import numpy as np

from ebm_vs_score import plotting, writers
from ebm_vs_score import workdir as workdir_lib

Results = dict[str, Any]


def eval_path(workdir: str, step: int, method: str | None = None) -> str:
    """``WORKDIR/eval/step_N.json``, or ``step_N_<method>.json`` for a second sampler."""
    suffix = "" if method is None else f"_{method}"
    return os.path.join(workdir, "eval", f"step_{step:08d}{suffix}.json")


def samples_path(workdir: str, step: int, method: str, ext: str = "png") -> str:
    """Where the evaluation puts the samples of ``method`` (``png`` or ``npz``)."""
    return os.path.join(workdir, "eval", f"samples_step_{step:08d}_{method}.{ext}")


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON through a temporary file and ``os.replace``: never half-written."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
    os.replace(tmp, path)


def scalars(results: Results) -> dict[str, float]:
    """The scalar entries of a results dict (per-level lists and labels left out)."""
    return {k: float(v) for k, v in results.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def save_samples(workdir: str, step: int, method: str, samples: np.ndarray,
                 reference: np.ndarray) -> None:
    """``samples_step_N_<method>.npz`` and a png (scatter over ``reference`` for 2-D data)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    np.savez(samples_path(workdir, step, method, "npz"), samples=samples)
    if samples.ndim == 2:
        image = plotting.scatter_image(samples[:, :2], reference=reference[:, :2], title=method)
    else:
        image = plotting.samples_image(samples[:64])
    plotting.save_png(image, samples_path(workdir, step, method, "png"))


def write_results(workdir: str, step: int, results: Results, method: str | None = None) -> None:
    """The eval JSON, a ``metrics.jsonl`` line of the scalars, and TensorBoard scalars."""
    if jax.process_index() != 0:
        return
    write_json_atomic(eval_path(workdir, step, method), results)
    values = scalars(results)
    prefix = "eval" if method is None else f"eval_{method}"
    workdir_lib.append_metrics(workdir, dict(values, step=step, split=prefix))
    writer = writers.create_writer(workdir)
    writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in values.items()})
    writer.close()
