"""``--mode=fid_stats``: the FID reference statistics of a train split, written to a file.

The protocol (all images of the split, uint8 levels scaled to [-1, 1], no dequantization,
no flips; pool3 moments in float64) is :mod:`ebm_vs_score.metrics.fid`'s; this mode reads
the config's data and weights file and writes ``eval.fid_stats``, which ``--mode=eval``
then uses as the reference of its FID.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import jax
import numpy as np

from ebm_vs_score import data as data_lib
from ebm_vs_score import settings
from ebm_vs_score.metrics import fid, inception


def reference_batches(data: settings.DataSettings, batch_size: int) -> Iterator[np.ndarray]:
    """All train images of the dataset in a fixed order (the protocol of metrics.fid)."""
    return data_lib.ordered_batches(data, "train", batch_size)


def write_reference_stats(s: settings.Settings, workdir: str) -> str:
    """The reference statistics of the train split, to a file.

    Writes ``eval.fid_stats`` (default ``WORKDIR/fid_stats/<dataset>_train.npz``) and returns
    its path. Raises FileNotFoundError without ``eval.inception_weights``.
    """
    settings.require(s)
    net = inception.load_inception(s.eval.inception_weights)
    path = s.eval.fid_stats or os.path.join(
        workdir, "fid_stats", f"{s.data.dataset.replace('/', '_')}_train.npz")
    batch_size = int(s.eval.fid_batch_size)
    moments = fid.feature_moments(net.params, reference_batches(s.data, batch_size),
                                  batch_size=batch_size)
    if jax.process_index() == 0:
        fid.save_moments(path, moments, dataset=s.data.dataset, split="train")
    return path
