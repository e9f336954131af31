"""scikit-learn's 8x8 digits (bundled with scikit-learn, nothing is downloaded).

1797 images with 17 intensity levels v in {0..16}: v -> v/16*2-1; with dequantization
(v + u)/17*2-1, u ~ U[0, 1). Split by index, identical for every run: the first 1500
images are `train`, the last 297 `test` (classes balanced to +-3).
"""

from __future__ import annotations

import functools

import numpy as np

from ebm_vs_score.data.source import SPLIT_IDS, ArraySource, scale_levels

DIGITS_LEVELS = 17
DIGITS_NUM_TRAIN = 1500  # first 1500 sklearn digits; the last 297 are the test split
DIGITS_SHAPE = (8, 8, 1)


@functools.cache
def digits_levels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw digits levels uint8 (N, 8, 8, 1) in {0..16} and labels int32 (N,), read-only."""
    if split not in SPLIT_IDS:
        raise ValueError(f"Unknown digits split {split!r}; valid splits: {list(SPLIT_IDS)}.")
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    part = slice(None, DIGITS_NUM_TRAIN) if split == "train" else slice(DIGITS_NUM_TRAIN, None)
    levels = digits.images[part, :, :, None].astype(np.uint8)
    labels = digits.target[part].astype(np.int32)
    levels.flags.writeable = labels.flags.writeable = False
    return levels, labels


def digits_source(split: str) -> ArraySource:
    """The digits split as an indexable source of 17-level images."""
    return ArraySource(digits_levels(split)[0], DIGITS_LEVELS)


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits: images float32 (N, 8, 8, 1) in [-1, 1] and labels int32 (N,).

    `train` is the first 1500 images and `test` the last 297, for every run.
    """
    levels, labels = digits_levels(split)
    return scale_levels(levels, DIGITS_LEVELS, None), labels.copy()
