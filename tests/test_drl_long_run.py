"""``--mode=drl_long_run`` (ebm_vs_score.drl.long_run): a tiny DRL run trained by the train
loop, then its long level-0 chains.

Digits, in-process: the files, a finite FD at every snapshot (0 and the last step
included), an acceptance that is a probability, an FD that separates the untrained model's
samples from real digits, and the start='data' variant. Toy, through main in a subprocess:
``--config.*`` overrides reach the training (its step count) and the chains (their length
and number).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ebm_vs_score import config_base, settings
from ebm_vs_score.drl import long_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAIN_STEPS, NUM_CHAINS, K = 20, 32, 3
TINY_DIGITS = {
    "model.ch": 8, "model.ch_mult": (1,), "model.attn_resolutions": (), "model.num_groups": 4,
    "drl.num_levels": 2, "drl.num_steps": K, "drl.step_schedule": "sigma",
    "drl.b_squared": 0.1, "drl.metropolis": True, "training.n_iters": 2,
    "training.batch_size": 16, "training.log_every": 2, "training.checkpoint_every": 2,
    "training.sample_every": 2, "sampling.num_samples": 4, "eval.classifier_steps": 100,
    "eval.long_run_steps": CHAIN_STEPS, "eval.long_run_chains": NUM_CHAINS,
}


def _tiny_digits_config():
    config = config_base.get_config("digits", "drl")
    for path, value in TINY_DIGITS.items():
        section, name = path.split(".")
        config[section][name] = value
    return config


def test_snapshot_steps():
    assert long_run.snapshot_steps(10_000, 30) == [0, 30, 100, 300, 1000, 3000, 10_000]
    assert long_run.snapshot_steps(CHAIN_STEPS, K) == [0, K, CHAIN_STEPS]


@pytest.mark.slow  # 35 s (-m slow, with the overrides case below)
def test_long_run_on_a_tiny_digits_run(tmp_path):
    config, workdir = _tiny_digits_config(), str(tmp_path / "run")
    result = long_run.run_long_run(settings.from_config(config), workdir)
    assert os.path.exists(os.path.join(workdir, "samples.png"))  # the train loop ran

    out = os.path.join(workdir, "long_run")
    with Image.open(os.path.join(out, "long_run.png")) as image:
        assert min(image.size) > 50
    with open(os.path.join(out, "long_run.json")) as f:
        written = json.load(f)
    cond = written["conditional"]
    assert cond == json.loads(json.dumps(result["conditional"]))
    assert [s["step"] for s in cond["snapshots"]] == [0, K, CHAIN_STEPS]
    assert written["checkpoint_step"] == 2 and written["num_chains"] == NUM_CHAINS
    assert written["metric"] == "fd" and "marginal" not in written
    for snapshot in cond["snapshots"]:
        assert math.isfinite(snapshot["distance"]) and snapshot["distance"] >= 0
        assert math.isfinite(snapshot["log_prob"]) and snapshot["std"] > 0
    assert 0.0 < cond["acceptance"] <= 1.0 and 0.0 <= cond["accept_prob"] <= 1.0
    assert np.isclose(cond["drift"], cond["snapshots"][-1]["distance"]
                      - written["distance_progressive_sample"])
    # An untrained model samples noise: every snapshot is far from the test set in the
    # classifier's features, 32 real training digits are close to it.
    fds = [s["distance"] for s in cond["snapshots"]] + [written["distance_progressive_sample"]]
    assert written["distance_real_same_n"] < 0.6 * min(fds)

    # start='data': chains from real digits diffused to x_1, written next to the above; the
    # finished run is reused (eval.* may change on resume).
    config.eval.long_run_start = "data"
    from_data = long_run.run_long_run(settings.from_config(config), workdir)
    assert os.path.exists(os.path.join(workdir, "long_run_from_data", "long_run.png"))
    fds = [s["distance"] for s in from_data["conditional"]["snapshots"]]
    assert from_data["start"] == "data" and len(fds) == 3 and all(map(math.isfinite, fds))
    assert np.isclose(from_data["conditional"]["drift"], fds[2] - fds[1])  # from step K


@pytest.mark.slow  # 31 s
def test_config_overrides_reach_training_and_the_chains(tmp_path):
    workdir = tmp_path / "toy"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "ebm_vs_score.main", "--mode=drl_long_run",
         "--config=configs/toy_drl.py", f"--workdir={workdir}",
         "--config.training.n_iters=3", "--config.training.batch_size=64",
         "--config.eval.long_run_steps=40", "--config.eval.long_run_chains=16",
         "--config.drl.num_steps=5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "long_run_from_data" / "long_run.json") as f:
        result = json.load(f)
    assert result["checkpoint_step"] == 3 and result["num_chains"] == 16
    assert result["chain_steps"] == 40 and result["drl"]["num_steps"] == 5
    for chain in ("conditional", "marginal"):  # the toy defaults: start 'data', + marginal
        snapshots = result[chain]["snapshots"]
        assert [s["step"] for s in snapshots] == [0, 5, 40]
        assert all(math.isfinite(s["distance"]) for s in snapshots)
        assert abs(sum(snapshots[-1]["mode_weights"]) - 1) < 1e-2
    with open(workdir / "metrics.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if r.get("split") == "train"]
    assert steps[-1] == 3
