"""The TensorFlow-free metric writer: what it writes, TensorBoard's own reader reads back."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from ebm_vs_score import writers


def _read(logdir) -> event_accumulator.EventAccumulator:
    (path,) = logdir.glob("events.out.tfevents.*")
    events = event_accumulator.EventAccumulator(str(path), size_guidance={"images": 0})
    events.Reload()
    return events


def test_scalars_and_images_read_back_in_tensorboard(tmp_path):
    writer = writers.MetricWriter(str(tmp_path))
    writer.write_scalars(3, {"train/loss": 0.25, "train/grad_norm": np.float32(2.0)})
    writer.write_scalars(7, {"train/loss": 0.125})
    image = np.zeros((4, 6, 3), np.uint8)
    image[1, 2] = (255, 0, 10)
    writer.write_images(7, {"samples": image[None], "grey": np.full((2, 5, 5, 1), 9, np.uint8)})
    writer.close()
    events = _read(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 0.25), (7, 0.125)]
    assert events.Scalars("train/grad_norm")[0].value == 2.0
    assert sorted(events.Tags()["images"]) == ["grey/0", "grey/1", "samples"]
    (sample,) = events.Images("samples")
    assert (sample.step, sample.height, sample.width) == (7, 4, 6)
    decoded = np.asarray(Image.open(io.BytesIO(sample.encoded_image_string)))
    np.testing.assert_array_equal(decoded, image)


def test_just_logging_writes_no_file(tmp_path):
    writer = writers.MetricWriter(str(tmp_path), just_logging=True)
    writer.write_scalars(1, {"x": 1.0})
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_progress_reports_the_rate_after_the_first_step(monkeypatch):
    clock = iter([100.0, 100.5, 130.0, 161.0])
    monkeypatch.setattr(writers.time, "monotonic", lambda: next(clock))
    written = []

    class Recorder:
        def write_scalars(self, step, scalars):
            written.append((step, scalars))

    report = writers.ReportProgress(1000, Recorder(), every_secs=60.0)
    for step in (1, 2, 31, 62):
        report(step)
    assert written == [(62, {"steps_per_sec": 1.0})]  # 61 steps in 61 s after the first


def test_remote_paths_are_told_apart():
    assert writers.is_remote("gs://bucket/run") and not writers.is_remote("/tmp/run")
