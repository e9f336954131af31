"""The accelerator smoke test script, run on CPU with the toy configs (fast): a config_flags
program, so a config loads (with --config.* overrides) exactly as main loads it."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 256  # an override of the toy configs' 512: the smoke script takes --config.* flags


def _smoke(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "scripts/accelerator_smoke.py", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def _vp_marginals(t):
    """alpha(t), sigma(t) of the toy configs' VP SDE (beta 0.1 -> 20; Song et al. 2021 eq. 33)."""
    alpha = np.exp(-0.25 * t**2 * 19.9 - 0.05 * t)
    return alpha, np.sqrt(1 - alpha**2)


def _initial_dsm_terms(family, n=1_000_000, seed=0):
    """Per-example DSM terms 1/2 mean_d (sigma s + z)^2 (lambda = sigma^2, reduce_mean) of a
    fresh toy model on the smoke's data, x0 ~ U[-1, 1]^2, t ~ U(1e-3, 1), x = alpha x0 + sigma z.

    'score': the zero-initialized output layer gives F = 0, so s = -F / sigma = 0. 'resnet':
    the scalar network's zero output leaves the Gaussian base term E = c_in^2 ||x||^2 / 2,
    with c_in^2 = 1 / (alpha^2 sigma_data^2 + sigma^2) = 1 for VP and sigma_data = 1: s = -x.
    """
    rng = np.random.default_rng(seed)
    alpha, sigma = _vp_marginals(rng.uniform(1e-3, 1.0, (n, 1)))
    x0, z = rng.uniform(-1, 1, (n, 2)), rng.standard_normal((n, 2))
    score = 0.0 if family == "score" else -(alpha * x0 + sigma * z)
    return 0.5 * np.mean((sigma * score + z) ** 2, axis=1)


def test_smoke_runs_configs_and_records_each(tmp_path):
    """Two toy configs run and are recorded; each first training loss (a batch of BATCH at the
    initial parameters) is the fresh model's expected DSM loss within 5 standard errors."""
    out = tmp_path / "smoke.json"
    resnet = tmp_path / "toy_resnet_energy.py"
    resnet.write_text("from ebm_vs_score import config_base\n\ndef get_config():\n"
                      "    return config_base.get_config('toy', 'resnet_energy')\n")
    configs = ["configs/toy_score.py", str(resnet)]
    for config in configs:
        proc = _smoke(f"--config={config}", "--steps=3", "--sampler_steps=2", f"--out={out}",
                      f"--config.training.batch_size={BATCH}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    assert [r["config"] for r in records] == configs
    for family, r in zip(("score", "resnet"), records, strict=True):
        assert r["ok"] and r["num_params"] > 0 and r["sample"]["num_samples"] > 0
        assert r["batch"] == BATCH  # the override reached the run
        terms = _initial_dsm_terms(family)
        first = r["train"]["loss_first_last"][0]
        assert abs(first - terms.mean()) < 5 * terms.std() / np.sqrt(BATCH), (family, first)


def test_a_failing_config_is_recorded_and_fails_the_run(tmp_path):
    out = tmp_path / "smoke.json"
    proc = _smoke("--config=configs/toy_score.py", "--config.training.batch_size=-3",
                  "--steps=2", f"--out={out}")
    assert proc.returncode == 1
    record = json.loads(out.read_text())["records"][0]
    assert not record["ok"] and "batch_size" in record["error"]
