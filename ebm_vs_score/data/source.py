"""Indexable sources of integer-level images and the batch of step i read directly.

An indexable source holds N images as integer levels (uint8, (N, H, W, C), values in
{0..num_levels-1}) and reads any list of indices on demand: an in-memory array (digits,
patches32) or a file of raw pixels in the array_record format (TFDS datasets, written
once by `ebm_vs_score.data.tfds.build_pixel_cache`). The batch of training step s is then
a pure function of (seed, s): no stream is replayed to resume, and each process reads only
its own part of each global batch (`process_index` of `process_count`).

Stream (`IndexStream`), the same for every indexable dataset:
  * train: epoch e is `permutation(rng(seed, e))` of the N indices; global batch s is
    positions [s B, (s+1) B) of the concatenated epochs (infinite).
  * other splits: one ordered pass; the last batch may be smaller.
  * flips (train, `random_flip`) and dequantization noise come from rng(seed, split, s, 1):
    flips first (B,), then float32 U[0, 1) noise of the global batch's shape, added before
    the flip (so a flipped image carries mirrored noise: the same distribution); each
    process keeps its rows, so the processes' batches concatenate to the single-process
    batch.
  * levels v -> [-1, 1]: v / (L-1) * 2 - 1, or (v + u) / L * 2 - 1 with noise u (the
    bits/dim protocol of Song et al. 2021 for L = 256).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import json
import os
import threading
import zlib
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np

SPLIT_IDS = {"train": 0, "test": 1}


class LevelSource(Protocol):
    """N images of integer levels, readable by index."""

    num_levels: int

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 levels (len(indices), H, W, C) of the given examples, in that order."""


class ArraySource:
    """An in-memory `LevelSource` (digits, patches32)."""

    def __init__(self, levels: np.ndarray, num_levels: int):
        self.levels, self.num_levels = levels, int(num_levels)

    def __len__(self) -> int:
        return len(self.levels)

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.levels[indices]


_RECORD_META = ".json"  # sidecar of an array_record pixel file: shape, count, levels


class ArrayRecordSource:
    """A `LevelSource` on a file of raw uint8 pixels, one array_record record per image.

    Reads are random access (`ArrayRecordReader.read(indices)`): reading the batch of step
    i costs B records whatever i is. `reads` counts the records read so far.
    """

    def __init__(self, path: str):
        with open(path + _RECORD_META) as f:
            meta = json.load(f)
        self.path, self.shape = path, tuple(meta["shape"])
        self.num_levels = int(meta["num_levels"])
        self._local = threading.local()  # one reader per thread (index_batches workers)
        self._lock = threading.Lock()
        self._size = int(self._reader().num_records())
        if self._size != int(meta["count"]):
            raise ValueError(f"pixel file {path} holds {self._size} records but its "
                             f"{_RECORD_META} says {meta['count']}; delete both to rebuild it.")
        self.reads = 0

    def _reader(self):
        if not hasattr(self._local, "reader"):
            from array_record.python import array_record_module

            self._local.reader = array_record_module.ArrayRecordReader(
                self.path, "readahead_buffer_size:0")
        return self._local.reader

    def __len__(self) -> int:
        return self._size

    def read(self, indices: np.ndarray) -> np.ndarray:
        records = self._reader().read([int(i) for i in indices])
        with self._lock:
            self.reads += len(records)
        flat = np.frombuffer(b"".join(records), np.uint8)
        return flat.reshape((len(records),) + self.shape)


def write_array_record(path: str, levels_batches: Iterator[np.ndarray], *,
                       shape: tuple[int, ...], num_levels: int) -> int:
    """Writes uint8 image batches to `path` (+ sidecar) atomically; returns the count.

    The records go to a temporary file that is renamed into place last, so a killed
    writer leaves no half-written file that a later run could read.
    """
    from array_record.python import array_record_module

    tmp = f"{path}.tmp{os.getpid()}"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    count = 0
    for batch in levels_batches:
        for image in np.asarray(batch, np.uint8):
            writer.write(image.tobytes())
            count += 1
    writer.close()
    with open(tmp + _RECORD_META, "w") as f:
        json.dump({"shape": list(shape), "count": count, "num_levels": num_levels}, f)
    os.replace(tmp + _RECORD_META, path + _RECORD_META)
    os.replace(tmp, path)
    return count


