"""Records and the document blocks rendered from them (``python -m ebm_vs_score.results``).

A changed number in a README table makes ``--check`` fail; render then check passes; a
block whose record is missing lists its numbers; the repository's own documents match
their records. Rendered numbers are compared with numbers computed here from the raw
inputs (scipy's paired t-interval, the harness JSON's own times), not with saved output.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil

import numpy as np
import pytest
import scipy.stats

from ebm_vs_score import cpuinfo, results
from ebm_vs_score.study import verdicts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_JSON = "benchmarks/results/cpu_2core_digits_1dev_2026-11-29.json"


def _write(root, rel: str, text: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _read(root, rel: str) -> str:
    with open(os.path.join(root, rel)) as f:
        return f.read()


def test_write_record_holds_command_commit_machine_load_and_values(tmp_path):
    values = {"fd": results.measurement(2.44, se=0.47, n=3), "steps": np.int64(2000)}
    path = results.write_record("demo", values, command="python -m x --y=1",
                                load_start=[0.5, 0.6, 0.7], directory=str(tmp_path))
    record = results.load(os.path.basename(path), str(tmp_path))
    assert record["command"] == "python -m x --y=1" and record["name"] == "demo"
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"]) and isinstance(record["dirty"], bool)
    assert datetime.datetime.fromisoformat(record["date"]).tzinfo is not None
    machine = record["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1
    assert machine["versions"]["numpy"] == np.__version__ and machine["versions"]["python"]
    assert record["load"]["start"] == [0.5, 0.6, 0.7] and len(record["load"]["end"]) == 3
    assert record["values"] == {"fd": {"value": 2.44, "se": 0.47, "n": 3}, "steps": 2000}
    for _ in range(2):
        jsonl = results.write_record("runs", {"x": 1.0}, directory=str(tmp_path), append=True)
    assert [r["values"] for r in results.load("runs.jsonl", str(tmp_path))] == [{"x": 1.0}] * 2
    assert os.path.basename(jsonl) == "runs.jsonl"
    with pytest.raises(ValueError, match="plain file stem"):
        results.write_record("../escape", {}, directory=str(tmp_path))


def _study_record(root) -> dict:
    """A study record from synthetic per-seed FDs: C 1% above U, QC 1.0 above U."""
    u = [2.0, 2.6, 1.6, 3.1]
    per_seed = {"score": {s: {"fd": f} for s, f in enumerate(u)},
                "energy": {s: {"fd": 1.01 * f} for s, f in enumerate(u)},
                "qc": {s: {"fd": f + 1.0 + 0.05 * s} for s, f in enumerate(u)}}
    values = verdicts.study_values(per_seed, {k: k for k in per_seed},
                                   {"score": "U", "energy": "C", "qc": "QC"}, None,
                                   scale="digits")
    results.write_record("study_digits", values, command="python -m ebm_vs_score.main --mode=study",
                         directory=os.path.join(root, "results"))
    return values


README = """# demo

Some prose.

<!-- results:table study_claims results/study_digits.json -->
<!-- /results -->

