"""The accelerator smoke test script, run on CPU with the toy configs (fast)."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "accelerator_smoke", os.path.join(ROOT, "scripts", "accelerator_smoke.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_configs_and_records_each(tmp_path):
    out = tmp_path / "smoke.json"
    configs = [os.path.join(ROOT, "configs", "toy_score.py"),
               os.path.join(ROOT, "configs", "toy_energy.py")]
    status = _script().main([f"--configs={','.join(configs)}", "--steps=3",
                             "--sampler_steps=2", f"--out={out}"])
    assert status == 0
    records = json.loads(out.read_text())["records"]
    assert [r["config"] for r in records] == configs
    for r in records:
        assert r["ok"] and r["num_params"] > 0 and r["sample"]["num_samples"] > 0
        assert all(abs(v) < 1e3 for v in r["train"]["loss_first_last"])


def test_a_failing_config_is_recorded_and_fails_the_run(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ebm_vs_score import config_base\n\ndef get_config():\n"
                   "    c = config_base.get_config('toy', 'score')\n"
                   "    c.training.batch_size = -3\n    return c\n")
    out = tmp_path / "smoke.json"
    assert _script().main([f"--configs={bad}", "--steps=2", f"--out={out}"]) == 1
    record = json.loads(out.read_text())["records"][0]
    assert not record["ok"] and "batch_size" in record["error"]
