"""The study: run configs, resume, clear failures, REPORT.md with every column filled.

Fast tests drive `run_study` with fake training/evaluation (the logic of resuming,
failures and the report) and one real two-family toy study; the slow tests run the toy
study with all four families and the digits study (reduced steps) end to end.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from ebm_vs_score import evaluate, settings, study, train
from ebm_vs_score import results as results_lib
from ebm_vs_score import workdir as workdir_lib
from ebm_vs_score.errors import ConfigError
from ebm_vs_score.metrics import inception
from ebm_vs_score.study import plan
from ebm_vs_score.study import report as report_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def table_cells(report: str) -> list[list[str]]:
    """Cells of every markdown table row (header and body) of a report."""
    rows = [line for line in report.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]


def assert_tables_filled(report: str) -> None:
    cells = table_cells(report)
    assert cells, "no tables in the report"
    widths = collections.Counter()
    for row in cells:
        widths[len(row)] += 1
        for cell in row:
            assert cell and cell != "-" and "nan" not in cell.lower() and cell != "failed", row


def section(report: str, title: str) -> str:
    start = report.index(f"## {title}")
    end = report.find("\n## ", start + 1)
    return report[start:] if end < 0 else report[start:end]


def mtimes(root: str) -> dict[str, float]:
    """Modification times of every file under ``root`` (runs are never rewritten)."""
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(root) for f in files}


def _family_index(family: str) -> int:
    family = plan.parse_variant(family)[0]  # eqm_energy_<form> runs carry their variant
    return (study.STUDY_FAMILIES + study.TIME_INVARIANT_FAMILIES).index(family)


def _time_invariant_metrics(family: str, seed: int, quality: str) -> dict:
    """Fake results of a time-invariant run: no ODE NLL, NAsym per gamma, the NFE sweep,
    AIS for the energies and OOD AUROCs (evaluate/time_invariant.py, evaluate/ood.py)."""
    base = 1.0 + 0.1 * seed + 0.01 * _family_index(family)
    sweep = [{"sampler": label, "num_steps": steps, "tol": tol, "sample_nfe_mean": nfe,
              quality: base * q}
             for label, steps, tol, nfe, q in (
                 ("gd_25", 25, 0.0, 25, 9.0), ("nag_25", 25, 0.0, 25, 7.0),
                 ("nag_eqm_25", 25, 0.0, 25, 8.0), ("gd_200", 200, 0.0, 200, 6.0),
                 ("nag_200", 200, 0.0, 200, 5.0), ("nag_eqm_200", 200, 0.0, 200, 5.5),
                 ("nag_tol2", 200, 2.0, 60 + seed, 5.1), ("nag_tol1", 200, 1.0, 90 + seed,
                                                         5.0))]
    out = {"asym": 1e-3 * base, "nasym": 0.02, "nasym_per_gamma": [0.01, 0.03],
           "gamma_levels": [0.5, 1.0], "sample_nfe": 100.0, quality: 6.0 * base,
           "nfe_sweep": sweep, "ood_auroc_grad_norm_noise": 0.9 + 0.01 * seed}
    if family != "eqm":
        out.update(ais_log_z=1.0, ais_nll_bpd=4.0 * base, ais_nll_nats=2.0 * base,
                   ood_auroc_energy_noise=0.95 + 0.01 * seed, nasym=0.0)
    return out


def _toy_metrics(family: str, seed: int) -> dict:
    if plan.parse_variant(family)[0] in study.TIME_INVARIANT_FAMILIES:
        return _time_invariant_metrics(family, seed, "mmd")
    base = 1.0 + 0.1 * seed + 0.01 * _family_index(family)
    out = {"asym": 0.0 if family in study.ENERGY_FAMILIES else 1e-3 * base, "nasym": 0.01,
           "asym_per_level": [1e-3, 2e-3], "nasym_per_level": [0.01, 0.02],
           "t_levels": [0.001, 1.0], "nll_nats": 2.0 * base, "nll_true_nats": 1.4,
           "nll_gap_nats": 2.0 * base - 1.4, "fisher": base, "fisher_per_level": [3.0, 1.0],
           "sample_nfe": 11.0, "mmd": 0.01 * base, "swd": 0.1 * base}
    if family in study.ENERGY_FAMILIES:
        out.update(ode_log_z=0.5, energy_ode_spread_nats=0.2)
    if family == "energy":
        out.update(ais_normalizable=True, energy_tail_rising_fraction=0.0, ais_log_z=1.0,
                   ais_ess=100.0, ais_nll_nats=2.1)
    elif family in study.ENERGY_FAMILIES:  # an energy bounded along rays: AIS skipped
        out.update(ais_normalizable=False, energy_tail_rising_fraction=1.0)
    return out


def _image_metrics(family: str, seed: int) -> dict:
    if plan.parse_variant(family)[0] in study.TIME_INVARIANT_FAMILIES:
        return dict(_time_invariant_metrics(family, seed, "fd"), is_std=0.1, precision=0.5,
                    recall=0.4, classifier_accuracy=0.9, **{"is": 2.0})
    base = 1.0 + 0.1 * seed + 0.01 * _family_index(family)
    return {"asym": 1e-3 * base, "nasym": 0.01, "nasym_per_level": [0.01, 0.02],
            "t_levels": [0.001, 1.0], "nll_bpd": 3.0 * base, "nll_bpd_stderr": 0.1,
            "sample_nfe": 6.0, "fd": 5.0 * base, "is": 2.0, "is_std": 0.1,
            "precision": 0.5, "recall": 0.4 * base, "classifier_accuracy": 0.9}


class Fakes:
    """Stand-ins for train_and_evaluate / evaluate that count calls and write the files a
    run leaves (final checkpoint directory, eval JSON)."""

    def __init__(self, metrics=_toy_metrics):
        self.calls = collections.Counter()
        self.fail: set[str] = set()
        self.stop_at: int | None = None
        self.metrics = metrics

    def train(self, config, workdir):
        name = study.run_name(config.family, config.seed)
        self.calls["train", name] += 1
        if name in self.fail:
            raise RuntimeError(f"loss exploded in {name}")
        step = config.training.n_iters if self.stop_at is None else self.stop_at
        os.makedirs(os.path.join(workdir, "checkpoints", str(step)), exist_ok=True)
        return types.SimpleNamespace(step=step)

    def evaluate(self, config, workdir):
        self.calls["evaluate", study.run_name(config.family, config.seed)] += 1
        results = dict(self.metrics(config.family, config.seed), step=config.training.n_iters)
        evaluate.write_json_atomic(evaluate.eval_path(workdir, config.training.n_iters), results)
        return results

    def evaluate_sampler(self, config, workdir, method):
        self.calls["sampler", study.run_name(config.family, config.seed)] += 1
        return {"sample_nfe": 21.0, "sample_acceptance": 0.6, "mmd": 0.02, "swd": 0.2,
                "fd": 4.0, "is": 2.1, "is_std": 0.1, "precision": 0.6, "recall": 0.5}


def _linear_fields(config, study_dir, records):
    """Score grids of linear fields: a rotation for score models, a gradient for energies."""
    import jax.numpy as jnp

    fields = {}
    for family in config.study.families:
        a = jnp.eye(2) if family in study.ENERGY_FAMILIES else jnp.asarray([[0., -1.], [1., 0.]])
        fields[study.family_info(family, True).label] = evaluate.score_field_grid(
            lambda p, x, t, key=None: x @ p.T, a, config.study.field_times, 2.0, 5)
    return fields


@pytest.fixture
def fakes(monkeypatch):
    fake = Fakes()
    monkeypatch.setattr(train, "train_and_evaluate", fake.train)
    monkeypatch.setattr(evaluate, "evaluate", fake.evaluate)
    monkeypatch.setattr(evaluate, "evaluate_sampler", fake.evaluate_sampler)
    monkeypatch.setattr(report_lib, "score_fields", _linear_fields)
    return fake


def _toy_study_config(seeds=(0, 1)):
    config = study.get_config("toy")
    config.study.seeds = seeds
    config.study.compilation_cache = False
    return config


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


# ----------------------------------------------------------------------------------------
# Run configs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["toy", "digits"])
def test_run_configs_differ_only_in_the_family(scale, tmp_path):
    config = study.get_config(scale)
    flat = {}
    for family in study.STUDY_FAMILIES:
        run = study.run_config(config, family, 3, str(tmp_path))
        settings.validate(run)
        flat[family] = dict(plan._leaves(run))
        assert run.seed == 3 and run.eval.classifier_dir == str(tmp_path / "classifier")
    differing = {p for p in flat["score"] if len({str(f[p]) for f in flat.values()}) > 1}
    assert differing <= set(study.FAMILY_FIELDS)
    assert flat["qc"]["training.qc_weight"] == config.study.qc_lambda > 0
    assert flat["score"]["training.qc_weight"] == 0
    resnet = flat["resnet_energy"]["model.name"]
    assert resnet == ("mlp" if scale == "toy" else "resnet_energy")
    assert study.family_info("resnet_energy", scale == "toy").label == (
        "C-MLP" if scale == "toy" else "C-ResNet")


@pytest.mark.parametrize("scale", ["toy", "digits", "cifar"])
def test_study_config_files(scale, tmp_path):
    """configs/study_<scale>.py is study.get_config(scale) and validates for every family."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", f"{REPO}/configs/study_{scale}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.to_dict() == study.get_config(scale).to_dict()
    extra = study.TIME_INVARIANT_FAMILIES if scale == "digits" else ()  # issue #26's rows
    assert tuple(config.study.families) == study.STUDY_FAMILIES + extra
    assert len(config.study.seeds) >= 2
    study.validate_study(settings.from_config(config), str(tmp_path))


