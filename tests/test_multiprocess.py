"""Two JAX processes on localhost train like one process with the same global batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from ebm_vs_score import checkpoints, config_base, settings, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config.model.hidden=(32,32)", "--config.training.batch_size=64",
        "--config.training.log_every=5", "--config.training.checkpoint_every=10",
        "--config.sampling.num_steps=10", "--config.sampling.num_samples=16"]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def _restore(workdir, n_iters):
    config = config_base.get_config("toy", "score")
    config.model.hidden = (32, 32)
    config.training.n_iters = n_iters
    s = settings.from_config(config)
    model = train.builders.build_model(s)
    template = train.init_state(model, train.make_optimizer(s.optim), s.seed)
    ckpt = checkpoints.Checkpointer(workdir)
    state = ckpt.restore(template)
    ckpt.close()
    return state


def _checksums(log_dir):
    found = []
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name)) as f:
            found += re.findall(r"params checksum (\S+)", f.read())
    return found


@pytest.mark.slow  # 56 s; one process with eight CPU devices (test_train) runs by default
def test_two_processes_match_one_and_resume_in_one(tmp_path):
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    out = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "configs/toy_score.py",
                          two, "--config.training.n_iters=20", *ARGS],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sums = _checksums(os.path.join(two, "logs"))
    assert len(sums) == 2 and sums[0] == sums[1], sums  # both processes end identical
    single = subprocess.run(
        [sys.executable, "-m", "ebm_vs_score.main", "--config=configs/toy_score.py",
         f"--workdir={one}", "--config.training.n_iters=20", *ARGS],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _restore(two, 20), _restore(one, 20)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    resumed = subprocess.run(
        [sys.executable, "-m", "ebm_vs_score.main", "--config=configs/toy_score.py",
         f"--workdir={two}", "--config.training.n_iters=25", *ARGS],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint at step 20" in resumed.stderr
    assert int(_restore(two, 25).step) == 25
