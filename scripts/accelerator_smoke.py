"""Smoke test of a config on an accelerator: every piece of a run but the input.

    for c in configs/cifar_{score,energy,resnet_energy,qc,drl}.py; do
      python scripts/accelerator_smoke.py --config=$c [--steps=5] [--sampler_steps=10] \
          [--out=smoke.json] [--config.training.batch_size=64]
    done

The config is loaded as ``main`` loads it (config_flags, every ``--config.*`` override,
locked): validate it, build its model and objective exactly as ``main`` does,
compile the real train step (``train.compile_train_step``) at the config's batch size, run
``--steps`` steps on synthetic CIFAR-shaped images (uniform in [-1, 1]), save and restore
an Orbax checkpoint and check the restored parameters are bit-identical, then draw
``sampling.num_samples`` samples with the config's own sampler at ``--sampler_steps`` steps.
The checkpoint goes to a temporary directory (no workdir: nothing is kept). Fails (exit 1)
on a non-finite loss or sample, a checkpoint mismatch, or any exception; ``--out`` gets the
config's record (compile and step times, peak device memory) appended to its ``records``,
so one file collects a loop over configs.

Why synthetic images: the GPU machines this was written for have no TensorFlow and no
network, so the TFDS pipeline (tested offline with ``tfds.testing.mock_data`` in
tests/test_data.py) is the one part of a CIFAR run this does not exercise.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import traceback

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ebm_vs_score import builders, checkpoints, settings, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Training steps (the first compiles).", lower_bound=2)
_SAMPLER_STEPS = flags.DEFINE_integer("sampler_steps", 10, "Sampler steps (DRL: per level).",
                                      lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "JSON file whose 'records' get this config's record.")
flags.mark_flags_as_required(["config"])


def _peak_memory_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def train_steps(s: settings.Settings, model, mesh, steps: int) -> tuple[object, dict]:
    """Runs the compiled train step ``steps`` times on synthetic images; times it."""
    state, step_fn = train.fresh_state_and_step(s, model, mesh)
    rng = np.random.default_rng(s.seed)
    shape = (int(s.training.batch_size),) + model.example_shape
    batch = train.global_batch({"x": rng.uniform(-1, 1, shape).astype(np.float32)}, mesh)
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)  # compiles
    losses = [float(metrics["loss"])]
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps - 1):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(state)
    losses.append(float(metrics["loss"]))
    per_step = (time.perf_counter() - start) / max(steps - 1, 1)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"non-finite training loss {losses}")
    return state, {"first_step_s": first_s, "step_s": per_step,
                   "examples_per_s": shape[0] / per_step, "loss_first_last": losses}


def checkpoint_roundtrip(state) -> None:
    """Saves ``state`` with Orbax and restores it; the parameters must be bit-identical."""
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = checkpoints.Checkpointer(workdir)
        ckpt.save(int(state.step), state)
        restored = ckpt.restore(state)
        ckpt.close()
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        state.params, restored.params)
    if not all(jax.tree.leaves(same)):
        raise AssertionError("restored parameters differ from the saved ones")


def sample(s: settings.Settings, model, state, sampler_steps: int) -> dict:
    """The config's sampler at ``sampler_steps`` steps (DRL: per level), timed."""
    changes = {"sampling.num_steps": sampler_steps}
    if s.is_drl:
        changes["drl.num_steps"] = sampler_steps
    s = settings.override(s, changes)
    sample_fn = train.make_sample_fn(s, model)
    start = time.perf_counter()
    samples, info = sample_fn(state.ema_params, jax.random.PRNGKey(1))
    samples = np.asarray(jax.block_until_ready(samples).addressable_data(0))
    seconds = time.perf_counter() - start
    if samples.shape[1:] != model.example_shape or not np.isfinite(samples).all():
        raise FloatingPointError(f"bad samples: shape {samples.shape}, "
                                 f"finite {bool(np.isfinite(samples).all())}")
    return {"sample_s_with_compile": seconds, "num_samples": samples.shape[0],
            "sampler": "drl" if s.is_drl else s.sampling.method}


def smoke(config, path: str, steps: int, sampler_steps: int) -> dict:
    """One config's record (``ok`` False with the error if anything failed)."""
    record = {"config": path}
    try:
        mesh = train.make_mesh()
        s = settings.from_config(config, num_devices=mesh.size)
        model = builders.build_model(s)
        state, record["train"] = train_steps(s, model, mesh, steps)
        checkpoint_roundtrip(state)
        record["sample"] = sample(s, model, state, sampler_steps)
        record.update(ok=True, num_params=train.num_params(state.params),
                      batch=int(s.training.batch_size), dtype=s.model.dtype)
    except Exception as e:  # recorded in the JSON, and the exit status says it failed
        traceback.print_exc()
        record.update(ok=False, error=f"{type(e).__name__}: {e}")
    record["peak_device_bytes"] = _peak_memory_bytes()
    return record


def append_record(path: str, record: dict) -> None:
    """Adds ``record`` to the ``records`` of the JSON at ``path`` (created if missing)."""
    device = jax.devices()[0]
    result = {"device": f"{device.platform}:{device.device_kind}", "jax": jax.__version__,
              "records": []}
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    result["records"].append(record)
    with open(f"{path}.tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(f"{path}.tmp", path)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    print(f"[smoke] {path} ...", file=sys.stderr, flush=True)
    record = smoke(_CONFIG.value, path, _STEPS.value, _SAMPLER_STEPS.value)
    print(json.dumps(record), flush=True)
    if _OUT.value:
        append_record(_OUT.value, record)
    sys.exit(0 if record["ok"] else 1)


if __name__ == "__main__":
    app.run(main)
