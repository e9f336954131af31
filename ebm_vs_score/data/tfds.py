"""TFDS image datasets: the tf.data stream, and the raw-pixel file that resumes by index.

TensorFlow and TFDS are imported lazily inside these functions (and hidden from the GPU),
so importing the data package for toys, digits or patches does not import TensorFlow.

TFDS images (256 levels p in {0..255}): p -> p/255*2-1; with dequantization
(p + u)/256*2-1, the convention of Song et al. 2021 for bits/dim.

Two ways to read a TFDS split (`data.input_pipeline`):
  * `index` (the default through `auto`): the split is decoded, resized to
    `data.image_size` and written ONCE as raw uint8 pixels to an array_record file
    (`build_pixel_cache`, under `data.cache_dir`); training then reads the batch of step i
    directly by index (`ebm_vs_score.data.source`), so a resumed run reads only its own
    batches, and each process reads only its rows of each global batch.
  * `tf_data`: `tfds_image_dataset`, a tf.data stream whose epochs are shuffled with a
    buffer; it resumes exactly but replays up to one epoch of encoded examples to do so.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np
from absl import logging

from ebm_vs_score.data.source import ArrayRecordSource, check_process, write_array_record
from ebm_vs_score.data.toy import TOY_NAMES
from ebm_vs_score.errors import DataError

EMBEDDED_IMAGES = ("digits", "patches32")
TFDS_SHUFFLE_BUFFER = 50_000  # encoded examples: all of cifar10 / mnist, ~0.5 GB of celeb_a

_CENTER_CROP = {"celeb_a": 140}  # score_sde's CelebA crop before resizing


@contextlib.contextmanager
def _native_stderr_to_debug_log():
    """Sends what C++ code writes to file descriptor 2 meanwhile (TensorFlow's start-up
    lines, which its absl logging prints whatever TF_CPP_MIN_LOG_LEVEL says) to the
    DEBUG log (``--verbosity=1`` shows it) instead of the user's stderr."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace").strip()
            if text:
                logging.debug("TensorFlow start-up:\n%s", text)


def _import_tf():
    with _native_stderr_to_debug_log():
        import tensorflow as tf
        import tensorflow_datasets as tfds

    try:
        tf.config.set_visible_devices([], "GPU")  # TF is the input pipeline only
    except RuntimeError:  # TF devices already initialised by the caller
        pass
    return tf, tfds


def _unknown_dataset_error(name: str) -> ValueError:
    return ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(TOY_NAMES)}, "
                      f"{', '.join(EMBEDDED_IMAGES)}, or any TFDS image dataset name (mnist, "
                      "fashion_mnist, cifar10, celeb_a, svhn_cropped, ...).")


def _missing_dataset_error(name: str, data_dir: str) -> FileNotFoundError:
    return DataError(  # a FileNotFoundError that main reports in one sentence
        f"TFDS dataset {name!r} is not prepared in data_dir {data_dir!r}: on a machine with "
        f"internet run `python -c \"import tensorflow_datasets as tfds; tfds.builder("
        f"'{name}', data_dir='DIR').download_and_prepare()\"`, copy DIR here if needed, and "
        "pass --config.data.data_dir=DIR.")


def _tfds_builder(tfds, name: str, data_dir: str | None):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise _unknown_dataset_error(name) from None
    if "image" not in builder.info.features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' feature; only image datasets "
                         "are supported.")
    return builder


