"""Out-of-distribution detection by a model's own statistics (EqM's OOD claim, Sec. 5).

Wang & Du 2025 detect OOD inputs by the energy of EqM-E: inputs far from the data have a
high energy. Here every family is scored the same way, on the held-out test images
(in-distribution) against three OOD sets of the same shape:

* ``noise``: i.i.d. uniform pixels in [-1, 1];
* ``inverted``: the test images negated (-x: the same strokes, light on dark);
* ``patches`` (digits only): ``patches32`` photograph patches of the test split, averaged to
  grey and 4x4 average-pooled to 8x8, in [-1, 1].

Scores (higher = more OOD): ``energy`` E(x) where the model has one, and the norm of its
field, ``grad_norm`` ||f(x)|| = ||grad E|| for the time-invariant families (0 at EqM's
minima) and ``score_norm`` ||s(x, t)|| for the time-conditional ones, both at t = ``sde.eps``
(the least-noised level). AUROC = P(score(OOD) > score(test)) + P(=) / 2 (Mann-Whitney),
0.5 = chance, 1 = perfect separation; 1 - AUROC near 1 means the score ranks the wrong way.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

Results = dict[str, Any]
OOD_SETS = ("noise", "inverted", "patches")


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(out > in) + P(out = in) / 2 from the rank sum (Mann & Whitney 1947)."""
    ranks = stats.rankdata(np.concatenate([in_scores, out_scores]))
    n_in, n_out = len(in_scores), len(out_scores)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def patches_as_digits(patches: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) images in [-1, 1] -> grey 8x8 (N, 8, 8, 1) by 4x4 average pooling."""
    grey = patches.mean(axis=-1)
    n = grey.shape[0]
    return grey.reshape(n, 8, 4, 8, 4).mean(axis=(2, 4))[..., None].astype(np.float32)


def ood_sets(x_test: np.ndarray, dataset: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The OOD sets of the module docstring for test images ``x_test`` (N, H, W, C)."""
    rng = np.random.default_rng(seed)
    sets = {"noise": rng.uniform(-1.0, 1.0, x_test.shape).astype(np.float32),
            "inverted": -np.asarray(x_test, np.float32)}
    if dataset == "digits":
        from ebm_vs_score.data import patch_levels, scale_levels  # the data package, lazily

        patches = scale_levels(patch_levels("test")[: len(x_test)], 256, None)
        sets["patches"] = patches_as_digits(np.asarray(patches))
    return sets


def score_functions(score_fn, energy_fn, time_invariant: bool) -> dict[str, Any]:
    """name -> ``fn(params, x, t) -> (B,)``: the energy (if any) and the field's norm."""
    norm = "grad_norm" if time_invariant else "score_norm"

    def field_norm(params, x, t):
        s = score_fn(params, x, t)
        return jnp.sqrt(jnp.sum(s.reshape(s.shape[0], -1) ** 2, axis=-1))

    out = {norm: field_norm}
    if energy_fn is not None:
        out["energy"] = lambda params, x, t: energy_fn(params, x, t)
    return out


def _scores(fn, params, x: np.ndarray, t: float, batch_size: int) -> np.ndarray:
    run = jax.jit(lambda p, y: fn(p, y, jnp.full((y.shape[0],), t, jnp.float32)))
    parts = [np.asarray(run(params, jnp.asarray(b)))
             for b in np.array_split(x, max(1, -(-len(x) // batch_size)))]
    return np.concatenate(parts).astype(np.float64)


def ood_metrics(score_fn, energy_fn, params, x_test: np.ndarray, sets: dict[str, np.ndarray],
                *, t: float, time_invariant: bool, batch_size: int = 512) -> Results:
    """``ood_auroc_<score>_<set>`` for every score and OOD set (module docstring).

    Args:
      score_fn, energy_fn: ``(params, x, t)`` model functions (energy None for score
        models).
      params: the parameters.
      x_test: (N, ...) in-distribution test images.
      sets: name -> (M, ...) OOD images (:func:`ood_sets`).
      t: the time the functions are read at (``sde.eps``; ignored by time-invariant ones).
      time_invariant: names the field norm ``grad_norm`` (else ``score_norm``).
      batch_size: examples per call.
    """
    out = {}
    for name, fn in score_functions(score_fn, energy_fn, time_invariant).items():
        in_scores = _scores(fn, params, x_test, t, batch_size)
        for set_name, x_out in sets.items():
            out_scores = _scores(fn, params, x_out, t, batch_size)
            finite = np.isfinite(out_scores)
            out[f"ood_auroc_{name}_{set_name}"] = auroc(in_scores, out_scores[finite])
    return out


__all__ = ["OOD_SETS", "auroc", "ood_metrics", "ood_sets", "patches_as_digits",
           "score_functions"]
