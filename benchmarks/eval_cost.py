"""Wall time of ``--mode=eval`` per metric, per family, on digits: this tree and another.

    python -m benchmarks.eval_cost --workroot=DIR [--families=U,C,C-ResNet,QC]
        [--train_iters=200] [--protocol=study] [--before=DIR] [--pairs=1] [--out=FILE]

Each family (U ``score``, C ``energy``, C-ResNet ``resnet_energy``, QC ``qc``; the
time-invariant EqM ``eqm``, EqM-E ``eqm_energy``, EM ``energy_matching``) is trained
once for ``--train_iters`` steps with this tree (``DIR/<family>``), then evaluated by the
real command, ``python -m ebm_vs_score.main --mode=eval``, in a fresh process per
evaluation, with this tree's library and (``--before``) another checkout's, alternating
``--pairs`` times (B A, A B, ...) on the same checkpoint, so that a change in the
machine's load hits both. The config file of every run is generated under
``DIR/configs``: the family's ``config_base`` defaults of the tree that runs it, plus the
protocol's evaluation fields:

* ``study``: the study's digits evaluation (``study/plan.py``): the ODE NLL of the first
  64 test digits at tolerance 1e-4 with 4 Hutchinson probes, AIS on the same points for
  energies, 297 Euler-Maruyama samples (250 steps) for FD / IS / precision / recall; for
  the time-invariant families the NFE sweep (gd, nag, nag_eqm at 25, 50, 100, 200 steps;
  nag stopped at ||f|| < 2 and < 1);
* ``small``: a reduced study evaluation that fits a loaded 2-core box: 64 samples (100
  Euler-Maruyama steps) for FD / IS / precision / recall, the ODE NLL of 16 test digits at
  tolerance 1e-3 with 4 probes, Asym as shipped; no AIS (``benchmarks.loops`` times AIS per
  NFE) and no OOD (a metric the code before did not have);
* ``default``: the config as shipped (``eval.*`` of ``config_base``).

Every run shares one offline classifier (``DIR/classifier``, trained before the timed
runs), as the study's runs do. Per metric: from the eval JSON's ``wall_s`` where the tree
writes it, otherwise from the timestamps of the evaluation's own log lines (``eval:
Asym``, ``eval: ODE likelihood``, ``eval: AIS``, ``eval: N samples``, ``eval at step``);
both are in the JSON, with the process's wall time, the load average at its start and end,
and the NLL with its standard errors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = {"U": "score", "C": "energy", "C-ResNet": "resnet_energy", "QC": "qc",
            "EqM": "eqm", "EqM-E": "eqm_energy", "EM": "energy_matching"}
PROTOCOLS = {
    "study": ("config.eval.num_samples = int(config.eval.num_examples)",
              "config.eval.nll_examples = 64",
              "config.eval.nll_rtol = config.eval.nll_atol = 1e-4",
              "config.eval.nll_probes = 4",
              "config.eval.nfe_sweep_steps = (25, 50, 100, 200)",  # time-invariant only
              "config.eval.nfe_sweep_tols = (2.0, 1.0)"),
    "small": ("config.eval.num_examples = config.eval.batch_size = 64",
              "config.sampling.num_steps = 100",
              "config.eval.nll_examples = 16",
              "config.eval.nll_rtol = config.eval.nll_atol = 1e-3",
              "config.eval.nll_probes = 4",
              "config.eval.ais = False",
              "config.eval.ood = False"),
    "default": (),
}
MARKERS = {"asym": r"eval: Asym/NAsym", "ode_nll": r"eval: ODE likelihood of",
           "ais": r"eval: AIS log-normalizer", "samples": r"eval: \d+ samples with",
           "end": r"eval at step"}
KEPT = ("nll_bpd", "nll_bpd_stderr", "nll_probe_std", "nll_probes", "nll_divergence",
        "nll_nfe", "ais_nll_bpd", "ais_log_z_stderr", "fd", "sample_nfe", "asym", "nasym")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workroot", required=True)
    p.add_argument("--families", default="U,C,C-ResNet,QC")
    p.add_argument("--train_iters", type=int, default=200)
    p.add_argument("--protocol", default="study", choices=sorted(PROTOCOLS))
    p.add_argument("--before", help="a checkout of the commit to compare with")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--train_each", action="store_true",
                   help="train a checkpoint with each tree (DIR/<family>_before), for a "
                        "checkout whose eval refuses a workdir trained by this tree's config")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per evaluation")
    p.add_argument("--out")
    return p.parse_args(argv)


def write_config(root: str, family: str, protocol: str) -> str:
    """``DIR/configs/digits_<family>_<protocol>.py``: the family's defaults + the protocol."""
    path = os.path.join(root, "configs", f"digits_{FAMILIES[family]}_{protocol}.py")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = "\n".join(f"    {line}" for line in PROTOCOLS[protocol] + (
        f"config.eval.classifier_dir = {os.path.join(os.path.abspath(root), 'classifier')!r}",
        "config.eval.classifier_steps = 1000"))
    with open(path, "w") as f:
        f.write(f'"""Written by benchmarks.eval_cost: digits {FAMILIES[family]}, protocol '
                f'{protocol}."""\n\nfrom ebm_vs_score import config_base\n\n\n'
                f'def get_config():\n    config = config_base.get_config("digits", '
                f'"{FAMILIES[family]}")\n{body}\n    return config\n')
    return path


