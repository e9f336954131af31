"""The run a GPU/TPU user does first: every stage of a CIFAR job on mock CIFAR data.

    python scripts/accelerator_rehearsal.py --config=configs/cifar_energy.py \
        --workdir=/tmp/rehearsal [--steps=300] [--tiny] [--config.training.batch_size=64]
    for c in configs/cifar_{score,energy,qc,resnet_energy,drl,eqm,eqm_energy,energy_matching}.py; do
      python scripts/accelerator_rehearsal.py --config=$c --workdir=/tmp/rehearsal; done

Under `tfds.testing.mock_data` (random CIFAR-shaped TFDS images, nothing downloaded) it
runs, printing one line per stage with its time: the indexable input (pixel file built
once), `--steps` / 2 training steps and a checkpoint, a resume to `--steps`, FID reference
statistics with a RANDOMLY initialized Inception (`metrics.fid.random_state_dict`: the
machinery, not real FIDs), eval (Asym, bits/dim of a few images, FID against those
statistics) and sampling. `--tiny` shrinks the U-Net, batch, steps and samplers so the
whole rehearsal runs on a CPU (tests/test_rehearsal.py). Every `--config.*` override of
main works here too.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the rehearsal run.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps (half before the resume).")
_TINY = flags.DEFINE_bool("tiny", False, "CPU-sized network, batch, steps and samplers.")
_MOCK_EXAMPLES = flags.DEFINE_integer("mock_examples", None,
                                      "Mock images per split (default 1024, 32 with --tiny).")
flags.mark_flags_as_required(["config", "workdir"])


def shrink(config) -> None:
    """CPU-sized settings (the network family, objective and sampler are kept)."""
    config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 16, (1, 2), 1
    config.model.attn_resolutions, config.model.num_groups = (16,), 8
    config.training.batch_size = 8
    config.sampling.num_samples, config.sampling.num_steps = 4, 4
    config.drl.num_steps = 2
    config.energy_matching.num_gibbs = 2


def rehearsal_config(config, workdir: str, steps: int):
    """The config with mock-friendly schedules, eval sizes and FID files in `workdir`."""
    config.data.dataset, config.data.input_pipeline = "cifar10", "auto"
    config.data.cache_dir = os.path.join(workdir, "pixels")
    config.training.checkpoint_every = max(steps // 2, 1)
    config.training.log_every = max(steps // 4, 1)
    config.training.sample_every = steps
    config.optim.warmup = min(config.optim.warmup, steps)
    # Energy Matching: the warm-up ends within the rehearsal, so both phases compile and run.
    config.energy_matching.phase1_steps = max(steps // 4, 1)
    config.sampling.num_samples = min(config.sampling.num_samples, 16)
    config.sampling.num_steps = min(config.sampling.num_steps, 50)
    config.eval.num_examples, config.eval.batch_size = 8, 8
    config.eval.asym_levels, config.eval.ais = 2, False
    with config.unlocked():  # optional eval fields (evaluate.py reads them with defaults)
        config.eval.nll_examples, config.eval.nll_rtol, config.eval.nll_atol = 2, 1e-3, 1e-3
        config.eval.num_samples, config.eval.classifier_steps = 8, 20
    config.eval.inception_weights = os.path.join(workdir, "random_inception.npz")
    config.eval.fid_stats = os.path.join(workdir, "fid_stats_mock.npz")
    config.eval.fid_batch_size = 16
    return config


def stage(name: str, fn):
    start = time.perf_counter()
    detail = fn()
    print(f"[rehearsal] {name:<10} ok  {time.perf_counter() - start:7.1f} s  {detail}",
          flush=True)


def run(config, workdir: str, steps: int) -> None:
    """All stages; raises at the first that fails (its traceback says where)."""
    import numpy as np
    import tensorflow_datasets as tfds

    from ebm_vs_score import data, evaluate, settings, train
    from ebm_vs_score.evaluate import fid_stats
    from ebm_vs_score.metrics import fid

    os.makedirs(workdir, exist_ok=True)
    s = settings.from_config(config)
    np.savez(s.eval.inception_weights, **fid.random_state_dict(0))
    mock = _MOCK_EXAMPLES.value or (32 if _TINY.value else 1024)
    with tfds.testing.mock_data(num_examples=mock):
        def first_batch():
            x = next(data.get_dataset(s.data, batch_size=s.training.batch_size,
                                      split="train", seed=s.seed))["x"]
            return f"batch {x.shape} in [{x.min():.2f}, {x.max():.2f}]"

        def train_to(n):
            state = train.train_and_evaluate(settings.override(s, {"training.n_iters": n}),
                                             workdir)
            return f"step {int(state.step)}, checksum {train.params_checksum(state.params):.4g}"

        stage("input", first_batch)
        stage("train", lambda: train_to(max(steps // 2, 1)))
        stage("resume", lambda: train_to(steps))
        s = settings.override(s, {"training.n_iters": steps})  # as trained
        stage("fid_stats", lambda: fid_stats.write_reference_stats(s, workdir))

        def run_eval():
            r = evaluate.evaluate(s, workdir)
            return " ".join(f"{k}={r[k]:.4g}" for k in ("asym", "nasym", "nll_bpd", "fid")
                            if k in r)

        stage("eval", run_eval)
        stage("sample", lambda: f"samples {evaluate.sample(s, workdir).shape}")


def main(argv):
    del argv
    config = _CONFIG.value
    if _TINY.value:
        shrink(config)
    run(rehearsal_config(config, _WORKDIR.value, _STEPS.value), _WORKDIR.value, _STEPS.value)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