More prose.
"""


def test_changed_number_in_a_readme_table_fails_check_and_render_fixes_it(tmp_path, capsys):
    root = str(tmp_path)
    _study_record(root)
    _write(root, "README.md", README)
    assert results.run("check", root, ["README.md"]) == 1  # empty block: differs
    assert results.run("render", root, ["README.md"]) == 0
    assert results.run("check", root, ["README.md"]) == 0
    text = _read(root, "README.md")
    # the QC claim's interval, from scipy's paired t-test on the same synthetic numbers
    u = np.asarray([2.0, 2.6, 1.6, 3.1])
    ci = scipy.stats.ttest_rel(u + 1.0 + 0.05 * np.arange(4), u).confidence_interval(0.95)
    assert f"[+{ci.low:.3g}, +{ci.high:.3g}]" in text
    assert "**not reproduced**" in text and "**reproduced**" in text
    assert "**not testable here**" in text

    changed = text.replace(f"+{ci.low:.3g}", f"+{ci.low + 0.1:.3g}", 1)
    _write(root, "README.md", changed)
    capsys.readouterr()
    assert results.run("check", root, ["README.md"]) == 1
    out = capsys.readouterr().out
    assert "README.md:5: table `study_claims results/study_digits.json` differs" in out
    assert results.run("render", root, ["README.md"]) == 0
    assert _read(root, "README.md") == text
    assert results.run("check", root, ["README.md"]) == 0


def test_a_block_without_its_record_lists_its_numbers(tmp_path, capsys):
    doc = ("<!-- results:table study_claims results/none.json -->\n| U | 2.442 ± 0.81 |\n"
           "<!-- /results -->\n<!-- results:table no_such_kind -->\n<!-- /results -->\n")
    _write(str(tmp_path), "README.md", doc)
    assert results.run("check", str(tmp_path), ["README.md"]) == 1
    out = capsys.readouterr().out
    assert "results/none.json does not exist" in out and "2.442, 0.81" in out
    assert "unknown table kind 'no_such_kind'" in out and "bench_peer" in out
    assert results.run("render", str(tmp_path), ["README.md"]) == 1  # nothing to render from
    assert _read(str(tmp_path), "README.md") == doc


def test_inline_values_render_and_check(tmp_path, capsys):
    root = str(tmp_path)
    results.write_record("speed", {"step_s": 0.02747, "fd": results.measurement(2.44, se=0.466)},
                         directory=os.path.join(root, "results"))
    doc = ("U takes <!-- results:value results/speed.json step_s scale=1e3 fmt=.2f -->27.40"
           "<!-- /results --> ms; FD <!-- results:value results/speed.json fd fmt=.3g se -->"
           "2.44 ± 0.47<!-- /results -->.\n")
    _write(root, "BENCHMARKS.md", doc)
    assert results.run("check", root, ["BENCHMARKS.md"]) == 1
    assert "27.40" in capsys.readouterr().out
    results.run("render", root, ["BENCHMARKS.md"])
    assert "-->27.47<!--" in _read(root, "BENCHMARKS.md")
    assert results.run("check", root, ["BENCHMARKS.md"]) == 0


def test_strict_lists_numbers_outside_marked_blocks(tmp_path, capsys):
    root = str(tmp_path)
    _study_record(root)
    doc = README + ("\nThe step took 3.14 s, 1.38x faster (84%).\n\n| model | FD |\n|---|---|\n"
                    "| U | 2.44 |\n\n```bash\npython -m x --lr=0.001\n```\n"
                    "λ = 0.1 is a setting. <!-- results:ignore -->\n"
                    "See `v0.10.2` and 2026-11-30.\n")
    _write(root, "README.md", doc)
    results.run("render", root, ["README.md"])
    capsys.readouterr()
    assert results.run("check", root, ["README.md"]) == 0
    assert results.run("check", root, ["README.md"], strict=True) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "no record" in line]
    assert len(lines) == 2, lines
    assert lines[0].endswith("no record for 3.14, 1.38x, 84%") and lines[1].endswith("for 2.44")


def test_benchmark_json_is_read_as_a_record_and_rendered(tmp_path):
    with open(os.path.join(REPO, BENCH_JSON)) as f:
        raw = json.load(f)
    record = results.load(BENCH_JSON, REPO)
    assert record["command"] == raw["machine"]["command"] and record["values"] == raw
    assert record["load"]["start"] == raw["machine"]["load_average_start"]
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "benchmarks/results"))
    shutil.copy(os.path.join(REPO, BENCH_JSON), os.path.join(root, BENCH_JSON))
    _write(root, "B.md",
           f'<!-- results:table bench_runs "one={BENCH_JSON}" -->\n<!-- /results -->\n')
    results.run("render", root, ["B.md"])
    text = _read(root, "B.md")
    for row in raw["rows"]:
        ms, cores = 1e3 * row["time_s"], row["cpu_time_s"] / row["time_s"]
        assert f"| one | {row['name']} | {ms:,.2f} |" in text
        assert f"| {cores:.2f} |" in text


def test_the_repository_documents_match_their_records(capsys):
    """What `.ci/run` runs: every marked block of README.md, BENCHMARKS.md and docs/*.md
    equals what its records render, and (strict) no number stands outside a marked block
    without a record (the study's report is a record in results/, not a document)."""
    status = results.run("check", REPO, list(results.DEFAULT_DOCS), strict=True)
    assert status == 0, capsys.readouterr().out


def test_values_table_renders_any_record(tmp_path):
    root = str(tmp_path)
    results.write_record("qc_amortization", {"runs": {
        "U": {"nasym": results.measurement(0.00484, se=0.00012, n=297), "steps_per_s": 27.9},
        "QC": {"nasym": results.measurement(0.00062, se=0.00003, n=297), "steps_per_s": 6.9}}},
        directory=os.path.join(root, "results"))
    _write(root, "B.md", "<!-- results:table values results/qc_amortization.json path=runs "
                         "columns=nasym,steps_per_s fmt=.3g se=1 -->\n<!-- /results -->\n")
    assert results.run("render", root, ["B.md"]) == 0
    text = _read(root, "B.md")
    assert "| U | 0.00484 ± 0.00012 | 27.9 |" in text and "| QC | 0.00062 ± 3e-05 | 6.9 |" in text


def test_runtime_table_is_steps_over_the_measured_rate(tmp_path):
    """bench_runtime: hours = steps / (steps/s) / 3600 for each selected train row."""
    root = str(tmp_path)
    rows = [dict(name="train/cifar/U", kind="train", batch=128, dtype="float32",
                 steps_per_s=10.0, examples_per_s=1280.0),
            dict(name="train/cifar/C", kind="train", batch=128, dtype="float32",
                 steps_per_s=4.0, examples_per_s=512.0)]
    results.write_record("bench", {"rows": rows}, directory=os.path.join(root, "results"))
    _write(root, "B.md", "<!-- results:table bench_runtime results/bench.json steps=36000 "
                         "rows=train/cifar/C -->\n<!-- /results -->\n")
    assert results.run("render", root, ["B.md"]) == 0
    text = _read(root, "B.md")
    assert "| train/cifar/C | 128 | float32 | 512 | 2.5 |" in text and "cifar/U" not in text
    _write(root, "B.md", "<!-- results:table bench_runtime results/bench.json -->\n"
                         "<!-- /results -->\n")
    assert results.run("check", root, ["B.md"]) == 1  # steps=N is required


def _loops_side(ms: dict[str, float], non_canonical: int) -> dict:
    families = {}
    for family, per_nfe in ms.items():
        families[family] = {"bare": {"time_s": 0.01},
                            "em": {"time_per_nfe_s": per_nfe / 1e3}}
    return {"families": families, "load_average_start": [7.25, 1, 1],
            "load_average_end": [9.5, 1, 1], "nc": non_canonical}


def _loops_summary(side: dict, code: str) -> dict:
    return {f: {"em": {"code": code, "n": 1, "bare": "bare",
                       "ratio_median": row["em"]["time_per_nfe_s"] / row["bare"]["time_s"],
                       "cpu_ratio_median": 1.5, "non_canonical": side["nc"],
                       "ms_per_nfe_median": 1e3 * row["em"]["time_per_nfe_s"]}}
            for f, row in side["families"].items()}


def test_loops_and_eval_cost_tables_render_their_records(tmp_path):
    """bench_loops: per-NFE ms, × bare, C over U per code; bench_eval_cost: seconds per
    metric group (samples + quality summed) from wall_s or the log phases."""
    root = str(tmp_path)
    sides = {"before": [_loops_side({"U": 10.0, "C": 60.0}, 20)],
             "after": [_loops_side({"U": 10.0, "C": 25.0}, 0)]}
    raw = {"kind": "loops", "machine": {"command": "python -m benchmarks.loops"},
           "sides": sides, "summary": {c: _loops_summary(s[0], c) for c, s in sides.items()}}
    costs = {"kind": "eval_cost", "machine": {}, "runs": [
        {"code": "before", "family": "C", "process_wall_s": 700.0,
         "log_phases": {"restore": 40.0, "asym": 100.0, "ode_nll": 300.0, "samples": 200.0},
         "load_average_start": [8.0], "load_average_end": [9.0]},
        {"code": "after", "family": "C", "process_wall_s": 300.0,
         "metric_wall_s": {"restore": 5.0, "asym": 50.0, "ode_nll": 100.0, "samples": 60.0,
                           "sample_quality": 15.0, "ood": 7.0},
         "load_average_start": [8.0], "load_average_end": [9.0]},
        *({"code": "after", "family": "U", "process_wall_s": wall,
           "metric_wall_s": {"restore": 4.0, "asym": asym, "ode_nll": 10.0, "samples": 3.0},
           "load_average_start": [start], "load_average_end": [start + 0.5]}
          for wall, asym, start in ((40.0, 12.0, 1.0), (50.0, 16.0, 2.0))),
        *({"code": code, "family": "EqM", "process_wall_s": wall,
           "metric_wall_s": {"restore": 1.0, "samples": 2.0, "time_invariant": 30.0,
                             "nfe_sweep": sweep}} for code, wall, sweep in (
            ("before", 240.0, 200.0), ("after", 160.0, 120.0)))]}
    _write(root, "results/loops.json", json.dumps(raw))
    _write(root, "results/cost.json", json.dumps(costs))
    _write(root, "B.md", "<!-- results:table bench_loops results/loops.json -->\n"
                         "<!-- /results -->\n<!-- results:table bench_eval_cost "
                         "results/cost.json -->\n<!-- /results -->\n")
    assert results.run("render", root, ["B.md"]) == 0
    text = _read(root, "B.md")
    assert "| C | em | 10.0 / 10.0 | 60.0 / 25.0 | 6.00 / 2.50 | 1.50 / 1.50 | 20 / 0 |" in text
    assert f"| C | em | {60 / 10:.2f} / {25 / 10:.2f} | – / – |" in text  # C over U per NFE
    assert "before 0: 7.2 → 9.5" in text
    assert ("| C | 40 / 5 | 100 / 50 | 300 / 100 | 200 / 75 | – / 7 | – / – | – / – "
            "| 700 / 300 |") in text
    # Two pairs of U: each cell their mean, the load from the first start to the last end.
    assert "| U | – / 4 | – / 14 | – / 10 | – / 3 | – / – | – / – | – / – | – / 45 |" in text
    assert ("| EqM | 1 / 1 | – / – | – / – | 2 / 2 | – / – | 30 / 30 | 200 / 120 "
            "| 240 / 160 |") in text
    assert results.run("check", root, ["B.md"]) == 0


INTEL = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
         "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 8\nflags\t\t: fpu avx2 "
         "avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nvendor_id\t: Other\n")
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n"


def test_the_cpu_id_names_family_model_and_vector_units_of_the_first_cpu():
    assert cpuinfo.cpu_id_from(INTEL) == ("GenuineIntel cpu family 6 model 143 stepping 8; "
                                          "avx2 avx512f avx512_bf16 amx_tile")
    assert cpuinfo.cpu_id_from(ARM) == "CPU implementer 0x41; sve asimd"
    assert cpuinfo.cpu_id_from("") is None
    assert "cpu_id" in results.machine_info()


def test_peer_table_names_torch_jax_and_the_cpu(tmp_path):
    """bench_peer: each pair's ms and ratio, the median, and the versions the record names."""
    root = str(tmp_path)
    pairs = [{"ours_ms": o, "theirs_ms": t, "theirs": {"torch_version": "2.13.0+cpu"}}
             for o, t in ((1200.0, 1000.0), (900.0, 1000.0))]
    raw = {"batch": 32, "ratio_median": 1.05, "pairs": pairs,
           "machine": {"jax_version": "0.10.2", "cpu_model": "Some CPU",
                       "load_average_start": [1.5]}}
    _write(root, "results/peer.json", json.dumps(raw))
    _write(root, "B.md", "<!-- results:table bench_peer results/peer.json -->\n<!-- /results -->\n")
    assert results.run("render", root, ["B.md"]) == 0
    text = _read(root, "B.md")
    assert "| 0 | 1,200 | 1,000 | 1.200 |" in text and "| 1 | 900 | 1,000 | 0.900 |" in text
    assert ("Median of ours/theirs over 2 pairs: 1.050 (batch 32; 1-minute load 1.5; "
            "torch 2.13.0+cpu; jax 0.10.2; Some CPU).") in text
