"""`patches32`: 32x32x3 patches of real colour photographs, offline, at CIFAR-10's shape.

The photographs ship with scikit-image (`skimage.data`) and scikit-learn
(`load_sample_images`), so the dataset needs no download. Train and test patches come
from DIFFERENT photographs, so a test NLL measures generalization to unseen images:

  train: astronaut, coffee, hubble_deep_field, immunohistochemistry, retina, rocket,
         motorcycle_left, motorcycle_right (skimage), china (sklearn)
  test:  chelsea (skimage, a cat), flower (sklearn)

Patch i of a split: a photograph drawn uniformly, a square crop of side 32 f with f drawn
uniformly from {1, 2, 3, 4} at a uniform position on the grid of f x f blocks, averaged
over the blocks (exact area downsampling) to 32x32 and rounded to uint8, and mirrored
left-right with probability 1/2.
All draws come from one fixed seed per split, so the dataset (50,000 train and 10,000
test patches, like CIFAR-10) is the same in every run and on every host; the run's seed
only shuffles, flips and dequantizes it (`ebm_vs_score.data.source`). Levels are 256, so
images are scaled and dequantized exactly like TFDS images and bits/dim follows the
standard protocol (Song et al. 2021).
"""

from __future__ import annotations

import functools

import numpy as np

from ebm_vs_score.data.source import SPLIT_IDS, ArraySource

PATCHES_NAME = "patches32"
PATCH_SIZE = 32
PATCH_LEVELS = 256
PATCH_FACTORS = (1, 2, 3, 4)  # crop side 32 f, averaged over f x f blocks
PATCHES_NUM = {"train": 50_000, "test": 10_000}
PATCH_PHOTOS = {
    "train": ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
              "rocket", "motorcycle_left", "motorcycle_right", "china"),
    "test": ("chelsea", "flower"),
}
_PATCH_SEED = 20_261_129


def load_photo(name: str) -> np.ndarray:
    """A bundled colour photograph, uint8 (H, W, 3)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[("china", "flower").index(name)]
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


def downsample(photo: np.ndarray, factor: int) -> np.ndarray:
    """Means over f x f blocks (exact area downsampling), rounded: uint8 (H//f, W//f, 3)."""
    h, w = photo.shape[0] // factor * factor, photo.shape[1] // factor * factor
    blocks = photo[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def make_patches(photos: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """n patches uint8 (n, 32, 32, 3) of `photos` (see the module doc), deterministic.

    A crop of side 32 f on the grid of f x f blocks, averaged over the blocks, is a
    32 x 32 window of the photograph downsampled by f: each patch is one such window.
    """
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(photos), size=n)
    factor = np.asarray(PATCH_FACTORS)[rng.integers(0, len(PATCH_FACTORS), size=n)]
    u_top, u_left, flip = rng.uniform(size=n), rng.uniform(size=n), rng.uniform(size=n) < 0.5
    out = np.empty((n, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)
    for p, photo in enumerate(photos):
        for f in PATCH_FACTORS:
            (idx,) = np.nonzero((which == p) & (factor == f))
            small = downsample(photo, f)
            windows = np.lib.stride_tricks.sliding_window_view(
                small, (PATCH_SIZE, PATCH_SIZE), axis=(0, 1))
            tops = (u_top[idx] * windows.shape[0]).astype(int)
            lefts = (u_left[idx] * windows.shape[1]).astype(int)
            out[idx] = windows[tops, lefts].transpose(0, 2, 3, 1)
    out[flip] = out[flip, :, ::-1]
    return out


@functools.cache
def patch_levels(split: str) -> np.ndarray:
    """The fixed `patches32` split, uint8 (N, 32, 32, 3), read-only (built once per process)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"Unknown {PATCHES_NAME} split {split!r}; valid splits: "
                         f"{list(SPLIT_IDS)}.")
    photos = [load_photo(name) for name in PATCH_PHOTOS[split]]
    levels = make_patches(photos, PATCHES_NUM[split], _PATCH_SEED + SPLIT_IDS[split])
    levels.flags.writeable = False
    return levels


def patches_source(split: str) -> ArraySource:
    """The `patches32` split as an indexable source of 256-level images."""
    return ArraySource(patch_levels(split), PATCH_LEVELS)
