"""Data: 2-D toys with exact densities, digits, photo patches and TFDS images.

Infrastructure package. Modules:
  * `toy`: the 2-D toys and `GaussianMixture` (exact densities and noised scores);
  * `digits`: scikit-learn's 8x8 digits (17 levels);
  * `patches`: `patches32`, 32x32x3 patches of the photographs bundled with scikit-image
    and scikit-learn (CIFAR-10's shape, offline; train and test from different photos);
  * `source`: indexable sources and the batch of step i as a pure function of (seed, i);
  * `tfds`: TFDS images, as a tf.data stream or as an indexable raw-pixel file.
TensorFlow is imported only when a TFDS dataset is read.

Conventions: every example lives in a roughly unit-variance space; images are scaled to
[-1, 1]: levels v in {0..L-1} -> v/(L-1)*2-1, or with dequantization (v + u)/L*2-1,
u ~ U[0, 1) (L = 17 for digits, 256 for patches32 and TFDS: bits/dim as Song et al. 2021).

`spec`: the `data.*` fields as `ebm_vs_score.settings.DataSettings`
(`settings.from_config(config).data`):
  dataset:        a toy name, `digits`, `patches32`, or a TFDS image dataset name.
  image_size:     side of the square images (TFDS: centre-cropped, celeb_a to 140x140 as
                  in score_sde, then resized; digits must say 8, patches32 32).
  num_channels:   channels of the images (checked against the data).
  data_dir:       TFDS data directory; None = TFDS default (~/tensorflow_datasets).
  random_flip:    random horizontal flips of training images (keep False for digits).
  dequantize:     uniform dequantization (see above) of training batches.
  toy_dim:        dimension of the `gmm` toy (default 2); the other toys are 2-D.
  num_components: number of components of the `gmm` toy (default 8).
  input_pipeline: TFDS only: `auto` (default: an indexable raw-pixel file, built once if
                  missing), `index` (the file must exist) or `tf_data` (the stream).
  cache_dir:      where the raw-pixel files live (default: DATA_DIR/ebm_vs_score_pixels).
  input_workers:  threads preparing indexable batches ahead (0: in the caller's thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ebm_vs_score.data.digits import (
    DIGITS_LEVELS,
    DIGITS_NUM_TRAIN,
    DIGITS_SHAPE,
    digits_source,
    load_digits_split,
)
from ebm_vs_score.data.patches import PATCHES_NAME, patch_levels, patches_source
from ebm_vs_score.data.source import (
    IndexStream,
    check_process,
    index_batches,
    local_rows,
    scale_levels,
)
from ebm_vs_score.data.tfds import (
    EMBEDDED_IMAGES,
    TFDS_SHUFFLE_BUFFER,
    tfds_image_dataset,
    tfds_index_source,
)
from ebm_vs_score.data.toy import (
    TOY_NAMES,
    GaussianMixture,
    eight_gaussians,
    gmm,
    sample_toy,
    toy_log_prob,
    toy_mixture,
)
from ebm_vs_score.settings import DataSettings, require_section

# The dataset names the config check accepts (any other TFDS name works in get_dataset).
TOY_DATASETS = TOY_NAMES
TFDS_IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "celeb_a",
                       "svhn_cropped", "lsun/church_outdoor", "lsun/bedroom")
IMAGE_DATASETS = EMBEDDED_IMAGES + TFDS_IMAGE_DATASETS
INPUT_PIPELINES = ("auto", "index", "tf_data")
_EMBEDDED_SHAPES = {"digits": DIGITS_SHAPE, PATCHES_NAME: (32, 32, 3)}
_EVAL_SEED = 20_240_917  # fixed seed of the toy evaluation samples
_TOY_SPLITS = {"train": 0, "test": 1}

__all__ = [
    "DIGITS_LEVELS", "DIGITS_NUM_TRAIN", "EMBEDDED_IMAGES", "IMAGE_DATASETS",
    "INPUT_PIPELINES", "TFDS_IMAGE_DATASETS", "TFDS_SHUFFLE_BUFFER", "TOY_DATASETS",
    "TOY_NAMES", "GaussianMixture", "data_shape", "eight_gaussians", "eval_data",
    "get_dataset", "gmm", "labelled_split", "load_digits_split", "num_levels",
    "ordered_batches",
    "sample_toy", "tfds_image_dataset", "toy_log_prob", "toy_mixture", "validate",
]


def _check(spec: Any) -> DataSettings:
    return require_section(spec, DataSettings, "data")


def validate(spec: DataSettings) -> None:
    """Raises ValueError (one sentence) if the data fields do not fit the dataset."""
    _check(spec)
    name = spec.dataset
    if name in _EMBEDDED_SHAPES:
        side, _, channels = _EMBEDDED_SHAPES[name]
        got = (spec.image_size, spec.num_channels)
        if got != (side, channels):
            raise ValueError(f"the {name} dataset is {side}x{side}x{channels}: set "
                             f"data.image_size={side} and data.num_channels={channels}")
    pipeline = spec.input_pipeline
    if pipeline not in INPUT_PIPELINES:
        raise ValueError(f"data.input_pipeline={pipeline!r} is not valid; choose one of "
                         f"{list(INPUT_PIPELINES)}")


def _toy_split_id(spec, split: str) -> int:
    if split not in _TOY_SPLITS:
        raise ValueError(f"Unknown split {split!r} for {spec.dataset!r}; valid splits: "
                         f"{list(_TOY_SPLITS)}.")
    return _TOY_SPLITS[split]


def _toy_batches(spec, *, batch_size, split, seed, start_step):
    """Global toy batch of step s from rng (seed, split, s): infinite, for every split."""
    split_id = _toy_split_id(spec, split)
    kwargs = {"dim": spec.toy_dim,
              "num_components": spec.num_components}
    step = start_step
    while True:
        rng = np.random.default_rng([seed, split_id, step])
        yield sample_toy(spec.dataset, rng, batch_size, **kwargs)
        step += 1


def _index_source(spec, split: str):
    """The indexable source of an image split, or None for the TFDS tf.data stream."""
    name = spec.dataset
    if name == "digits":
        return digits_source(split)
    if name == PATCHES_NAME:
        return patches_source(split)
    pipeline = spec.input_pipeline
    if pipeline == "tf_data":
        return None
    return tfds_index_source(name, split, shape=data_shape(spec),
                             image_size=spec.image_size,
                             data_dir=spec.data_dir,
                             cache_dir=spec.cache_dir,
                             build=pipeline == "auto")


def _tfds_batches(spec, *, batch_size, split, seed, start_step, process_index,
                  process_count):
    """Local TFDS tf.data batches as numpy, after checking the image shape."""
    train = split == "train"
    ds = tfds_image_dataset(
        spec.dataset, split, batch_size=batch_size // process_count,
        image_size=spec.image_size, data_dir=spec.data_dir,
        shuffle=train, repeat=train,
        random_flip=train and bool(spec.random_flip),
        dequantize=bool(spec.dequantize), seed=seed,
        process_index=process_index, process_count=process_count, start_step=start_step)
    got, want = tuple(ds.element_spec["image"].shape[1:]), data_shape(spec)
    if got != want:
        raise ValueError(f"{spec.dataset!r} images have shape {got} but the config says "
                         f"{want}; set data.image_size and data.num_channels to match.")
    return ({"x": batch["image"]} for batch in ds.as_numpy_iterator())


def get_dataset(spec: DataSettings, *, batch_size: int, split: str, seed: int,
                process_index: int = 0, process_count: int = 1,
                start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Iterator of this process's batches {'x': float32 (batch_size // process_count, ...)}.

    Args:
      spec: the `data.*` settings described in the package docstring.
      batch_size: the GLOBAL batch size; it must be divisible by `process_count`.
      split: 'train' (infinite, shuffled/resampled, flips per config) or 'test' (toys:
        infinite fresh samples; images: one ordered pass, last batch may be smaller and is
        then split as evenly as possible); TFDS accepts any TFDS split string.
      seed: data seed; the stream is a deterministic function of (config, seed, split).
      process_index, process_count: this process and the number of processes.
      start_step: index of the first batch; yields exactly the batches an uninterrupted
        run would yield from that step on.

    Toys and indexable images (digits, patches32, TFDS with `input_pipeline` auto/index)
    compute global batch s from (seed, s) and read only this process's contiguous rows of
    it, so the processes' batches concatenate to the single-process batch and resuming
    reads nothing twice. The TFDS tf.data stream instead gives each process a disjoint
    part of the split, shuffled on its own (see `tfds_image_dataset`).

    Raises:
      ValueError: unknown dataset or split, indivisible batch size, shape mismatch.
      FileNotFoundError: a TFDS dataset is not prepared in data.data_dir.
    """
    _check(spec)
    if batch_size % process_count:
        raise ValueError(f"Global batch_size={batch_size} is not divisible by process_count="
                         f"{process_count}; set training.batch_size to a multiple of it.")
    check_process(process_index, process_count)
    if spec.dataset in TOY_NAMES:
        data_shape(spec)  # validates toy_dim
        _toy_split_id(spec, split)
        batches = _toy_batches(spec, batch_size=batch_size, split=split, seed=seed,
                               start_step=start_step)
        return ({"x": x[local_rows(len(x), process_index, process_count)]} for x in batches)
    source = _index_source(spec, split)
    if source is None:
        return _tfds_batches(spec, batch_size=batch_size, split=split, seed=seed,
                             start_step=start_step, process_index=process_index,
                             process_count=process_count)
    stream = IndexStream(batch_size, seed, split,
                         random_flip=bool(spec.random_flip),
                         dequantize=bool(spec.dequantize))
    batches = index_batches(source, stream, start_step=start_step,
                            process_index=process_index, process_count=process_count,
                            num_workers=int(spec.input_workers))
    return ({"x": x} for x in batches)