def _crop_resize(tf, image, image_size: int, crop: int | None):
    """Centre-crop to a square (side `crop`, else the short side), resize, keep 256 levels."""
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1]) if crop is None else crop
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    image = image[top:top + side, left:left + side]
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _make_preprocess(tf, image_feature, *, name, image_size, random_flip, dequantize, seed):
    """(global example index, encoded example) -> {'image': [-1, 1] float32, 'label'}."""
    static = tuple(image_feature.shape[:2])
    if image_size is None and None in static:
        raise ValueError(f"TFDS dataset {name!r} has images of varying size {static}; set "
                         "data.image_size to crop and resize them to a square.")
    resize = image_size is not None and static != (image_size, image_size)

    def preprocess(index, example):
        image = image_feature.decode_example(example["image"])
        image = tf.cast(image, tf.float32)
        if resize:
            image = _crop_resize(tf, image, image_size, _CENTER_CROP.get(name))
        flip_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), index]), 2))
        if random_flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if dequantize:
            noise = tf.random.stateless_uniform(tf.shape(image), noise_seed)
            image = (image + noise) / 256.0
        else:
            image = image / 255.0
        label = tf.cast(example.get("label", tf.constant(-1, tf.int64)), tf.int32)
        return {"image": 2.0 * image - 1.0, "label": label}

    return preprocess


def _read_split(tf, tfds, builder, name, split, process_index, process_count):
    """This process's disjoint part of `split`, encoded, in a fixed order; and its size."""
    subsplit = tfds.split_for_jax_process(split, process_index=process_index,
                                          process_count=process_count)
    options = tf.data.Options()
    options.deterministic = True
    try:
        ds = builder.as_dataset(split=subsplit, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()},
                                read_config=tfds.ReadConfig(options=options))
    except AssertionError:  # TFDS's "could not find data in ..." for unprepared datasets
        raise _missing_dataset_error(name, str(builder.data_dir_root)) from None
    keys = [k for k in ("image", "label") if k in builder.info.features]
    ds = ds.map(lambda ex: {k: ex[k] for k in keys})
    size = int(ds.cardinality())
    if size < 0:  # unknown cardinality: count once
        size = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
    if size == 0:
        raise ValueError(f"TFDS split {subsplit!r} of {name!r} is empty.")
    return ds, size


def _epoch_stream(tf, base, size: int, first: int, stream_seed: int, *, shuffle: bool,
                  repeat: bool, shuffle_buffer: int):
    """Enumerated examples from position ``first`` on: epoch e shuffled with a seed of
    (stream_seed, e), the leading ``first`` examples skipped (at most one epoch read)."""
    start_epoch, skip = divmod(first, size)

    def one_epoch(epoch):
        if not shuffle:
            return base
        epoch_seed = tf.constant(stream_seed, tf.int64) * 2**31 + epoch
        return base.shuffle(min(shuffle_buffer, size), seed=epoch_seed,
                            reshuffle_each_iteration=False)

    epochs = (tf.data.Dataset.counter(start_epoch) if repeat
              else tf.data.Dataset.range(start_epoch, 1))
    return epochs.flat_map(one_epoch).skip(skip).enumerate(start=first)


def tfds_image_dataset(name: str, split: str, *, batch_size: int,
                       image_size: int | None = None, data_dir: str | None = None,
                       shuffle: bool = False, repeat: bool = False, random_flip: bool = False,
                       dequantize: bool = False, seed: int = 0, process_index: int = 0,
                       process_count: int = 1, start_step: int = 0,
                       drop_remainder: bool | None = None,
                       shuffle_buffer: int = TFDS_SHUFFLE_BUFFER):
    """A tf.data pipeline of {'image': float32 (b, H, W, C) in [-1, 1], 'label': int32 (b,)}.

    Process `process_index` of `process_count` reads its own disjoint part of `split`
    (`tfds.split_for_jax_process`). Epoch e of it is shuffled with a seed of (seed,
    process_index, e); flips and dequantization noise are stateless functions of (seed,
    process_index, position). So the stream is a deterministic function of the arguments,
    and `start_step` resumes it exactly, reading at most one (encoded) epoch to get there.
    The shuffle buffer (encoded images) covers all of cifar10 / mnist by default.

    Args:
      name: TFDS name of a dataset with an 'image' feature (label -1 if it has no 'label').
      split: TFDS split string, e.g. 'train', 'test', 'train[:90%]'.
      batch_size: the batch size of THIS process.
      image_size: square output side; images of another size are centre-cropped to a
        square (celeb_a: 140x140 as in score_sde) and resized. None keeps the native size.
      data_dir: TFDS data directory (None: TFDS default). Nothing is ever downloaded.
      shuffle, repeat, random_flip, dequantize: as named; dequantization is
        (p + U[0, 1)) / 256, otherwise p / 255, then mapped to [-1, 1].
      seed: seed of shuffling, flips and dequantization noise.
      process_index, process_count: this process and the number of processes.
      start_step: number of batches of the stream to skip, exactly.
      drop_remainder: drop a final partial batch; default `repeat`.
      shuffle_buffer: shuffle buffer size (examples).

    Raises:
      FileNotFoundError: the dataset is not prepared in `data_dir` (says how to fix it).
      ValueError: unknown dataset name or no 'image' feature.
    """
    tf, tfds = _import_tf()
    check_process(process_index, process_count)
    builder = _tfds_builder(tfds, name, data_dir)
    base, size = _read_split(tf, tfds, builder, name, split, process_index, process_count)
    stream_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0] >> 1)
    first = start_step * batch_size
    ds = _epoch_stream(tf, base, size, first, stream_seed, shuffle=shuffle, repeat=repeat,
                       shuffle_buffer=shuffle_buffer)
    preprocess = _make_preprocess(tf, builder.info.features["image"], name=name,
                                  image_size=image_size, random_flip=random_flip,
                                  dequantize=dequantize, seed=stream_seed)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=repeat if drop_remainder is None else drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------------