def test_shared_overrides_reach_every_run(tmp_path):
    config = study.get_config("digits")
    config.training.n_iters, config.optim.lr, config.sampling.num_steps = 30, 3e-4, 7
    for family in study.STUDY_FAMILIES:
        run = study.run_config(config, family, 0, str(tmp_path))
        assert (run.training.n_iters, run.optim.lr, run.sampling.num_steps) == (30, 3e-4, 7)
        assert run.model.ch == config.model.ch and run.training.objective == "dsm"


def test_invalid_study_configs_are_one_sentence(tmp_path):
    config = study.get_config("toy")
    config.sampling.method = "mala"
    with pytest.raises(ConfigError, match="study.extra_sampler='mala'"):
        study.validate_study(settings.from_config(config), str(tmp_path))
    config = study.get_config("toy")
    config.study.families = ("score", "drl")
    with pytest.raises(ConfigError, match="study.families"):
        study.validate_study(settings.from_config(config), str(tmp_path))
    config = study.get_config("toy")
    config.study.seeds = ()
    with pytest.raises(ConfigError, match="study.seeds"):
        study.validate_study(settings.from_config(config), str(tmp_path))
    config = study.get_config("toy")
    config.training.qc_weight = 0.1
    with pytest.raises(ConfigError, match="training.qc_weight is set by each "
                       "family in a study and cannot be overridden; .* study.qc_lambda"):
        study.validate_study(settings.from_config(config), str(tmp_path))


def test_missing_inception_weights_stop_the_study_before_any_run(tmp_path, fakes):
    config = _toy_study_config()
    config.eval.inception_weights = str(tmp_path / "inception_fid.npz")
    with pytest.raises(FileNotFoundError) as error:
        study.run_study(settings.from_config(config), str(tmp_path / "study"))
    assert str(error.value) == inception.missing_weights_message(config.eval.inception_weights)
    assert not fakes.calls and not os.path.exists(tmp_path / "study")