def _main_cmd(config: str, workdir: str, mode: str, iters: int) -> list[str]:
    return [sys.executable, "-m", "ebm_vs_score.main", f"--config={config}",
            f"--workdir={workdir}", f"--mode={mode}", f"--config.training.n_iters={iters}"]


def _run(cmd: list[str], tree: str, log: str, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    load, start, cpu = list(os.getloadavg()), time.time(), _children_cpu()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"returncode": rc, "start": start, "process_wall_s": time.time() - start,
            "process_cpu_s": _children_cpu() - cpu,
            "load_average_start": load, "load_average_end": list(os.getloadavg())}


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def log_phases(log: str, start: float) -> dict:
    """Seconds of each metric group from the absl timestamps of the evaluation's log lines
    (``I1201 02:10:11.123456 ...``); ``restore`` runs from the process start."""
    seen: dict[str, float] = {}
    year = datetime.date.fromtimestamp(start).year
    for line in open(log, errors="replace"):
        m = re.match(r"[IWE](\d{4} \d\d:\d\d:\d\d\.\d+)", line)
        for name, pattern in MARKERS.items():
            if m and name not in seen and re.search(pattern, line):
                stamp = datetime.datetime.strptime(f"{year}{m.group(1)}", "%Y%m%d %H:%M:%S.%f")
                seen[name] = stamp.timestamp()
    order = [n for n in MARKERS if n in seen]
    phases = {"restore": seen[order[0]] - start} if order else {}
    for a, b in zip(order, order[1:], strict=False):
        phases[a] = seen[b] - seen[a]
    return phases


def _workdir(args: argparse.Namespace, family: str, label: str) -> str:
    suffix = f"_{label}" if args.train_each and label != "after" else ""
    return os.path.join(args.workroot, family + suffix)


def evaluate(tree: str, family: str, args: argparse.Namespace, label: str, i: int) -> dict:
    """One timed ``--mode=eval`` of ``family`` with ``tree``'s library."""
    workdir = _workdir(args, family, label)
    config = write_config(args.workroot, family, args.protocol)
    log = os.path.join(args.workroot, "logs", f"{family}_{label}_{i}.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    shutil.rmtree(os.path.join(workdir, "eval"), ignore_errors=True)
    out = _run(_main_cmd(config, workdir, "eval", args.train_iters), tree, log, args.timeout)
    from benchmarks import report

    out.update(family=family, code=label, pair=i, log=log, commit=report.checkout_commit(tree),
               log_phases=log_phases(log, out["start"]))
    path = os.path.join(workdir, "eval", f"step_{args.train_iters:08d}.json")
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
        out["metric_wall_s"] = results.get("wall_s")  # the eval JSON's own, if written
        out["results"] = {k: results[k] for k in KEPT if k in results}
    phases = out.get("metric_wall_s") or out["log_phases"]
    print(f"{label} {family}: process {out['process_wall_s']:.0f} s (status "
          f"{out['returncode']}); " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()),
          file=sys.stderr, flush=True)
    return out


