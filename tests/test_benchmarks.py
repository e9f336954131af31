"""Smoke test of the speed harness (benchmarks/): toy rows, one repeat, tiny settings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is not installed; `pytest` from anywhere finds it
    sys.path.insert(0, REPO)

from benchmarks import report, run, suites  # noqa: E402

TOY_ROWS = {
    "train/toy/U", "train/toy/C", "train/toy/C-ResNet", "train/toy/QC",
    "sampler/toy/pc/U", "sampler/toy/pc/C", "sampler/toy/ancestral/U",
    "sampler/toy/ancestral/C", "sampler/toy/mala/C", "asym/toy/U", "asym/toy/C",
}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_row_selection():
    rows = suites.plan(suites.SUITES["cpu"])
    assert {r.name for r in suites.select(rows, "toy")} == TOY_ROWS
    assert [r.name for r in suites.select(rows, "train/digits/*")] == [
        "train/digits/U", "train/digits/C", "train/digits/C-ResNet", "train/digits/QC"]
    assert {r.name for r in suites.select(rows, "mala")} == {"sampler/toy/mala/C",
                                                              "sampler/digits/mala/C"}
    with pytest.raises(ValueError, match="selects no row"):
        suites.select(rows, "nonsense")


@pytest.fixture(scope="module")
def toy_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "toy.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--suite=cpu", "--only=toy",
           "--repeats=1", "--min-time=0", "--sampler-steps=2", "--asym-probes=1",
           "--matmul-size=128", f"--out={out}"]
    # Plumbing only, numbers unused: skip LLVM optimization to halve XLA:CPU compile time.
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=flags)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_toy_json_fields(toy_result):
    result, stdout = toy_result
    m = result["machine"]
    for field in ("devices", "platform", "cpu_count", "jax_version", "date", "command"):
        assert m[field], field
    assert "--only=toy" in m["command"] and "benchmarks.run" in m["command"]
    assert _positive(result["peak"]["float32"]["flops_per_s"])
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == TOY_ROWS
    assert not [r["error"] for r in rows.values() if "error" in r]
    for name, r in rows.items():
        if r["kind"] == "train":
            assert isinstance(r["batch"], int) and r["batch"] > 0
            for field in ("time_s", "steps_per_s", "examples_per_s", "compile_s", "lower_s"):
                assert _positive(r[field]), (name, field)
            assert r["memory"]["peak_bytes"] > 0 and r["memory"]["peak_source"]
            assert _positive(r["flops"]) and _positive(r["peak_fraction"]["float32"])
        elif r["kind"] == "sampler":
            assert r["nfe"] >= r["num_steps"] and _positive(r["time_per_nfe_s"]), name
            assert _positive(r["bare_loop_eval_s"]) and _positive(r["bare_eval_s"])
            assert r["overhead"] == pytest.approx(r["time_per_nfe_s"] / r["bare_loop_eval_s"] - 1)
            assert "flops" not in r  # a scan: XLA would count one step
        else:
            assert _positive(r["probes"]["1"]["per_probe_over_forward"]), name
    assert "training step" in stdout and "samplers" in stdout and "Asym" in stdout


def test_toy_ratios(toy_result):
    result, _ = toy_result
    rows = {r["name"]: r for r in result["rows"]}
    ratios = result["ratios"]["toy"]
    assert set(ratios) == {"C/U", "C-ResNet/U", "QC/U"}
    for family in ("C", "C-ResNet", "QC"):
        row, base = rows[f"train/toy/{family}"], rows["train/toy/U"]
        assert ratios[f"{family}/U"] == pytest.approx(row["time_s"] / base["time_s"])
        assert row["time_vs_U"] == pytest.approx(ratios[f"{family}/U"])
        cpu = row["cpu_time_s"] / base["cpu_time_s"]
        assert result["ratios_cpu"]["toy"][f"{family}/U"] == pytest.approx(cpu)


def test_bf16_rows_are_compared_with_bf16_u():
    """Mixed-precision rows form their own ratio group: C-bf16 / U-bf16, not / U."""
    specs = [s for s in suites.plan(suites.SUITES["gpu"]) if s.name.endswith("-bf16")]
    assert [s.name for s in specs] == ["train/cifar/U-bf16", "train/cifar/C-bf16"]
    assert {s.dtype for s in specs} == {"bfloat16"}
    rows = [{"kind": "train", "scale": "cifar", "family": f, "dtype": d, "time_s": t}
            for f, d, t in [("U", "float32", 1.0), ("C", "float32", 2.0),
                            ("U", "bfloat16", 0.5), ("C", "bfloat16", 0.75)]]
    ratios = report.add_ratios(rows)
    assert ratios == {"cifar": {"C/U": 2.0}, "cifar-bf16": {"C/U": 1.5}}


def test_every_finished_row_is_handed_on(monkeypatch):
    """``on_row`` sees the rows so far after each one (the JSON survives a time limit)."""
    specs = suites.select(suites.plan(suites.SUITES["cpu"]), "train/toy/U,train/toy/C")
    monkeypatch.setattr(run.rows, "train_row", lambda spec, opts: ({"time_s": 1.0}, None))
    seen = []
    run.run_rows(specs, None, lambda done: seen.append([r["name"] for r in done]))
    assert seen == [["train/toy/U"], ["train/toy/U", "train/toy/C"]]


@pytest.mark.slow  # 17 s
def test_memory_rows_show_that_accumulation_shrinks_the_temporaries():
    """benchmarks.memory: one compiled step per (family, remat, accum), XLA's memory of it;
    four micro-batches keep a quarter of the activations alive at once."""
    from benchmarks import memory

    rows = memory.main(["--scale=toy", "--families=U,C", "--remat=0", "--accum=1,4",
                        "--batch=512"])
    assert [(r["family"], r["grad_accum_steps"]) for r in rows] == [
        ("U", 1), ("U", 4), ("C", 1), ("C", 4)]
    for full, accumulated in (rows[:2], rows[2:]):
        assert accumulated["temp_bytes"] < full["temp_bytes"]
        assert full["xla_total_bytes"] > 0
    with pytest.raises(SystemExit, match="--accum"):
        memory.main(["--scale=toy", "--accum=two"])


def test_the_sums_experiment_compares_two_ways_of_the_same_sum():
    import jax
    import numpy as np

    from benchmarks import experiments

    g = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
    fns = experiments.channel_sum_fns(g.shape)
    np.testing.assert_allclose(fns["reduce"](g), fns["ones_product"](g), rtol=1e-5, atol=1e-5)
    times = experiments.sums_experiment(1, experiments.rows.Options(1, 0.0, 0, ()))
    assert set(times) == {"reduce", "ones_product"} and min(times.values()) > 0


def _budget(tune, steps, log_zs, seconds=(2.0, 1.0)):
    from benchmarks import ais_budget

    rows = [{"log_z": z, "stderr": 0.5, "ess": 3.0, "acceptance": 0.7, "last_step_size": 0.4,
             "call_s": s} for z, s in zip(log_zs, seconds, strict=True)]
    return ais_budget.summarize(rows, steps, 64, 5, tune, nats_per_bit_dim=64 * math.log(2))


def test_ais_budget_summaries_and_their_tables():
    """The spread over runs is the error of one run, the first call (compilation) is left out
    of s/run, shifts are against the most expensive tuned budget; both table kinds render."""
    from benchmarks import ais_budget, tables
    from ebm_vs_score import results

    budgets = [_budget(0, 100, [1.0, 3.0]), _budget(16, 100, [10.0, 12.0]),
               _budget(16, 400, [20.0, 20.0])]
    assert budgets[0]["log_z_sd"] == pytest.approx(math.sqrt(2.0))
    assert budgets[0]["run_s"] == 1.0 and budgets[0]["nfe_per_chain"] == 501
    ais_budget.compare_with_reference(budgets, 64 * math.log(2))
    assert budgets[1]["reference"] == [400, 64]
    assert budgets[1]["shift_vs_reference"] == pytest.approx(-9.0)
    assert budgets[2]["shift_vs_reference_se"] == 0.0
    assert ais_budget._ints("") == [] and ais_budget._ints("50,100") == [50, 100]
    rays = {"radii": [0, 8], "energy_along_rays": {"0": [1.0, 1.0], "8": [5.0, 3.0]},
            "summary": {"0": 1.0, "8": 4.0},
            "tail": {"rising_fraction": 1.0, "growth_nats": -2.0, "needed_nats": 43.7,
                     "scales": [8.0, 16.0]}}
    record = {"schema_version": 1, "kind": "ais_budget", "family": "energy", "step": 2000,
              "budgets": budgets, "rays": rays}
    spec = results.Spec("bench_ais_budget", [(None, "x.json")], {})
    text = "\n".join(tables.bench_ais_budget(spec, [(None, results.normalize(record, "x"))]))
    assert "| 16 | 400 | 64 | 20.0 ± 0.0 (2) |" in text and "100% (median growth -2" in text
    spec = results.Spec("bench_energy_tails", [("C", "x.json")], {})
    rays_only = results.normalize(dict(record, budgets=[]), "x")
    text = "\n".join(tables.bench_energy_tails(spec, [("C", rays_only)]))
    assert "| C | 2000 | 1 | 4 | 100% | -2 (> 43.7) |" in text


def test_divergence_table_puts_each_estimator_against_the_exact_one():
    from benchmarks import tables
    from ebm_vs_score import results

    exact = {"num_probes": 0, "n": 8, "bpd": 2.35, "bpd_se": 0.03, "nfe": 463.0,
             "call_s": [440.0]}
    probes = {"num_probes": 4, "n": 8, "bpd": 2.34, "bpd_se": 0.04, "nfe": 493.0,
              "call_s": [52.0, 38.0], "probe_std": 0.118, "probe_se": 0.021,
              "diff_vs_exact": -0.0094, "diff_vs_exact_se": 0.016}
    record = results.normalize({"schema_version": 1, "kind": "divergence",
                                "estimators": [exact, probes]}, "x")
    spec = results.Spec("bench_divergence", [(None, "x.json")], {})
    text = "\n".join(tables.bench_divergence(spec, [(None, record)]))
    assert "| exact | 2.350 ± 0.030 | 0 | 0 | – | 463 | 440 |" in text
    assert "| 4 | 2.340 ± 0.040 | 0.118 | 0.021 | -0.009 ± 0.016 | 493 | 38 |" in text


def test_fd_noise_pairs_draws_and_refuses_bad_input(tmp_path, capsys):
    from benchmarks import fd_noise

    rows = {"score": [{m: float(d) for m in fd_noise.METRICS} for d in (1, 2, 4)],
            "energy": [{m: float(2 * d) for m in fd_noise.METRICS} for d in (1, 2, 4)]}
    diff = fd_noise.differences(rows, "score")["energy"]["fd"]
    assert diff["draws"] == [1.0, 2.0, 4.0]  # draw d of energy minus draw d of score
    assert diff["mean"] == pytest.approx(7 / 3) and diff["n"] == 3
    assert "score" not in fd_noise.differences(rows, "score")
    with pytest.raises(SystemExit):
        fd_noise.parse_args(["--study_dir", str(tmp_path), "--draws", "1"])
    assert "must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="is not a trained run of the study"):
        fd_noise.run_settings(str(tmp_path), "score", 0)
