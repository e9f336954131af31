r"""``--mode=energy_vs_ode``: is a trained energy's own density exp(-E(x, eps)) / Z the
probability-flow ODE's density?

    python -m ebm_vs_score.main --mode=energy_vs_ode --config=configs/study_digits.py \
        --workdir=runs/study_digits
    python -m ebm_vs_score.main --mode=energy_vs_ode --config=configs/digits_energy.py \
        --workdir=runs/digits_energy

With a study config, every finished energy run of the study (:data:`ENERGY_FAMILIES`
variants, each seed) in ``WORKDIR/runs/``, with the run's config from the study planner;
with a single-run config, the run in ``WORKDIR``. For each it recomputes the ODE likelihood
exactly as its eval did (same points, probes and keys, so ``nll_bpd`` matches the eval
JSON) and adds :func:`ebm_vs_score.evaluate.nll.energy_ode_agreement`: the log Z the ODE
implies, -mean(log p_ODE + E(x, eps)), and the spread of log p_ODE + E over the points;
next to the AIS log Z of the eval JSON. AIS's Z-hat is unbiased, so an AIS log Z far above
the ODE-implied one cannot be AIS error: the two are different densities.

Writes ``WORKDIR/energy_vs_ode.json`` (one row per run), and adds the agreement keys to
each run's eval JSON (and a study run's ``DONE.json``, which the study's REPORT.md reads:
``--config.study.report_only=True`` then puts them in the report) where the recomputed ODE
NLL equals the saved one; where it does not (other code or config), the eval JSON is left
as it is and a warning says so.
"""

from __future__ import annotations

import glob
import json
import os

import jax
from absl import logging

from ebm_vs_score import settings
from ebm_vs_score.errors import CheckpointError
from ebm_vs_score.evaluate import files, runner

AGREEMENT_KEYS = ("ode_log_z", "ode_log_z_stderr", "energy_ode_spread_nats")
AIS_KEYS = ("ais_normalizable", "energy_tail_rising_fraction", "ais_log_z",
            "ais_log_z_stderr", "ais_ess", "ais_nll_bpd")
DONE_FILE = "DONE.json"  # a study run's record (ebm_vs_score.study.plan.DONE_FILE)
OUTPUT_FILE = "energy_vs_ode.json"


def eval_json_path(workdir: str) -> str | None:
    """The newest model-metrics eval JSON of ``workdir`` (not a sampler's), or None."""
    paths = sorted(p for p in glob.glob(os.path.join(workdir, "eval", "step_*.json"))
                   if os.path.basename(p).count("_") == 1)
    return paths[-1] if paths else None


def _read_json(path: str | None) -> dict:
    if path is None:
        return {}
    with open(path) as f:
        return json.load(f)


def add_to_eval_json(workdir: str, row: dict) -> bool:
    """Adds the agreement keys to the eval JSON (and DONE.json) if this run's ODE NLL is the
    saved one; returns whether it did."""
    path = eval_json_path(workdir)
    saved = _read_json(path)
    if "nll_nats" not in saved:
        return False
    if abs(row["nll_nats"] - saved["nll_nats"]) > 1e-4 * max(1.0, abs(saved["nll_nats"])):
        logging.warning("%s: recomputed ODE NLL %.6f nats != saved %.6f; not a re-run of its "
                        "eval (other code or config?), its eval JSON is left as it is",
                        workdir, row["nll_nats"], saved["nll_nats"])
        return False
    values = {k: row[k] for k in AGREEMENT_KEYS}
    files.write_json_atomic(path, saved | values)
    done_path = os.path.join(workdir, DONE_FILE)
    if os.path.exists(done_path):
        done = _read_json(done_path)
        done["results"].update(values)
        files.write_json_atomic(done_path, done)
    return True


def agreement(s: settings.Settings, workdir: str) -> dict:
    """ODE NLL (the eval's keys) and the energy/ODE agreement of one trained energy run."""
    s = settings.override(s, {"eval.ais": False})  # the AIS numbers come from the eval JSON
    ctx = runner.prepare(s, workdir)
    if ctx.model.fns.energy is None:
        raise CheckpointError(f"{workdir} holds a score model (model.parameterization="
                              f"{s.model.parameterization!r}); energy_vs_ode needs an "
                              "energy")
    key = jax.random.fold_in(jax.random.PRNGKey(s.seed + 2), 0)  # as runner.evaluate
    results = runner.likelihood_metrics(ctx, jax.random.split(key, 3)[1])
    saved = _read_json(eval_json_path(workdir))
    keep = ("nll_bpd", "nll_nats", "nll_probe_std") + AGREEMENT_KEYS
    row = files.scalars({k: results[k] for k in keep if k in results})
    row.update({k: saved[k] for k in AIS_KEYS if k in saved})
    row.update(workdir=workdir, step=ctx.step, eval_json_nll_nats=saved.get("nll_nats"),
               nll_divergence=results.get("nll_divergence"))
    row["eval_json_updated"] = jax.process_index() == 0 and add_to_eval_json(workdir, row)
    return row


def _study_runs(s: settings.Settings, workdir: str) -> list[tuple[settings.Settings, str]]:
    """(run settings, run dir) of each energy run of the study with a checkpoint."""
    from ebm_vs_score.study import plan  # the planner builds the runs' settings

    runs_settings = plan.validate_study(s, workdir)
    plan.check_study_dir(s, workdir)
    runs = []
    for variant in plan.variants(s):
        if plan.parse_variant(variant)[0] not in plan.ENERGY_FAMILIES:
            continue
        for seed in s.study.seeds:
            run_dir = os.path.join(workdir, "runs", plan.run_name(variant, seed))
            if os.path.isdir(os.path.join(run_dir, "checkpoints")):
                runs.append((runs_settings[variant, seed], run_dir))
    return runs


def run_energy_vs_ode(s: settings.Settings, workdir: str) -> list[dict]:
    """The agreement of every energy run (a study) or of the run in ``workdir``."""
    settings.require(s)
    runs = _study_runs(s, workdir) if s.study is not None else [(s, workdir)]
    if not runs:
        raise CheckpointError(f"the study in {workdir} has no trained energy run; run "
                              "--mode=study first")
    rows = []
    for run_settings, run_dir in runs:
        rows.append(agreement(run_settings, run_dir))
        logging.info("energy_vs_ode: %s", json.dumps(rows[-1]))
        if jax.process_index() == 0:
            files.write_json_atomic(os.path.join(workdir, OUTPUT_FILE), rows)
    return rows