# Raw-pixel array_record files: the indexable form of a TFDS split
# ----------------------------------------------------------------------------------------


def pixel_cache_path(name: str, split: str, shape: tuple[int, ...], cache_dir: str | None,
                     data_dir: str | None) -> str:
    """Where the raw-pixel file of (dataset, split, shape) lives.

    Default directory: `<data_dir or ~/tensorflow_datasets>/ebm_vs_score_pixels`.
    """
    root = cache_dir or os.path.join(data_dir or os.path.expanduser("~/tensorflow_datasets"),
                                     "ebm_vs_score_pixels")
    safe_split = "".join(c if c.isalnum() else "_" for c in split)
    size = "x".join(str(d) for d in shape)
    return os.path.join(root, f"{name.replace('/', '_')}-{safe_split}-{size}.array_record")


def build_pixel_cache(name: str, split: str, path: str, *, image_size: int | None,
                      data_dir: str | None) -> int:
    """Decodes `split` once (centre-crop/resize as the tf.data path) and writes its uint8
    pixels, in the split's stored order, to the array_record file `path`; returns N."""
    ds = tfds_image_dataset(name, split, batch_size=1024, image_size=image_size,
                            data_dir=data_dir)
    shape = tuple(int(d) for d in ds.element_spec["image"].shape[1:])
    levels = (np.round((b["image"] + 1.0) / 2.0 * 255.0).astype(np.uint8)
              for b in ds.as_numpy_iterator())
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return write_array_record(path, levels, shape=shape, num_levels=256)
    except OSError as e:
        raise DataError(f"cannot write the pixel file {path} ({e.strerror}); set "
                                "--config.data.cache_dir to a writable directory.") from None


def tfds_index_source(name: str, split: str, *, shape: tuple[int, ...], image_size: int | None,
                      data_dir: str | None, cache_dir: str | None,
                      build: bool = True) -> ArrayRecordSource:
    """The indexable source of a TFDS split, building its pixel file first if missing.

    Raises:
      FileNotFoundError: no pixel file and `build` is False, or the dataset is not prepared.
    """
    path = pixel_cache_path(name, split, shape, cache_dir, data_dir)
    if not os.path.exists(path):
        if not build:
            raise FileNotFoundError(f"no pixel file {path} for {name!r} {split!r}; set "
                                    "data.input_pipeline='auto' to build it once.")
        build_pixel_cache(name, split, path, image_size=image_size, data_dir=data_dir)
    source = ArrayRecordSource(path)
    if source.shape != tuple(shape):
        raise ValueError(f"{name!r} images have shape {source.shape} but the config says "
                         f"{tuple(shape)}; set data.image_size and data.num_channels to match.")
    return source
