r"""Is a trained energy's own density exp(-E(x, eps)) / Z the probability-flow ODE's density?

For every energy run of a study (or the single runs given), recomputes the ODE likelihood
exactly as its eval did (same points, probes and keys, so ``nll_bpd`` matches the eval
JSON) and adds :func:`ebm_vs_score.evaluate.nll.energy_ode_agreement`: the log Z
the ODE implies, -mean(log p_ODE + E(x, eps)), and the spread of log p_ODE + E over the
points; next to the AIS log Z of the eval JSON. AIS's Z-hat is unbiased, so an AIS log Z
far above the ODE-implied one cannot be AIS error: the two are different densities.

    python scripts/energy_vs_ode.py --study_dir=runs/study_digits --update_eval_json
    python scripts/energy_vs_ode.py --workdirs runs/study_digits/runs/energy_seed0
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import jax
import ml_collections

from ebm_vs_score import workdir as workdir_lib
from ebm_vs_score.evaluate import files, runner
from ebm_vs_score.study.plan import DONE_FILE

_AGREEMENT_KEYS = ("ode_log_z", "ode_log_z_stderr", "energy_ode_spread_nats")


def eval_json_path(workdir: str) -> str:
    """The newest model-metrics eval JSON of ``workdir`` (not a sampler's)."""
    paths = sorted(p for p in glob.glob(os.path.join(workdir, "eval", "step_*.json"))
                   if os.path.basename(p).count("_") == 1)
    if not paths:
        raise FileNotFoundError(f"no eval JSON in {workdir}/eval; run --mode=eval first")
    return paths[-1]


def eval_results(workdir: str) -> dict:
    with open(eval_json_path(workdir)) as f:
        return json.load(f)


def add_to_eval_json(workdir: str, row: dict) -> None:
    """Adds the agreement keys to the eval JSON (and a study run's DONE.json, which its
    REPORT.md reads) if this run's ODE NLL is the saved one."""
    saved = eval_results(workdir)
    if abs(row["nll_nats"] - saved["nll_nats"]) > 1e-4 * max(1.0, abs(saved["nll_nats"])):
        raise ValueError(f"{workdir}: recomputed ODE NLL {row['nll_nats']:.6f} nats != saved "
                         f"{saved['nll_nats']:.6f}; not a re-run of its eval (other code or "
                         "config?), the eval JSON is left as it is")
    agreement_values = {k: row[k] for k in _AGREEMENT_KEYS}
    files.write_json_atomic(eval_json_path(workdir), saved | agreement_values)
    done_path = os.path.join(workdir, DONE_FILE)  # a study run: its report reads DONE.json
    if os.path.exists(done_path):
        with open(done_path) as f:
            done = json.load(f)
        done["results"].update(agreement_values)
        files.write_json_atomic(done_path, done)


def agreement(workdir: str) -> dict:
    """ODE NLL (the eval's keys) and the energy/ODE agreement of one run."""
    saved_config = workdir_lib.load_saved(workdir)
    if saved_config is None:
        raise FileNotFoundError(f"no config.json in {workdir}: not a trained run")
    config = ml_collections.ConfigDict(saved_config)
    config.eval.ais = False
    ctx = runner.prepare(config, workdir)
    if ctx.model.fns.energy is None:
        raise ValueError(f"{workdir} is not an energy model")
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), 0)  # as runner.evaluate
    results = runner.likelihood_metrics(ctx, jax.random.split(key, 3)[1])
    saved = eval_results(workdir)
    keep = ("nll_bpd", "nll_nats", "nll_probe_std") + _AGREEMENT_KEYS
    out = {k: results[k] for k in keep if k in results}
    out.update({k: saved[k] for k in ("ais_log_z", "ais_log_z_stderr", "ais_ess",
                                      "ais_nll_bpd") if k in saved})
    out["eval_json_nll_nats"] = saved.get("nll_nats")
    out["step"] = ctx.step
    return files.scalars(out) | {"workdir": workdir}


def run_dirs(study_dir: str | None, workdirs: list[str]) -> list[str]:
    """The energy runs of ``study_dir`` (those whose eval has AIS), or ``workdirs``."""
    if study_dir:
        dirs = sorted(glob.glob(os.path.join(study_dir, "runs", "*")))
        return [d for d in dirs if "ais_log_z" in _safe_results(d)]
    return list(workdirs)


def _safe_results(workdir: str) -> dict:
    try:
        return eval_results(workdir)
    except FileNotFoundError:
        return {}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--study_dir", help="a study workdir: every run with an AIS result")
    where.add_argument("--workdirs", nargs="+", default=[], help="single run workdirs")
    parser.add_argument("--out", help="JSON of the results (default: stdout only)")
    parser.add_argument("--update_eval_json", action="store_true",
                        help="add the agreement keys to each run's eval JSON and DONE.json "
                        "(only if the recomputed ODE NLL equals the saved one); then "
                        "--config.study.report_only=True puts them in the study's REPORT.md")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    rows = []
    for workdir in run_dirs(args.study_dir, args.workdirs):
        row = agreement(workdir)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.update_eval_json:
            add_to_eval_json(workdir, row)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    if not rows:
        sys.exit("no energy run with an AIS result found; evaluate the energies first")
    return rows


if __name__ == "__main__":
    main()