class IndexStream(NamedTuple):
    """What the batch of step s depends on besides the source (see module doc)."""

    batch_size: int  # global
    seed: int
    split: str
    random_flip: bool = False
    dequantize: bool = False

    @property
    def train(self) -> bool:
        return self.split == "train"


def split_id(split: str) -> int:
    """0 for train, 1 for test, a fixed hash for any other TFDS split string."""
    return SPLIT_IDS.get(split, zlib.crc32(split.encode()) + 2)


def epoch_indices(step: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """Indices of training batch `step`: epoch e is permutation(rng(seed, e)) of range(size)."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    epoch = pos // size
    idx = np.empty_like(pos)
    for e in np.unique(epoch):
        perm = np.random.default_rng([seed, int(e)]).permutation(size)
        idx[epoch == e] = perm[pos[epoch == e] % size]
    return idx


def step_indices(stream: IndexStream, step: int, size: int) -> np.ndarray:
    """Global indices of batch `step` (train: shuffled epochs; else one ordered pass)."""
    if stream.train:
        return epoch_indices(step, stream.batch_size, size, stream.seed)
    return np.arange(step * stream.batch_size, min((step + 1) * stream.batch_size, size))


def scale_levels(levels: np.ndarray, num_levels: int, noise: np.ndarray | None) -> np.ndarray:
    """Integer levels -> [-1, 1]: v/(L-1) without noise, (v + u)/L with u ~ U[0, 1).

    With noise the arithmetic is float32 and in place on ``noise`` (which it consumes):
    (v + u) * (2 / L) - 1, exact to float32 rounding; without noise it is float64, so
    evaluation images are the exactly rounded v / (L-1) * 2 - 1.
    """
    if noise is None:
        unit = levels / (num_levels - 1)
        unit *= 2
        unit -= 1
        return unit.astype(np.float32)
    unit = np.asarray(noise, np.float32)
    unit += levels
    unit *= np.float32(2.0 / num_levels)
    unit -= np.float32(1.0)
    return unit


def check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count="
                         f"{process_count}).")


def local_rows(n: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous rows of n (`np.array_split`'s parts)."""
    bounds = np.cumsum([0] + [len(p) for p in np.array_split(np.arange(n), process_count)])
    return slice(int(bounds[process_index]), int(bounds[process_index + 1]))


def batch_at(source: LevelSource, stream: IndexStream, step: int, *, process_index: int = 0,
             process_count: int = 1) -> np.ndarray:
    """This process's part of global batch `step`, float32 in [-1, 1].

    Only this process's examples are read from `source`; flips and noise are drawn for
    the global batch (so the parts concatenate to the one-process batch) and sliced.
    """
    idx = step_indices(stream, step, len(source))
    rows = local_rows(len(idx), process_index, process_count)
    levels = source.read(idx[rows])
    rng = np.random.default_rng([stream.seed, split_id(stream.split), step, 1])
    flip = None
    if stream.train and stream.random_flip:
        flip = (rng.random(len(idx)) < 0.5)[rows]
    noise = None
    if stream.dequantize:
        noise = rng.random((len(idx),) + levels.shape[1:], np.float32)[rows]
    batch = scale_levels(levels, source.num_levels, noise)
    if flip is not None and flip.any():  # in place on the float batch: rows mirrored in W
        batch[flip] = batch[flip][:, :, ::-1]
    return batch


def index_batches(source: LevelSource, stream: IndexStream, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  num_workers: int = 0) -> Iterator[np.ndarray]:
    """Batches from `start_step` on (train: infinite; else until the split is read).

    Batch s is a pure function of s, so with `num_workers` > 0 threads prepare the next
    2 x num_workers batches ahead (reads, flips, noise release the GIL); order unchanged.
    """
    num_batches = None if stream.train else -(-len(source) // stream.batch_size)
    steps = itertools.count(start_step) if num_batches is None else range(start_step,
                                                                          num_batches)
    make = functools.partial(batch_at, source, stream, process_index=process_index,
                             process_count=process_count)
    if num_workers <= 0:
        yield from map(make, steps)
        return
    pool = concurrent.futures.ThreadPoolExecutor(num_workers)
    pending: collections.deque = collections.deque()
    try:
        for step in steps:
            pending.append(pool.submit(make, step))
            if len(pending) > 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a closed or abandoned iterator drops the batches prepared ahead
        pool.shutdown(wait=False, cancel_futures=True)
