"""Input that resumes by index: the batch of step i is read directly, nothing re-read.

Statement: for an indexable source the stream is a pure function of (seed, step), so a run
resumed at step s yields exactly the batches s, s+1, ... of the uninterrupted run, and
reads only their B records each (the tf.data stream instead replays up to one epoch).
Processes read disjoint rows that concatenate to the one-process batch.
"""

import numpy as np
import pytest

from ebm_vs_score import data, settings
from ebm_vs_score.data import source as source_lib
from ebm_vs_score.data import tfds as tfds_lib

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def pixel_file(tmp_path_factory):
    """A CIFAR-shaped array_record pixel file of 50 random images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50,) + SHAPE, dtype=np.uint8)
    path = str(tmp_path_factory.mktemp("pixels") / "mock.array_record")
    count = source_lib.write_array_record(path, iter([images[:30], images[30:]]), shape=SHAPE,
                                          num_levels=256)
    assert count == 50
    return path, images


def test_pixel_file_reads_images_by_index(pixel_file):
    path, images = pixel_file
    src = source_lib.ArrayRecordSource(path)
    assert len(src) == 50 and src.shape == SHAPE
    idx = np.array([7, 0, 49, 7])
    np.testing.assert_array_equal(src.read(idx), images[idx])
    assert src.reads == 4


def test_resumed_run_reads_the_same_batches_without_rereading(pixel_file):
    path, _ = pixel_file
    stream = source_lib.IndexStream(batch_size=8, seed=3, split="train", random_flip=True,
                                    dequantize=True)
    full_src = source_lib.ArrayRecordSource(path)
    full = [next(b) for b in [source_lib.index_batches(full_src, stream)] for _ in range(15)]
    assert full_src.reads == 15 * 8  # 2.4 epochs: crosses epoch boundaries
    resumed_src = source_lib.ArrayRecordSource(path)
    it = source_lib.index_batches(resumed_src, stream, start_step=12)
    resumed = [next(it) for _ in range(3)]
    assert resumed_src.reads == 3 * 8  # only the batches it yields
    for a, b in zip(full[12:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    parts = []
    for p in range(2):
        src = source_lib.ArrayRecordSource(path)
        parts.append(source_lib.batch_at(src, stream, 13, process_index=p, process_count=2))
        assert src.reads == 4  # each process reads only its own rows
    np.testing.assert_array_equal(np.concatenate(parts), full[13])
    first_epoch = np.concatenate([source_lib.epoch_indices(s, 8, 50, 3) for s in range(7)])
    assert sorted(first_epoch[:50]) == list(range(50))


def test_get_dataset_builds_the_pixel_file_once_then_reads_by_index(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    reads = []
    original = source_lib.ArrayRecordSource.read
    monkeypatch.setattr(source_lib.ArrayRecordSource, "read",
                        lambda self, idx: reads.append(len(idx)) or original(self, idx))
    config = _cifar_config(tmp_path)
    kwargs = dict(batch_size=4, split="train", seed=0)
    with tfds.testing.mock_data(num_examples=12):
        full = _take(data.get_dataset(config, **kwargs), 6)
        path = tfds_lib.pixel_cache_path("cifar10", "train", SHAPE, config.cache_dir, None)
        mtime = _mtime(path)
        reads.clear()
        resumed = _take(data.get_dataset(config, start_step=4, **kwargs), 2)
    assert reads == [4, 4] and _mtime(path) == mtime  # not rebuilt, nothing re-read
    for a, b in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert full[0]["x"].shape == (4,) + SHAPE and full[0]["x"].dtype == np.float32
    assert -1 <= full[0]["x"].min() and full[0]["x"].max() <= 1


def test_index_pipeline_without_a_file_says_how_to_build_it(tmp_path):
    config = _cifar_config(tmp_path, input_pipeline="index")
    with pytest.raises(FileNotFoundError, match="input_pipeline='auto'"):
        data.get_dataset(config, batch_size=4, split="train", seed=0)


def test_patches32_is_fixed_scaled_and_split_by_photograph():
    from ebm_vs_score.data import patches

    assert set(patches.PATCH_PHOTOS["train"]).isdisjoint(patches.PATCH_PHOTOS["test"])
    train, test = patches.patch_levels("train"), patches.patch_levels("test")
    assert train.shape == (50_000, 32, 32, 3) and test.shape == (10_000, 32, 32, 3)
    assert train.dtype == np.uint8 and train.max() > 250 and train.min() < 5
    photos = [patches.load_photo(n) for n in patches.PATCH_PHOTOS["test"]]
    np.testing.assert_array_equal(patches.make_patches(photos, 100, 7),
                                  patches.make_patches(photos, 100, 7))
    config = _patches_config()
    x = next(data.get_dataset(config, batch_size=16, split="train", seed=0))["x"]
    assert x.shape == (16, 32, 32, 3) and x.min() >= -1 and x.max() < 1
    np.testing.assert_allclose(data.eval_data(config, "test", n=5), test[:5] / 255 * 2 - 1,
                               atol=1e-6)


def _pixel_values(images):
    """One number per pixel, r 2^16 + g 2^8 + b (float64: every sum below stays exact)."""
    images = images.astype(np.float64)
    return images[..., 0] * 65536 + images[..., 1] * 256 + images[..., 2]


_U, _V = np.random.default_rng(0).integers(1, 256, (2, 32)).astype(np.float64)


def _window_hashes(image):
    """sum_ij u_i v_j pixel(y + i, x + j) of every 32 x 32 window (y, x) of an image: an
    integer below 2^50, exact in float64 in any order of summation (two sliding passes)."""
    from numpy.lib.stride_tricks import sliding_window_view as windows

    rows = windows(_pixel_values(image), 32, axis=1) @ _V
    return (windows(rows, 32, axis=0) @ _U).ravel()


def _patch_hashes(levels):
    """The same hash of each patch (N, 32, 32, 3) and of its mirror image: (2, N)."""
    out = [_pixel_values(levels[i:i + 2000][..., ::d, :]) @ _V @ _U
           for d in (1, -1) for i in range(0, len(levels), 2000)]
    return np.concatenate(out).reshape(2, len(levels))


def test_patch_splits_come_from_disjoint_photographs():
    """Every patch of a split is a 32 x 32 window (mirrored or not) of one of its own
    photographs at one of the four scales, and no patch of either split is a window of a
    photograph of the other split: the test patches share no region with the training data.
    Windows are matched by a 50-bit hash over every window of every downsampled photograph
    (6.5 million); a test patch cut from a training photograph would match it exactly."""
    from ebm_vs_score.data import patches

    windows = {}
    for split, names in patches.PATCH_PHOTOS.items():
        hashes = [_window_hashes(patches.downsample(patches.load_photo(name), f))
                  for name in names for f in patches.PATCH_FACTORS]
        windows[split] = np.unique(np.concatenate(hashes))
    for split in patches.PATCH_PHOTOS:
        hashes = _patch_hashes(patches.patch_levels(split))
        for other, table in windows.items():
            slot = np.clip(np.searchsorted(table, hashes), 0, table.size - 1)
            found = np.any(table[slot] == hashes, axis=0)
            if other == split:
                assert np.all(found), f"{np.sum(~found)} {split} patches match no {split} photo"
            else:
                assert not np.any(found), f"{np.sum(found)} {split} patches are in {other} photos"


def _patches_config():
    return settings.DataSettings(dataset="patches32", image_size=32, num_channels=3,
                                 random_flip=True, dequantize=True)


def _cifar_config(tmp_path, **changes):
    fields = dict(dataset="cifar10", image_size=32, num_channels=3, data_dir=None,
                  random_flip=True, dequantize=True, input_pipeline="auto",
                  cache_dir=str(tmp_path / "pixels"))
    return settings.DataSettings(**dict(fields, **changes))


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def _mtime(path):
    import os

    return os.stat(path).st_mtime_ns