# ----------------------------------------------------------------------------------------
# Resume, failures, foreign directories (fake training and evaluation)
# ----------------------------------------------------------------------------------------


def test_fake_toy_study_report_and_no_recomputation(tmp_path, fakes):
    config, workdir = _toy_study_config(), str(tmp_path / "study")
    path = study.run_study(settings.from_config(config), workdir)
    report = _read(path)
    assert_tables_filled(report)
    table1 = section(report, "Table 1")
    for label in ("| U |", "| C |", "| C-MLP |", "| QC |", "| C + mala (acc. 0.60) |",
                  "| C-MLP + mala (acc. 0.60) |"):
        assert label in table1
    assert "±" in table1 and "MMD²" in table1 and "true NLL" in table1
    assert "| C + mala" not in section(report, "Likelihood and conservativeness")
    energies = section(report, "Energies only")
    assert "ODE-implied log Z" in energies and "| C-MLP |" in energies
    assert "| U |" not in energies and "not that AIS is unconverged" in energies
    assert "ESS (chains)" in energies and "rays not falling" in energies
    c_mlp = next(line for line in energies.splitlines() if line.startswith("| C-MLP |"))
    c_row = next(line for line in energies.splitlines() if line.startswith("| C |"))
    assert c_mlp.count("skipped") == 3 and "skipped" not in c_row  # log Z, ESS, NLL
    assert "score_fields.png" in report and os.path.exists(os.path.join(workdir, "figures",
                                                                        "score_fields.png"))
    assert "--config.study.seeds=(0,1)" in section(report, "Commands")
    runs = [study.run_name(f, s) for f in study.STUDY_FAMILIES for s in (0, 1)]
    assert fakes.calls == collections.Counter(
        {**{("train", r): 1 for r in runs}, **{("evaluate", r): 1 for r in runs},
         **{("sampler", r): 1 for r in runs if r.startswith(study.ENERGY_FAMILIES)}})
    for run in runs:
        done = json.loads(_read(os.path.join(workdir, "runs", run, plan.DONE_FILE)))
        assert done["step"] == config.training.n_iters and done["num_params"] > 0

    before = mtimes(os.path.join(workdir, "runs"))
    fakes.calls.clear()
    study.run_study(settings.from_config(config), workdir)
    assert not fakes.calls  # finished runs are never recomputed ...
    assert mtimes(os.path.join(workdir, "runs")) == before  # ... nor rewritten
    assert len(_read(os.path.join(workdir, "commands.jsonl")).splitlines()) == 2


def test_crashed_run_is_reported_and_retried_alone(tmp_path, fakes, caplog):
    config, workdir = _toy_study_config(), str(tmp_path / "study")
    fakes.fail.add("qc_seed1")
    with pytest.raises(study.StudyError, match=r"1 of 8 study runs failed \(qc_seed1"):
        study.run_study(settings.from_config(config), workdir)
    run_dir = os.path.join(workdir, "runs", "qc_seed1")
    sentence = (f"study run qc_seed1 failed (RuntimeError: loss exploded in qc_seed1); its "
                f"directory is {run_dir} and the traceback is in {run_dir}/error.log")
    assert sentence in caplog.text
    assert "loss exploded" in _read(os.path.join(run_dir, "error.log"))
    report = _read(os.path.join(workdir, "REPORT.md"))
    assert sentence in section(report, "Failed runs")
    assert "| QC (1 of 2 seeds) |" in section(report, "Table 1")
    assert sum(fakes.calls[k] for k in fakes.calls if k[0] == "evaluate") == 7  # others went on

    before = mtimes(os.path.join(workdir, "runs"))
    fakes.fail.clear()
    fakes.calls.clear()
    study.run_study(settings.from_config(config), workdir)
    assert fakes.calls == collections.Counter({("train", "qc_seed1"): 1,
                                               ("evaluate", "qc_seed1"): 1})
    after = mtimes(os.path.join(workdir, "runs"))
    assert {p: t for p, t in after.items() if p in before and "qc_seed1" not in p} == {
        p: t for p, t in before.items() if "qc_seed1" not in p}
    assert "Failed runs" not in _read(os.path.join(workdir, "REPORT.md"))


def test_different_config_in_the_study_dir_is_refused(tmp_path, fakes):
    config, workdir = _toy_study_config(seeds=(0,)), str(tmp_path / "study")
    study.run_study(settings.from_config(config), workdir)
    for path, value in [("model.hidden", (64, 64)), ("sampling.num_steps", 9),
                        ("training.n_iters", 10), ("study.extra_sampler", "")]:
        other = _toy_study_config(seeds=(0,))
        plan._set(other, path, value)
        with pytest.raises(ConfigError) as error:
            study.run_study(settings.from_config(other), workdir)
        message = str(error.value)
        assert message.startswith(f"study directory {workdir} was created from a different "
                                  f"study config ({path}: ") and "\n" not in message
        assert message.endswith("use a new --workdir, or the same config to resume it")
    fakes.calls.clear()
    more_seeds = settings.from_config(_toy_study_config(seeds=(0, 1)))  # runs are added
    study.run_study(more_seeds, workdir)
    assert {k[1] for k in fakes.calls} == {study.run_name(f, 1) for f in study.STUDY_FAMILIES}


def test_single_run_workdir_is_not_a_study_dir(tmp_path, fakes):
    workdir_lib.save(settings.of_family("toy", "score"), str(tmp_path))
    with pytest.raises(ConfigError, match="workdir of a single run"):
        study.run_study(settings.from_config(_toy_study_config()), str(tmp_path))


def test_interrupted_run_stops_the_study(tmp_path, fakes):
    fakes.stop_at = 7
    with pytest.raises(study.StudyError, match="score_seed0 stopped at step 7 of 4000"):
        study.run_study(settings.from_config(_toy_study_config()), str(tmp_path / "study"))
    assert not any(k[0] == "evaluate" for k in fakes.calls)


