"""``--mode=energy_vs_ode`` (ebm_vs_score.evaluate.energy_vs_ode) on a tiny toy energy run.

Through main in a subprocess, a ``--config.eval.*`` override reaches the recomputation (the
divergence estimator it names); in-process, the agreement keys go into an eval JSON whose
ODE NLL the recomputation reproduces, and an eval JSON of another NLL is left alone.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys

import pytest

from ebm_vs_score import settings, train
from ebm_vs_score.evaluate import energy_vs_ode, files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"training.n_iters": 2, "eval.nll_probes": 2, "eval.num_examples": 48}


def _config():
    config = runpy.run_path(os.path.join(ROOT, "configs", "toy_energy.py"))["get_config"]()
    for path, value in OVERRIDES.items():
        section, name = path.split(".")
        config[section][name] = value
    return config


def _settings():
    return settings.from_config(_config())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("energy"))
    config = _config()
    config.eval.nll_probes = 0  # as trained: the override below is resume-safe (eval.*)
    train.train_and_evaluate(settings.from_config(config), workdir)
    return workdir


def test_config_override_reaches_the_recomputation(run_dir):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "ebm_vs_score.main", "--mode=energy_vs_ode",
         "--config=configs/toy_energy.py", f"--workdir={run_dir}"]
        + [f"--config.{path}={value}" for path, value in OVERRIDES.items()],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(run_dir, energy_vs_ode.OUTPUT_FILE)) as f:
        (row,) = json.load(f)
    assert row["nll_divergence"] == "hutchinson_2" and row["step"] == 2
    assert "nll_probe_std" in row  # only a probe estimate has a probe noise
    for key in ("nll_nats", "ode_log_z", "energy_ode_spread_nats"):
        assert math.isfinite(row[key])
    assert row["eval_json_updated"] is False  # no eval JSON yet


def test_agreement_goes_into_an_eval_json_of_the_same_nll(run_dir):
    config = _settings()
    first = energy_vs_ode.agreement(config, run_dir)
    path = files.eval_path(run_dir, 2)
    files.write_json_atomic(path, {"nll_nats": first["nll_nats"] + 1.0, "step": 2})
    assert not energy_vs_ode.add_to_eval_json(run_dir, first)  # another NLL: left alone
    with open(path) as f:
        assert "ode_log_z" not in json.load(f)
    files.write_json_atomic(path, {"nll_nats": first["nll_nats"], "ais_log_z": 1.5, "step": 2})
    (row,) = energy_vs_ode.run_energy_vs_ode(config, run_dir)
    assert row["nll_nats"] == first["nll_nats"]  # the same points, probes and keys
    assert row["eval_json_updated"] and row["ais_log_z"] == 1.5
    with open(path) as f:
        saved = json.load(f)
    assert saved["ode_log_z"] == row["ode_log_z"] and saved["ais_log_z"] == 1.5