def data_shape(spec: DataSettings) -> tuple[int, ...]:
    """Per-example shape, e.g. (2,), (8, 8, 1), (32, 32, 3), without loading any data."""
    _check(spec)
    name = spec.dataset
    if name in TOY_NAMES:
        dim = spec.toy_dim
        if name != "gmm" and dim != 2:
            raise ValueError(f"toy {name!r} is 2-D but data.toy_dim={dim}; only gmm takes "
                             "another dimension.")
        return (dim,)
    if name in _EMBEDDED_SHAPES:
        return _EMBEDDED_SHAPES[name]
    image_size, channels = spec.image_size, spec.num_channels
    if not image_size or not channels:
        raise ValueError(f"TFDS dataset {name!r} needs data.image_size and data.num_channels.")
    return (image_size, image_size, channels)


def num_levels(spec: DataSettings) -> int | None:
    """Number of intensity levels of the raw data (dequantization / bits per dim), or None."""
    _check(spec)
    name = spec.dataset
    return None if name in TOY_NAMES else DIGITS_LEVELS if name == "digits" else 256


def labelled_split(spec: DataSettings, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images in [-1, 1] and labels (-1 where the data has none) of a whole image split."""
    _check(spec)
    name = spec.dataset
    if name == "digits":
        return load_digits_split(split)
    if name == PATCHES_NAME:
        images = scale_levels(patch_levels(split), 256, None)
        return images, np.full(len(images), -1, np.int32)
    ds = tfds_image_dataset(name, split, batch_size=1024,
                            image_size=spec.image_size,
                            data_dir=spec.data_dir)
    batches = list(ds.as_numpy_iterator())
    return (np.concatenate([b["image"] for b in batches]),
            np.concatenate([b["label"] for b in batches]))


def ordered_batches(spec: DataSettings, split: str, batch_size: int) -> Iterator[np.ndarray]:
    """One ordered pass over a whole image split in [-1, 1]: stored levels, no
    dequantization, no flips, the last (smaller) batch kept (FID reference protocol)."""
    _check(spec)
    name = spec.dataset
    if name in ("digits", PATCHES_NAME):
        source = digits_source(split) if name == "digits" else patches_source(split)
        stream = IndexStream(batch_size, 0, f"{split}:ordered")  # not "train": one pass
        return index_batches(source, stream)
    ds = tfds_image_dataset(name, split, batch_size=batch_size,
                            image_size=spec.image_size,
                            data_dir=spec.data_dir, drop_remainder=False)
    return (b["image"] for b in ds.as_numpy_iterator())


def eval_data(spec: DataSettings, split: str, n: int | None = None) -> np.ndarray:
    """Whole evaluation arrays (not per process, never dequantized or flipped).

    Toys: n (default 10000) fresh samples from a fixed seed per split. Images: the first n
    (default all) examples of `split` in [-1, 1], in a fixed order.
    """
    _check(spec)
    name = spec.dataset
    if name in TOY_NAMES:
        rng = np.random.default_rng([_EVAL_SEED, _toy_split_id(spec, split)])
        return sample_toy(name, rng, 10_000 if n is None else n,
                          dim=spec.toy_dim,
                          num_components=spec.num_components)
    if name == "digits":
        return load_digits_split(split)[0][:n]
    if name == PATCHES_NAME:
        return scale_levels(patch_levels(split)[:n], 256, None)
    ds = tfds_image_dataset(name, split if n is None else f"{split}[:{n}]", batch_size=1024,
                            image_size=spec.image_size,
                            data_dir=spec.data_dir)
    return np.concatenate([b["image"] for b in ds.as_numpy_iterator()])[:n]