def test_final_checkpoint_without_eval_is_evaluated_not_retrained(tmp_path, fakes):
    config, workdir = _toy_study_config(seeds=(0,)), str(tmp_path / "study")
    run_dir = os.path.join(workdir, "runs", "energy_seed0")
    os.makedirs(os.path.join(run_dir, "checkpoints", str(config.training.n_iters)))
    study.run_study(settings.from_config(config), workdir)
    assert ("train", "energy_seed0") not in fakes.calls
    assert fakes.calls["evaluate", "energy_seed0"] == 1


def test_reevaluate_keeps_training_and_moves_the_old_evaluation_aside(tmp_path, fakes,
                                                                      monkeypatch):
    config, workdir = _toy_study_config(seeds=(0,)), str(tmp_path / "study")
    monkeypatch.setattr(results_lib, "commit", lambda: ("a" * 40, False))
    study.run_study(settings.from_config(config), workdir)
    run_dir = os.path.join(workdir, "runs", "energy_seed0")
    first = _read(os.path.join(run_dir, plan.DONE_FILE))
    assert json.loads(first)["eval_commit"] == "a" * 40
    runs = [study.run_name(f, 0) for f in study.STUDY_FAMILIES]

    config.study.reevaluate = True
    fakes.calls.clear()
    study.run_study(settings.from_config(config), workdir)  # same commit: nothing to do
    assert not fakes.calls

    monkeypatch.setattr(results_lib, "commit", lambda: ("b" * 40, False))
    study.run_study(settings.from_config(config), workdir)
    assert fakes.calls == collections.Counter(
        {**{("evaluate", r): 1 for r in runs},
         **{("sampler", r): 1 for r in runs if r.startswith(study.ENERGY_FAMILIES)}})
    assert json.loads(_read(os.path.join(run_dir, plan.DONE_FILE)))["eval_commit"] == "b" * 40
    (previous,) = os.listdir(os.path.join(run_dir, "eval", "previous"))
    assert previous.startswith("a" * 40 + "_")
    kept = os.path.join(run_dir, "eval", "previous", previous)
    assert _read(os.path.join(kept, plan.DONE_FILE)) == first
    step_file = os.path.basename(evaluate.eval_path(run_dir, config.training.n_iters))
    assert sorted(os.listdir(kept)) == sorted([plan.DONE_FILE, step_file])

    fakes.calls.clear()  # off a clean checkout every run is evaluated again
    monkeypatch.setattr(results_lib, "commit", lambda: ("b" * 40, True))
    study.run_study(settings.from_config(config), workdir)
    assert sum(n for (kind, _), n in fakes.calls.items() if kind == "evaluate") == len(runs)
    assert not any(kind == "train" for kind, _ in fakes.calls)


def test_fake_digits_study_image_columns(tmp_path, monkeypatch):
    fake = Fakes(_image_metrics)
    monkeypatch.setattr(train, "train_and_evaluate", fake.train)
    monkeypatch.setattr(evaluate, "evaluate", fake.evaluate)
    monkeypatch.setattr(evaluate, "evaluate_sampler", fake.evaluate_sampler)
    pixels = lambda x: np.asarray(x).reshape(len(x), -1)  # features: 16 pixels, logits: 10
    clf = types.SimpleNamespace(accuracy=0.93,
                                apply=lambda x: (pixels(x)[:, 20:36], pixels(x)[:, 20:30]))
    monkeypatch.setattr(evaluate, "offline_classifier", lambda config, workdir: clf)
    config = study.get_config("digits")
    config.study.seeds, config.study.compilation_cache = (0, 1), False
    config.study.floor_draws = 5
    config.study.workers = 1  # the fakes live in this process
    began = time.monotonic()
    report = _read(study.run_study(settings.from_config(config), str(tmp_path)))
    took = time.monotonic() - began
    assert_tables_filled(report)
    header = table_cells(section(report, "Table 1"))[0]
    assert header == ["model", "conservative?", "short-cuts to inputs?", "FD ↓", "IS ↑",
                      "precision ↑", "recall ↑", "NLL bits/dim ↓", "Asym ↓", "NAsym ↓", "NFE",
                      "train steps/s ↑", "params"]
    kinds = {row[0]: row[1:3] for row in table_cells(section(report, "Table 1"))[1:]}
    assert kinds["U"] == ["no", "yes"] and kinds["C"] == ["yes", "yes"]
    assert kinds["C-ResNet"] == ["yes", "no"]
    for qc in ("QC λ=0.1", "QC λ=1"):  # the digits default: two QC weights (the sweep's)
        assert kinds[qc] == ["no (regularized)", "yes"]
    assert "test accuracy 0.930" in report and "Inception network: skipped" in report
    assert table_cells(section(report, "Sample quality"))[0][1:] == [
        "FD ↓", "IS ↑", "precision ↑", "recall ↑", "NFE"]
    assert "C-ResNet ch=40" in kinds  # the parameter-matched C-ResNet (study default)
    _check_power_section_and_record(report, str(tmp_path), "study_digits", took)


