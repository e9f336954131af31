"""The accelerator rehearsal script, CPU-sized (--tiny): every stage runs and prints its line."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a CIFAR-shaped train/resume/eval/FID/sample cycle: minutes on 2 CPU cores
def test_tiny_rehearsal_runs_every_stage(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "scripts/accelerator_rehearsal.py", "--config=configs/cifar_energy.py",
         f"--workdir={tmp_path / 'w'}", "--tiny", "--steps=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[rehearsal]")]
    stages = [ln.split()[1] for ln in lines]
    assert stages == ["input", "train", "resume", "fid_stats", "eval", "sample"]
    assert all(" ok " in ln for ln in lines)
    assert "step 2," in lines[2] and "fid=" in lines[4] and "nll_bpd=" in lines[4]
