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
from ebm_vs_score.metrics import fid, inception


def reference_batches(config, batch_size: int) -> Iterator[np.ndarray]:
    """All train images of ``config.data`` in a fixed order (the protocol of metrics.fid)."""
    return data_lib.ordered_batches(config.data, "train", batch_size)


def write_reference_stats(config, workdir: str) -> str:
    """The reference statistics of the train split, to a file.

    Writes ``eval.fid_stats`` (default ``WORKDIR/fid_stats/<dataset>_train.npz``) and returns
    its path. Raises FileNotFoundError without ``eval.inception_weights``.
    """
    net = inception.load_inception(config.eval.inception_weights)
    path = config.eval.get("fid_stats") or os.path.join(
        workdir, "fid_stats", f"{config.data.dataset.replace('/', '_')}_train.npz")
    batch_size = int(config.eval.get("fid_batch_size", 200))
    moments = fid.feature_moments(net.params, reference_batches(config, batch_size),
                                  batch_size=batch_size)
    if jax.process_index() == 0:
        fid.save_moments(path, moments, dataset=config.data.dataset, split="train")
    return path