def _check_power_section_and_record(report: str, workdir: str, name: str,
                                     max_wall_s: float) -> None:
    """REPORT.md prints floors, paired intervals and verdicts; the same values are in the
    record results/<name>.json (EBM_RESULTS_DIR in tests) and its copy in the study dir."""
    from ebm_vs_score import results
    from ebm_vs_score.study import verdicts

    power = section(report, "Power")
    assert "real vs real (n = 297)" in power and "95% of draws" in power
    claims = [row for row in table_cells(power) if row[-1].strip("*") in verdicts.VERDICTS]
    assert claims and all(row[5] == "2" or row[-1] == f"**{verdicts.NOT_TESTABLE}**"
                          for row in claims)  # two seeds paired
    paths = [os.path.join(results.results_dir(), name + ".json"),
             os.path.join(workdir, name + ".json")]
    for path in paths:
        record = results.load(os.path.relpath(path, "/"), "/")
        assert record["command"].startswith("python -m ebm_vs_score.main --mode=study")
        assert record["load"]["end"] and record["machine"]["cpu_model"]
        values = record["values"]
        assert set(values["floors"]) == {"fd", "is", "precision", "recall"}
        assert values["floors"]["fd"]["n"] == 297 and values["floors"]["fd"]["draws"] == 5
        assert values["runs"]["seeds"] == [0, 1]
        assert 0 < values["runs"]["invocation_wall_s"] <= max_wall_s
        assert values["variants"]["score"]["metrics"]["fd"]["n"] == 2
    _check_time_invariant_claims(values)
    _check_report_copy(report, results.results_dir(), name)
    assert verdicts.claims_table(values)[2:] == [
        row for row in section(report, "Power").splitlines()
        if row.startswith("| ") and any(f"**{v}**" in row for v in verdicts.VERDICTS)]


def _check_report_copy(report: str, directory: str, name: str) -> None:
    """The record holds the whole report, results/<name>_report.md: REPORT.md with its
    figure links pointing at the copied figures in results/<name>/, every one present."""
    copy = _read(os.path.join(directory, f"{name}_report.md"))
    assert copy == report.replace("](figures/", f"]({name}/")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", copy)
    assert images and all(p.startswith(f"{name}/") for p in images)
    assert all(os.path.isfile(os.path.join(directory, p)) for p in images)


def test_the_report_copy_takes_only_the_figures_it_links(tmp_path):
    """A study directory keeps the figures of variants an earlier invocation drew (other
    study.families); the record's copy holds the report's figures and no others."""
    from ebm_vs_score.study import run as run_lib

    study_dir, results_dir = tmp_path / "study", tmp_path / "results"
    (study_dir / "figures").mkdir(parents=True)
    results_dir.mkdir()
    for figure in ("samples_score.png", "samples_energy.png"):
        (study_dir / "figures" / figure).write_bytes(b"png " + figure.encode())
    (study_dir / "REPORT.md").write_text("# R\n\n![U](figures/samples_score.png)\n")
    path = run_lib.copy_report(str(study_dir), "study_x", str(results_dir))
    assert _read(path) == "# R\n\n![U](study_x/samples_score.png)\n"
    assert os.listdir(results_dir / "study_x") == ["samples_score.png"]
    assert (results_dir / "study_x" / "samples_score.png").read_bytes() == b"png samples_score.png"


def _check_time_invariant_claims(values: dict) -> None:
    """The record carries Equilibrium Matching's claims on the fake runs (two seeds),
    each against its own baseline: EqM-E vs EqM, the energy's AUROC vs 0.5, adaptive NFE
    vs the fixed 200 steps (FD vs nag_200 as its condition), NAG-GD vs GD at 200 steps."""
    from ebm_vs_score.study import verdicts

    claims = {(c["key"], c["variant"]): c for c in values["claims"]}
    for form in ("dot", "l2"):
        c = claims["eqm_explicit_worse", f"eqm_energy_{form}"]
        assert c["baseline"] == "eqm" and c["n"] == 2
        # The fake FDs grow by 0.01 per family index: EqM-E 6 * 0.01 above EqM each seed.
        np.testing.assert_allclose(c["value"], 0.06, rtol=1e-9)
        c = claims["eqm_ood_energy_noise", f"eqm_energy_{form}"]
        np.testing.assert_allclose(c["value"], 0.955 - 0.5, rtol=1e-9)
        assert c["reference"] == 0.5 and c["verdict"] in verdicts.VERDICTS
    for family, variant in (("eqm", "eqm"), ("eqm_energy", "eqm_energy_dot")):
        c = claims[f"{family}_adaptive_nfe_nag_tol2", variant]
        np.testing.assert_allclose(c["value"], 60.5 - 200, rtol=1e-9)  # NFE 60, 61 vs 200
        assert c["guard"]["baseline_metric"] == "nfe_sweep.nag_tol2.fixed.fd"
        assert c["guard"]["n"] == 2 and c["verdict"] in verdicts.VERDICTS
        assert claims[f"{family}_nag_beats_gd_200", variant]["verdict"] == verdicts.REPRODUCED


def test_steady_steps_per_sec_from_metrics_records():
    """Rate between the first and last timed train records after the start step: the
    interval before the first record (start-up, compilation) is left out."""
    records = [{"split": "train", "step": 10, "wall_time": 100.0},
               {"split": "eval", "step": 10},
               {"split": "train", "step": 20, "wall_time": 102.0},
               {"split": "train", "step": 40, "wall_time": 106.0}]
    assert study.steady_steps_per_sec(records, 0) == pytest.approx(30 / 6.0)
    assert study.steady_steps_per_sec(records, 20) is None  # one record after step 20
    assert study.steady_steps_per_sec([{"split": "train", "step": 5}], 0) is None


# ----------------------------------------------------------------------------------------
# The QC lambda sweep
# ----------------------------------------------------------------------------------------


