"""Entry point: ``python -m ebm_vs_score.main --config=configs/X.py --workdir=DIR [--mode=...]``.

Thin by design (flax examples): it parses flags, starts JAX's multi-process runtime when
asked to, and calls ``train_and_evaluate`` / ``evaluate`` / ``sample`` / ``run_study``,
which notebooks and tests call directly too. A bad config value, missing data or a
non-finite loss stops the run with one sentence on stderr (the traceback goes to
``WORKDIR/error.log``); nothing already written is touched.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys
import traceback

# TensorFlow is only the input pipeline; keep its C++ start-up chatter out of the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "study", "fid_stats"],
                          "What to do with the config.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs that JAX "
    "cannot auto-detect (it can on TPU pods and SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with auto-detection "
    "(TPU pods, SLURM); implied by --coordinator_address.")

flags.mark_flags_as_required(["config", "workdir"])


def _run_mode(mode: str, config, workdir: str):
    """Dispatches --mode to its function (imported lazily: each pulls its own modules)."""
    if mode == "train":
        from ebm_vs_score.train import train_and_evaluate

        return train_and_evaluate(config, workdir)
    if mode == "eval":
        from ebm_vs_score.evaluate import evaluate

        return evaluate(config, workdir)
    if mode == "sample":
        from ebm_vs_score.evaluate import sample

        return sample(config, workdir)
    if mode == "fid_stats":  # FID reference statistics of the train split (metrics/fid.py)
        from ebm_vs_score.metrics.fid import write_reference_stats

        return write_reference_stats(config, workdir)
    from ebm_vs_score.study import run_study

    return run_study(config, workdir)


def _initialize_distributed() -> None:
    if _COORDINATOR.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def _hide_gpus_from_tensorflow() -> None:
    """TensorFlow is only the input pipeline: keep it off the accelerators JAX uses."""
    try:
        import tensorflow as tf
    except ImportError:  # a JAX-only install: toys and digits need no TensorFlow
        return
    tf.config.set_visible_devices([], "GPU")


def _fail(message: str, workdir: str) -> None:
    if epath.Path(workdir).is_dir():
        with (epath.Path(workdir) / "error.log").open("a") as f:
            f.write(traceback.format_exc())
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)


def _quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO lines out of the run log (warnings still show)."""
    handler = logging.get_absl_handler()
    handler.addFilter(lambda r: r.levelno >= pylogging.WARNING or "/orbax/" not in r.pathname)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _quiet_library_logs()
    _hide_gpus_from_tensorflow()
    _initialize_distributed()
    logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    try:
        _run_mode(_MODE.value, _CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
