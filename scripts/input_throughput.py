"""Images/s of the training input on mock CIFAR-shaped TFDS data (BENCHMARKS.md).

    python scripts/input_throughput.py --config=configs/cifar_score.py \
        [--config.data.input_pipeline=auto|tf_data] [--num_examples=10000] [--steps=200]

Under `tfds.testing.mock_data` (random uint8 CIFAR-shaped images, nothing downloaded) it
reads `--steps` training batches of `training.batch_size` through `data.get_dataset`, the
function the train loop calls, with the config's flips and dequantization, after one
warm-up batch (which builds the pixel file of the index path, timed separately). Prints
one line: pipeline, images/s, and the ratio to the 3,557 img/s the H200 U step consumes.
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cifar_score.py", "Config file.")
_NUM = flags.DEFINE_integer("num_examples", 10_000, "Mock training images.")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed batches.")
H200_U_STEP_IMAGES_PER_S = 3557.0  # BENCHMARKS.md: cifar U step at batch 128 on one H200


def measure(config, num_examples: int, steps: int) -> dict:
    """{'build_s', 'images_per_s'} of `steps` batches of the config's input pipeline."""
    import tensorflow_datasets as tfds

    from ebm_vs_score import data, settings

    with tfds.testing.mock_data(num_examples=num_examples), \
            tempfile.TemporaryDirectory() as tmp:
        if config.data.cache_dir is None:
            config.data.cache_dir = os.path.join(tmp, "pixels")
        s = settings.from_config(config)
        start = time.perf_counter()
        batches = data.get_dataset(s.data, batch_size=s.training.batch_size,
                                   split="train", seed=0)
        next(batches)
        build = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            next(batches)
        seconds = time.perf_counter() - start
    return {"build_s": build, "images_per_s": steps * config.training.batch_size / seconds}


def main(argv):
    del argv
    config = _CONFIG.value
    result = measure(config, _NUM.value, _STEPS.value)
    print(f"input_pipeline={config.data.input_pipeline} batch={config.training.batch_size} "
          f"first batch (builds the pixel file) {result['build_s']:.1f} s, "
          f"{result['images_per_s']:,.0f} img/s = "
          f"{result['images_per_s'] / H200_U_STEP_IMAGES_PER_S:.1f}x the H200 U step")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