def test_qc_sweep_config_file_and_variants(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cfg", f"{REPO}/configs/study_digits_qc_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert list(config.study.qc_lambda_sweep) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert study.variants(settings.from_config(config)) == [
        "score", "qc_lam1e-04", "qc_lam1e-03", "qc_lam1e-02", "qc_lam1e-01", "qc_lam1e+00"]
    study.validate_study(settings.from_config(config), str(tmp_path))
    for variant, weight in [("qc_lam1e-02", 1e-2), ("score", 0.0)]:
        assert study.run_config(config, variant, 0, str(tmp_path)).training.qc_weight == weight
    config.study.qc_lambda_sweep = (1e-3, 0.0)
    with pytest.raises(ConfigError, match="study.qc_lambda_sweep"):
        study.validate_study(settings.from_config(config), str(tmp_path))


def test_the_default_sweep_is_ignored_without_qc_a_chosen_one_is_refused(tmp_path):
    """Digits' default sweep (0.1, 1.0) needs no clearing when 'qc' is not chosen; a sweep
    the user set without 'qc' is still an error."""
    config = study.get_config("digits")
    config.study.families = ("score", "energy")
    s = settings.from_config(config)
    study.validate_study(s, str(tmp_path))
    assert study.variants(s) == ["score", "energy"]
    config.study.qc_lambda_sweep = (0.5,)
    with pytest.raises(ConfigError, match="with 'qc' in study.families"):
        study.validate_study(settings.from_config(config), str(tmp_path))


def test_fake_qc_sweep_report_and_added_lambda(tmp_path, fakes, monkeypatch):
    weights = []

    def train_recording(config, workdir):
        weights.append(config.loss.qc_weight)
        return fakes.train(config, workdir)

    monkeypatch.setattr(train, "train_and_evaluate", train_recording)
    config = _toy_study_config(seeds=(0,))
    config.study.families, config.study.qc_lambda_sweep = ("score", "qc"), (1e-3, 1e-1)
    workdir = str(tmp_path / "study")
    report = _read(study.run_study(settings.from_config(config), workdir))
    assert weights == [0.0, 1e-3, 1e-1]
    sweep = table_cells(section(report, "QC λ sweep"))
    assert sweep[0] == ["model", "NAsym ↓", "MMD² ↓", "NLL nats ↓", "train steps/s ↑"]
    assert [row[0] for row in sweep[1:]] == ["U", "QC λ=0.001", "QC λ=0.1"]
    assert os.path.exists(os.path.join(workdir, "figures", "qc_sweep.png"))
    assert_tables_filled(report)

    config.study.qc_lambda_sweep = (1e-3, 1e-1, 1.0)  # a lambda more: one run more, none redone
    weights.clear()
    report = _read(study.run_study(settings.from_config(config), workdir))
    assert weights == [1.0]
    assert [row[0] for row in table_cells(section(report, "QC λ sweep"))[1:]] == [
        "U", "QC λ=0.001", "QC λ=0.1", "QC λ=1"]


@pytest.mark.slow
def test_toy_qc_sweep_end_to_end(tmp_path):
    """A real (tiny) sweep: each lambda reaches its run, every cell is filled, and the
    steps/s come from the train loop's timed records in metrics.jsonl."""
    config = _tiny_toy(_toy_study_config(seeds=(0,)))
    config.study.families, config.study.qc_lambda_sweep = ("qc",), (1e-3, 1.0)
    config.training.log_every = 2
    config.study.extra_sampler = ""
    workdir = str(tmp_path / "study")
    report = _read(study.run_study(settings.from_config(config), workdir))
    assert_tables_filled(report)
    rows = table_cells(section(report, "QC λ sweep"))[1:]
    assert [row[0] for row in rows] == ["QC λ=0.001", "QC λ=1"]
    for variant, weight in [("qc_lam1e-03", 1e-3), ("qc_lam1e+00", 1.0)]:
        run_dir = os.path.join(workdir, "runs", f"{variant}_seed0")
        saved = json.loads(_read(os.path.join(run_dir, "config.json")))
        assert saved["training"]["qc_weight"] == weight
        records = [json.loads(line) for line in _read(
            os.path.join(run_dir, "metrics.jsonl")).splitlines()]
        assert all("wall_time" in r for r in records if r["split"] == "train")
        timing = [r for r in records if r["split"] == "timing"]
        assert timing and timing[0]["steps_per_sec"] > 0


# ----------------------------------------------------------------------------------------
# Real studies
# ----------------------------------------------------------------------------------------


def _tiny_toy(config):
    config.model.hidden = (16, 16)
    config.training.n_iters = 8
    config.training.batch_size = 32
    config.training.log_every = 4
    config.sampling.num_steps = 4
    for name, value in dict(num_examples=64, num_samples=64, batch_size=64, asym_levels=2,
                            nll_rtol=1e-3, nll_atol=1e-3).items():
        config.eval[name] = value
    config.study.field_grid = 5
    config.study.field_times = (0.05, 0.5)
    return config


def test_toy_study_end_to_end_and_resume(tmp_path, monkeypatch):
    """One real (energy) family: every metric, both samplers, the curl-free field; then a
    second invocation recomputes nothing. All four families: the slow test below."""
    config = _tiny_toy(_toy_study_config(seeds=(0,)))
    config.study.families = ("energy",)
    config.eval.ais = False  # AIS is covered by test_evaluate
    workdir = str(tmp_path / "study")
    report = _read(study.run_study(settings.from_config(config), workdir))
    assert_tables_filled(report)
    assert "| C + mala" in section(report, "Table 1")
    for name in ("samples_energy_euler_maruyama.png", "samples_energy_mala.png",
                 "score_fields.png"):
        assert f"figures/{name}" in report and os.path.exists(os.path.join(workdir, "figures",
                                                                           name))
    curl = table_cells(section(report, "Score fields"))[1]
    assert curl[0] == "C" and max(float(v) for v in curl[1:]) < 1e-4  # a gradient field
    # The figures are the evaluation's samples; training drew no grid of its own.
    assert not os.path.exists(os.path.join(workdir, "runs", "energy_seed0", "samples.png"))

    def never(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    before = mtimes(os.path.join(workdir, "runs"))
    monkeypatch.setattr(train, "train_and_evaluate", never)
    monkeypatch.setattr(evaluate, "evaluate", never)
    monkeypatch.setattr(evaluate, "evaluate_sampler", never)
    again = _read(study.run_study(settings.from_config(config), workdir))
    assert mtimes(os.path.join(workdir, "runs")) == before
    assert section(again, "Table 1") == section(report, "Table 1")


@pytest.mark.slow
def test_toy_study_all_families_two_seeds(tmp_path):
    config = _tiny_toy(_toy_study_config(seeds=(0, 1)))
    config.study.compilation_cache = True
    report = _read(study.run_study(settings.from_config(config), str(tmp_path)))
    assert_tables_filled(report)
    rows = {row[0] for row in table_cells(section(report, "Table 1"))[1:]}
    assert {"U", "C", "C-MLP", "QC"} <= rows
    assert "±" in section(report, "Likelihood and conservativeness")
    curl = {row[0]: [float(v) for v in row[1:]]
            for row in table_cells(section(report, "Score fields"))[1:]}
    assert max(curl["C"] + curl["C-MLP"]) < 1e-4 < max(curl["U"])  # energies are curl-free


DIGITS_REDUCED = [
    "--config.training.n_iters=30", "--config.training.log_every=10",
    "--config.training.checkpoint_every=30", "--config.training.sample_every=1000",
    "--config.sampling.num_steps=5", "--config.eval.num_examples=96",
    "--config.eval.num_samples=96", "--config.eval.batch_size=96",
    "--config.eval.asym_levels=2", "--config.eval.asym_probes=1",
    "--config.eval.nll_examples=16", "--config.eval.nll_rtol=1e-2",
    "--config.eval.nll_atol=1e-2", "--config.eval.ais=False",
    "--config.eval.classifier_steps=50", "--config.study.seeds=(0,1)",
    "--config.study.qc_lambda_sweep=()",  # one QC row ('qc'), not the digits default's two
]


def _main(workdir, *args):
    cmd = [sys.executable, "-m", "ebm_vs_score.main", "--mode=study",
           "--config=configs/study_digits.py", f"--workdir={workdir}", *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=5400)


@pytest.mark.slow
def test_digits_study_reduced_end_to_end(tmp_path):
    """configs/study_digits.py, 30 steps, 2 seeds, through the command line."""
    workdir = str(tmp_path / "study")
    start = time.time()
    proc = _main(workdir, *DIGITS_REDUCED)
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"reduced digits study: {elapsed:.0f} s")
    report = _read(os.path.join(workdir, "REPORT.md"))
    assert_tables_filled(report)
    table1 = table_cells(section(report, "Table 1"))
    assert {row[0] for row in table1[1:]} >= {"U", "C", "C-ResNet", "C-ResNet ch=40", "QC"}
    assert all("±" in cell for row in table1[1:] for cell in row[3:5])  # FD, IS over seeds
    assert os.path.exists(os.path.join(workdir, "classifier", "params.msgpack"))
    for family in study.STUDY_FAMILIES:
        assert os.path.exists(os.path.join(workdir, "figures",
                                           f"samples_{family}_euler_maruyama.png"))
    commands = section(report, "Commands")
    assert "--config.study.seeds=(0,1)" in commands and "--mode=study" in commands
    assert re.search(r"steps/s", report)

    before = mtimes(os.path.join(workdir, "runs"))
    other = _main(workdir, *DIGITS_REDUCED[1:], "--config.training.n_iters=31")
    assert other.returncode == 1
    assert other.stderr.strip().splitlines()[-1].startswith(
        f"error: study directory {workdir} was created from a different study config "
        "(training.n_iters: 30 -> 31)")
    assert mtimes(os.path.join(workdir, "runs")) == before
    reduced = plan.get_config("digits")
    reduced.study.qc_lambda_sweep = ()  # as DIGITS_REDUCED: one QC row
    variants = plan.variants(settings.from_config(reduced))
    assert len(variants) == 9  # U, C, C-ResNet (2 widths), QC, EqM, EqM-E (2 forms), EM
    assert len(os.listdir(os.path.join(workdir, "runs"))) == 2 * len(variants)  # 2 seeds


def test_samples_panel_labels_every_grid(tmp_path):
    """figures/samples_panel.png: the copied grids in one row, each titled by model and
    sampler; REPORT.md shows it above the single grids."""
    from ebm_vs_score import plotting

    config = study.get_config("digits")
    os.makedirs(tmp_path / "figures")
    grids = []
    for i, (variant, method) in enumerate([("score", "euler_maruyama"), ("energy", "mala")]):
        rel = os.path.join("figures", f"samples_{variant}_{method}.png")
        plotting.save_png(np.full((64, 64, 3), 40 * i, np.uint8), str(tmp_path / rel))
        grids.append((variant, method, rel))
    rel = report_lib._samples_panel(settings.from_config(config), str(tmp_path), grids)
    from PIL import Image

    panel = np.asarray(Image.open(tmp_path / rel))
    assert panel.ndim == 3 and panel.shape[1] > 2 * panel.shape[0] // 2
    lines = report_lib._figure_lines({"samples": grids, "samples_panel": rel},
                                     settings.from_config(config))
    assert lines[2] == f"![samples, every model, labelled]({rel})"


def test_report_only_trains_nothing_and_counts_unfinished_seeds(tmp_path, fakes):
    """study.report_only: REPORT.md from the finished runs; others are 'pending'."""
    config, workdir = _toy_study_config(seeds=(0,)), str(tmp_path / "study")
    study.run_study(settings.from_config(config), workdir)
    fakes.calls.clear()
    config.study.seeds = (0, 1)
    config.study.report_only = True
    study.run_study(settings.from_config(config), workdir)
    assert not fakes.calls
    assert not os.path.exists(os.path.join(workdir, "runs", "score_seed1"))
    report = _read(os.path.join(workdir, "REPORT.md"))
    assert "| U (1 of 2 seeds) |" in section(report, "Table 1")
    assert "| score_seed1 | pending |" in report


def test_parameter_matched_c_resnet_has_about_u_s_parameters(tmp_path):
    """The digits study runs a C-ResNet at U's parameter count (within 10%) next to the
    shared-width one; its config differs from C-ResNet's only in model.ch."""
    from ebm_vs_score.study import run as run_lib

    config = study.get_config("digits")
    assert plan.variants(settings.from_config(config))[:6] == ["score", "energy", "resnet_energy",
                                         "resnet_energy_ch40", "qc_lam1e-01", "qc_lam1e+00"]
    wide = study.run_config(config, "resnet_energy_ch40", 0, str(tmp_path))
    narrow = study.run_config(config, "resnet_energy", 0, str(tmp_path))
    assert plan.overrides(wide, narrow) == ["--config.model.ch=40"]
    u = run_lib.num_params(settings.from_config(study.run_config(config, "score", 0,
                                                                 str(tmp_path))))
    assert abs(run_lib.num_params(settings.from_config(wide)) / u - 1) < 0.1
    assert run_lib.num_params(settings.from_config(narrow)) < u / 4
    assert report_lib.variant_label("resnet_energy_ch40", False) == "C-ResNet ch=40"
    config.study.resnet_energy_widths = (36,)  # not divisible by model.num_groups = 8
    with pytest.raises(ConfigError, match="study.resnet_energy_widths"):
        study.validate_study(settings.from_config(config), str(tmp_path))


# ----------------------------------------------------------------------------------------
# Old field names: study.qc_weight -> study.qc_lambda, study.qc_weights -> qc_lambda_sweep
# ----------------------------------------------------------------------------------------


def test_old_qc_field_names_mean_the_new_ones(caplog):
    config = _toy_study_config(seeds=(0,))
    config.study.qc_weight, config.study.qc_weights = 0.5, (1e-3, 1e-1)
    with caplog.at_level("WARNING"):
        s = settings.from_config(config)
    assert (s.study.qc_lambda, s.study.qc_lambda_sweep) == (0.5, (1e-3, 1e-1))
    assert "qc_lam1e-03" in study.variants(s) and "qc" not in study.variants(s)
    assert s.as_dict()["study"]["qc_weights"] is None  # the settings hold the new names only
    config.study.qc_weights = ()  # an old sweep of none: the QC run takes the old lambda
    s = settings.from_config(config)
    run = study.run_settings(s, "qc", 0, "/tmp/study")
    assert run.loss.qc_weight == 0.5


def _as_written_before_the_rename(s) -> dict:
    """The study_config.json the code before the rename wrote for the same study: the study
    section under the old names, without the new ones."""
    saved = s.as_dict()
    section = saved["study"]
    section["qc_weight"] = section.pop("qc_lambda")
    section["qc_weights"] = section.pop("qc_lambda_sweep")
    return saved


@pytest.mark.parametrize("scale", ["toy", "digits"])
def test_a_study_directory_saved_with_the_old_names_resumes(scale, tmp_path):
    """A study started before the rename (its study_config.json holds study.qc_weight and
    study.qc_weights) is the same study to the new code; a changed lambda is still refused."""
    s = settings.from_config(study.get_config(scale))
    old = _as_written_before_the_rename(s)
    assert "qc_lambda" not in json.dumps(old)
    (tmp_path / "study_config.json").write_text(json.dumps(old))
    assert study.study_differences(old, s) == []
    study.check_study_dir(s, str(tmp_path))  # not refused as a different study
    old["study"]["qc_weight"] = 2 * old["study"]["qc_weight"]
    (tmp_path / "study_config.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="study.qc_lambda"):
        study.check_study_dir(s, str(tmp_path))


def test_unconverged_ais_values_are_not_shown_in_either_table():
    """An AIS of a few chains' ESS, or one whose NLL is below 0 bits/dim (the digits
    C-ResNet ch40's -4.6 at ESS 1 of 256), shows 'unconverged' with the ESS in place of its
    log Z and NLL; its ESS column and a converged run's values stay."""
    from ebm_vs_score.evaluate import nll
    from ebm_vs_score.study import report, report_energy, report_time_invariant

    good = {"ais_ess": 86.0, "ais_chains": 256, "ais_log_z": 84.2, "ais_nll_bpd": 3.97,
            "nll_bpd": 2.4}
    few, impossible = dict(good, ais_ess=1.06), dict(good, ais_nll_bpd=-4.61)
    assert nll.ais_converged(good) and nll.ais_converged({"nll_bpd": 2.3})  # no AIS ran
    assert not nll.ais_converged(few) and not nll.ais_converged(impossible)
    columns = [report.Column(t, k) for t, k in report_energy.columns(toy=False)
               if k in good]
    rows = [report.Row("C-ResNet", "resnet_energy", [good, few], 0),
            report.Row("C-ResNet (ch40)", "resnet_energy", [impossible, good], 0),
            report.Row("EM", "energy_matching", [good, good], 0)]
    table = report.metric_table(rows, columns, toy=False,
                                override=report_energy.unconverged_cell)
    cells = {row[0]: row[1:] for row in table_cells("\n".join(table))}
    assert cells["C-ResNet"][:3] == ["unconverged (ESS 1.1 of 256)", "43.53 ± 60",
                                     "unconverged (ESS 1.1 of 256)"]  # log Z, ESS, NLL
    assert cells["C-ResNet (ch40)"][0] == "unconverged (ESS 86 of 256)"
    assert cells["EM"][:3] == ["84.2", "86", "3.97"]
    assert report_time_invariant._cell([good, few], "ais_nll_bpd").startswith("unconverged")
    assert report_time_invariant._cell([good, good], "ais_nll_bpd") == "3.97"
    bounded = [dict(good, ais_nll_bpd_lower99=3.87), dict(few, ais_nll_bpd_lower99=8.75)]
    assert report_energy.unconverged_cell(bounded, "ais_nll_bpd") == (
        "≥ 3.87 (99%), unconverged (ESS 1.1 of 256)")
    assert report_energy.unconverged_cell(bounded, "ais_log_z").startswith("unconverged")
