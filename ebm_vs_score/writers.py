"""Metric writers and progress reports that import no TensorFlow (DESIGN.md rule 7).

Scalars and images go to a TensorBoard event file (TensorBoard's protobufs and record
framing, written to a plain local file) and to the log; the
progress report logs steps/s and the ETA. A toy, digits or patches run therefore never
loads TensorFlow. A workdir on a remote filesystem (``gs://``, ...) is written with CLU's
writer, which needs TensorFlow's file system to reach it.

The interface is CLU's (``write_scalars``, ``write_images``, ``flush``, ``close``), so a
CLU writer can stand in for :class:`MetricWriter` anywhere.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

# Seconds between two progress reports (CLU's ReportProgress default).
PROGRESS_EVERY_SECS = 60.0


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``gs://bucket/run``) rather than a local path."""
    return "://" in str(path)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8).squeeze(-1) if image.shape[-1] == 1
                    else np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class MetricWriter:
    """Scalars and uint8 images of a run, to ``logdir``'s event file and to the log.

    Args:
      logdir: local directory of the TensorBoard event file.
      just_logging: only log (processes other than 0 of a multi-process run).
    """

    def __init__(self, logdir: str, *, just_logging: bool = False):
        self._events = None
        if not just_logging:
            self._events = _open_event_file(str(logdir))

    def _add(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if self._events is None:
            return
        summary = summary_pb2.Summary(value=values)
        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        self._events.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One value per name at ``step``; also one log line."""
        from tensorboard.compat.proto import summary_pb2

        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=v)
                         for k, v in values.items()])

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """uint8 images (H, W, C) or batches (N, H, W, C), C in {1, 3}, PNG-encoded."""
        from tensorboard.compat.proto import summary_pb2

        values = []
        for name, batch in images.items():
            batch = np.asarray(batch)
            batch = batch[None] if batch.ndim == 3 else batch
            for i, image in enumerate(batch):
                encoded = summary_pb2.Summary.Image(
                    height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
                    encoded_image_string=_png(image))
                tag = name if len(batch) == 1 else f"{name}/{i}"
                values.append(summary_pb2.Summary.Value(tag=tag, image=encoded))
        self._add(step, values)

    def flush(self) -> None:
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def _open_event_file(logdir: str):
    """A new ``events.out.tfevents.*`` file in ``logdir`` that starts with its version.

    TensorBoard's record writer frames the events (length, CRC32C); the file is a plain
    local file, so TensorBoard's ``tf.io.gfile`` (which would load TensorFlow) is not used.
    """
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
    writer = RecordWriter(open(os.path.join(logdir, name), "wb"))  # noqa: SIM115
    version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
    writer.write(version.SerializeToString())
    return writer


def create_writer(workdir: str, *, just_logging: bool = False):
    """The run's metric writer: :class:`MetricWriter`, or CLU's for a remote workdir."""
    if is_remote(workdir) and not just_logging:
        from clu import metric_writers  # TensorFlow's file system reaches gs:// and friends

        return metric_writers.create_default_writer(workdir, asynchronous=False)
    return MetricWriter(workdir, just_logging=just_logging)


class ReportProgress:
    """Called after every step; every ``every_secs`` it logs steps/s and the ETA and
    writes ``steps_per_sec`` (as CLU's ``periodic_actions.ReportProgress`` does)."""

    def __init__(self, num_train_steps: int, writer, every_secs: float = PROGRESS_EVERY_SECS):
        self._total, self._writer, self._every = int(num_train_steps), writer, every_secs
        self._last_time: float | None = None
        self._last_step = 0

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self._last_time is None:  # the first step carries the compile: start after it
            self._last_time, self._last_step = now, step
            return
        if now - self._last_time < self._every:
            return
        rate = (step - self._last_step) / (now - self._last_time)
        eta = (self._total - step) / rate if rate > 0 else float("inf")
        logging.info("step %d/%d: %.3g steps/s, ETA %s", step, self._total, rate,
                     _format_secs(eta))
        self._writer.write_scalars(step, {"steps_per_sec": rate})
        self._last_time, self._last_step = now, step


def _format_secs(secs: float) -> str:
    if not np.isfinite(secs):
        return "unknown"
    minutes, seconds = divmod(int(secs), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