def prepare(args: argparse.Namespace, tree: str, label: str = "after") -> dict:
    """Trains every family once (``--train_iters`` steps, ``tree``) and (this tree) the
    shared offline classifier; both skipped when already there. Returns the training runs'
    records."""
    records = {}
    for family in args.families.split(","):
        workdir = _workdir(args, family, label)
        config = write_config(args.workroot, family, args.protocol)
        if os.path.isdir(os.path.join(workdir, "checkpoints")):
            continue
        log = os.path.join(args.workroot, "logs", f"{family}_{label}_train.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        records[family] = _run(_main_cmd(config, workdir, "train", args.train_iters), tree,
                               log, args.timeout)
        if records[family]["returncode"] != 0:
            raise RuntimeError(f"training {family} failed; see {log}")
    if label != "after":
        return records
    first = args.families.split(",")[0]
    # the config loaded as main loads it (config_flags), crossing into settings once
    code = ("from absl import app, flags\n"
            "from ml_collections import config_flags\n"
            "from ebm_vs_score import settings\n"
            "from ebm_vs_score.evaluate import runner\n"
            "C = config_flags.DEFINE_config_file('config')\n"
            "W = flags.DEFINE_string('workdir', None, 'workdir')\n"
            "app.run(lambda argv: runner.offline_classifier(settings.from_config(C.value), "
            "W.value))\n")
    records["classifier"] = _run(
        [sys.executable, "-c", code,
         f"--config={write_config(args.workroot, first, args.protocol)}",
         f"--workdir={os.path.join(args.workroot, first)}"], tree,
        os.path.join(args.workroot, "logs", "classifier.log"), args.timeout)
    return records


def summarize(runs: list[dict]) -> dict:
    """Per code and family: process wall time and per-metric seconds (mean over pairs),
    and each family's total over U's."""
    out: dict = {}
    for r in runs:
        cell = out.setdefault(r["code"], {}).setdefault(r["family"], {"n": 0, "runs": []})
        cell["n"] += 1
        cell["runs"].append({"process_wall_s": r["process_wall_s"],
                             "process_cpu_s": r.get("process_cpu_s"),
                             "metrics_s": r.get("metric_wall_s") or r["log_phases"],
                             "returncode": r["returncode"]})
    for families in out.values():
        for cell in families.values():
            walls = [x["process_wall_s"] for x in cell["runs"]]
            cell["process_wall_s_mean"] = sum(walls) / len(walls)
        base = families.get("U", {}).get("process_wall_s_mean")
        for cell in families.values():
            cell["vs_U"] = None if not base else cell["process_wall_s_mean"] / base
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.workroot = os.path.abspath(args.workroot)
    after = os.path.dirname(HERE)
    trees = [("after", after)] + ([("before", os.path.abspath(args.before))]
                                  if args.before else [])
    result = {"schema_version": 1, "kind": "eval_cost", "options": vars(args),
              "machine": _machine(argv), "prepare": prepare(args, after), "runs": []}
    if args.train_each:
        for label, tree in trees[1:]:
            result["prepare_" + label] = prepare(args, tree, label)
    for i in range(args.pairs):
        for family in args.families.split(","):
            for label, tree in (trees[::-1] if i % 2 == 0 else trees):
                result["runs"].append(evaluate(tree, family, args, label, i))
                _write(args.out, result)
    result["summary"] = summarize(result["runs"])
    result["machine"]["load_average_end"] = list(os.getloadavg())
    _write(args.out, result)
    print(json.dumps({c: {f: (round(v["process_wall_s_mean"]), v["vs_U"]) for f, v in fs.items()}
                      for c, fs in result["summary"].items()}, indent=1))
    return 0


def _machine(argv: list[str]) -> dict:
    from benchmarks import timing

    return timing.machine_info(argv, module="benchmarks.eval_cost")


def _write(path: str | None, result: dict) -> None:
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
