"""Evaluators of samples: drawing them in chunks, and their distance to held-out data.

They see a ``sample_fn(params, key) -> (samples, info)`` (big_vision's evaluators see a
``predict_fn``), a classifier or Inception network with ``apply``, and arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ebm_vs_score import metrics
from ebm_vs_score.metrics import fid as fid_lib

Results = dict[str, Any]


def _mean_info(infos: list[dict[str, Any]]) -> dict[str, float]:
    """The chunks' scalar info averaged, each named ``sample_<name>``."""
    return {f"sample_{k}": float(np.mean([d[k] for d in infos])) for k in infos[0]}


def _draw_chunks(sample_fn, params, key, num: int, chunk: int):
    """(samples, info) of each call of ``sample_fn(params, fold_in(key, i))`` on the host,
    as many calls as ``num`` samples in chunks of ``chunk`` need."""
    for i in range(-(-int(num) // int(chunk))):
        samples, info = sample_fn(params, jax.random.fold_in(key, i))
        yield np.asarray(jax.device_get(samples)), jax.device_get(info)


def draw_samples(sample_fn, params, key, num: int, chunk: int
                 ) -> tuple[np.ndarray, dict[str, float]]:
    """``num`` samples from calls of ``sample_fn(params, key)`` that draw ``chunk`` each.

    Chunk i uses ``fold_in(key, i)``; the scalar info of every chunk is averaged and named
    ``sample_<name>`` (``sample_nfe``, ``sample_acceptance``, ...).
    """
    parts, infos = [], []
    for samples, info in _draw_chunks(sample_fn, params, key, num, chunk):
        parts.append(samples)
        infos.append({k: float(np.mean(v)) for k, v in info.items() if np.ndim(v) == 0})
    return np.concatenate(parts)[:num], _mean_info(infos)


def draw_snapshots(snapshot_fn, params, key, num: int, chunk: int
                   ) -> list[tuple[np.ndarray, dict[str, float]]]:
    """:func:`draw_samples` for ``snapshot_fn(params, key) -> (samples (C, chunk, ...),
    info with a leading axis C)`` (``builders.make_snapshot_sample_fn``): one
    ``(samples, info)`` per checkpoint, chunk i again from ``fold_in(key, i)``."""
    parts, infos = [], []
    for samples, info in _draw_chunks(snapshot_fn, params, key, num, chunk):
        parts.append(samples)
        infos.append({k: np.asarray(v) for k, v in info.items() if np.ndim(v) == 1})
    drawn = np.concatenate(parts, axis=1)[:, :num]
    return [(x, _mean_info([{k: float(v[j]) for k, v in d.items()} for d in infos]))
            for j, x in enumerate(drawn)]


def finite_samples(samples: np.ndarray, clip: bool) -> tuple[np.ndarray, float]:
    """The finite samples (clipped to [-1, 1] for images) and the fraction left out."""
    finite = np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
    usable = samples[finite]
    return (np.clip(usable, -1, 1) if clip else usable), float(1.0 - finite.mean())


def toy_sample_quality(samples: np.ndarray, x: np.ndarray, key) -> Results:
    """MMD^2 (median-heuristic RBF) and sliced 2-Wasserstein between samples and data."""
    n = min(len(samples), len(x))
    return {"mmd": float(metrics.mmd(samples[:n], x[:n])),
            "swd": float(metrics.sliced_wasserstein(samples[:n], x[:n], key))}


def classifier_metrics(clf, samples: np.ndarray, x: np.ndarray) -> Results:
    """FD, IS analogue and k-NN precision/recall in the offline classifier's feature space."""
    feat_s, logits_s = clf.apply(samples)
    feat_x, _ = clf.apply(x)
    return dict(feature_metrics(feat_s, logits_s, feat_x), classifier_accuracy=clf.accuracy)


def feature_metrics(feat_s: np.ndarray, logits_s: np.ndarray, feat_x: np.ndarray) -> Results:
    """FD, IS and precision/recall (k = 3) of sample features and logits against data
    features (the study's real-vs-real floor calls it on real draws)."""
    fd = metrics.frechet_distance(*metrics.feature_statistics(feat_s),
                                  *metrics.feature_statistics(feat_x))
    is_mean, is_std = metrics.inception_score(logits_s, splits=min(10, len(logits_s)))
    pr = metrics.precision_recall(feat_x, feat_s, k=min(3, len(feat_s) - 1, len(feat_x) - 1))
    return {"fd": fd, "is": is_mean, "is_std": is_std, "precision": pr.precision,
            "recall": pr.recall}


def inception_metrics(net, samples: np.ndarray, x: np.ndarray, *, reference=None,
                      batch_size: int = 200) -> Results:
    """FID and IS with the standard Inception network ``net`` (``metrics.load_inception``).

    ``reference``: the train split's moments from ``--mode=fid_stats`` (``metrics.fid``),
    the standard FID protocol; None compares with the held-out ``x`` instead.
    """
    out_s = net.apply(samples)
    if reference is not None:
        fid = fid_lib.fid(net.params, samples, reference, batch_size=batch_size)
    else:
        fid = metrics.frechet_distance(*metrics.feature_statistics(out_s.pool3),
                                       *metrics.feature_statistics(net.apply(x).pool3))
    score, std = metrics.inception_score(out_s.logits_unbiased, splits=min(10, len(samples)))
    return {"fid": fid, "inception_score": score, "inception_score_std": std}
