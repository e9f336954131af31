"""scripts/drl_long_run_images.py end to end: a tiny digits DRL run trained by
``train.train_and_evaluate`` from a config file, then the script's ``main`` on its workdir.

Checks the files, that every snapshot has a finite FD (0 and the last step included), that
the acceptance is a probability, that the FD separates the untrained model's samples from
real digits, and the ``--start=data`` variant.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import runpy

import numpy as np
from PIL import Image

from ebm_vs_score import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAIN_STEPS, NUM_CHAINS, K = 20, 32, 3

TINY_CONFIG = f'''
from ebm_vs_score import config_base

OVERRIDES = {{
    "model.ch": 8, "model.ch_mult": (1,), "model.attn_resolutions": (), "model.num_groups": 4,
    "drl.num_levels": 2, "drl.num_steps": {K}, "drl.step_schedule": "sigma",
    "drl.step_size": 0.1, "drl.metropolis": True, "training.n_iters": 2,
    "training.batch_size": 16, "training.log_every": 2, "training.checkpoint_every": 2,
    "training.sample_every": 2, "sampling.num_samples": 4, "eval.classifier_steps": 100,
}}


def get_config():
    config = config_base.get_config("digits", "drl")
    for path, value in OVERRIDES.items():
        section, name = path.split(".")
        config[section][name] = value
    return config
'''


def _script():
    path = os.path.join(ROOT, "scripts", "drl_long_run_images.py")
    spec = importlib.util.spec_from_file_location("drl_long_run_images", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapshot_steps():
    script = _script()
    assert script.snapshot_steps(10_000, 30) == [0, 30, 100, 300, 1000, 3000, 10_000]
    assert script.snapshot_steps(CHAIN_STEPS, K) == [0, K, CHAIN_STEPS]


def test_long_run_script_on_a_tiny_digits_run(tmp_path):
    config_path = tmp_path / "tiny_digits_drl.py"
    config_path.write_text(TINY_CONFIG)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(runpy.run_path(str(config_path))["get_config"](), workdir)
    assert os.path.exists(os.path.join(workdir, "samples.png"))

    script = _script()
    result = script.main([f"--config={config_path}", f"--workdir={workdir}",
                          f"--chain_steps={CHAIN_STEPS}", f"--num_chains={NUM_CHAINS}"])

    out = os.path.join(workdir, "long_run")
    with Image.open(os.path.join(out, "long_run.png")) as image:
        assert min(image.size) > 50
    with open(os.path.join(out, "long_run.json")) as f:
        written = json.load(f)
    assert written["snapshots"] == result["snapshots"]
    assert [s["step"] for s in written["snapshots"]] == [0, K, CHAIN_STEPS]
    assert written["checkpoint_step"] == 2 and written["num_chains"] == NUM_CHAINS
    for snapshot in written["snapshots"]:
        assert math.isfinite(snapshot["fd"]) and snapshot["fd"] >= 0
        assert math.isfinite(snapshot["log_prob"]) and snapshot["pixel_std"] > 0
    assert 0.0 < written["acceptance"] <= 1.0 and 0.0 <= written["accept_prob"] <= 1.0
    assert np.isclose(written["fd_drift"],
                      written["snapshots"][-1]["fd"] - written["fd_progressive_sample"])
    # An untrained model samples noise: every snapshot is far from the test set in the
    # classifier's features, 32 real training digits are close to it (5.1 vs >= 12.2 here).
    fds = [s["fd"] for s in written["snapshots"]] + [written["fd_progressive_sample"]]
    assert written["fd_real_same_n"] < 0.6 * min(fds)

    # --start=data: chains from test digits diffused to x_1, written next to the above.
    from_data = script.main([f"--config={config_path}", f"--workdir={workdir}",
                             f"--chain_steps={CHAIN_STEPS}", f"--num_chains={NUM_CHAINS}",
                             "--start=data"])
    assert os.path.exists(os.path.join(workdir, "long_run_from_data", "long_run.png"))
    fds = [s["fd"] for s in from_data["snapshots"]]
    assert from_data["start"] == "data" and len(fds) == 3 and all(map(math.isfinite, fds))
    assert np.isclose(from_data["fd_drift"], fds[2] - fds[1])  # from the step-K snapshot
