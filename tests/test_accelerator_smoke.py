"""The accelerator smoke test script, run on CPU with the toy configs (fast): a config_flags
program, so a config loads (with --config.* overrides) exactly as main loads it."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "scripts/accelerator_smoke.py", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def test_smoke_runs_configs_and_records_each(tmp_path):
    out = tmp_path / "smoke.json"
    configs = ["configs/toy_score.py", "configs/toy_energy.py"]
    for config in configs:
        proc = _smoke(f"--config={config}", "--steps=3", "--sampler_steps=2", f"--out={out}",
                      "--config.training.batch_size=32")
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    assert [r["config"] for r in records] == configs
    for r in records:
        assert r["ok"] and r["num_params"] > 0 and r["sample"]["num_samples"] > 0
        assert r["batch"] == 32  # the override reached the run
        assert all(abs(v) < 1e3 for v in r["train"]["loss_first_last"])


def test_a_failing_config_is_recorded_and_fails_the_run(tmp_path):
    out = tmp_path / "smoke.json"
    proc = _smoke("--config=configs/toy_score.py", "--config.training.batch_size=-3",
                  "--steps=2", f"--out={out}")
    assert proc.returncode == 1
    record = json.loads(out.read_text())["records"][0]
    assert not record["ok"] and "batch_size" in record["error"]
