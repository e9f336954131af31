"""Running the study: each run trained (resuming), evaluated, and marked done; the study
loop with its compilation cache, failures and report.

Layout of the study directory DIR::

  study_config.json        the study config; a different config in DIR is refused
  commands.jsonl           one line per invocation: command line and config overrides
  classifier/              offline classifier of the train split (images), trained once
  runs/<variant>_seed<k>/  an ordinary workdir; metrics.jsonl holds the train loop's
                           records (with their wall_time) and 'timing' records of the
                           training calls, eval/ the metrics, DONE.json (written
                           atomically) marks it finished
  figures/                 sample grids per family, score fields with curl (2-D data),
                           the QC lambda sweep
  REPORT.md
  <name>.json              the study's record; it and REPORT.md (as <name>_report.md,
                           figures in <name>/) are also written to results/

Resume: a run is finished when DONE.json, its final checkpoint and its eval JSON exist;
finished runs are reused, never recomputed; unfinished ones resume from their
checkpoints. ``study.reevaluate`` evaluates finished runs again with this code, keeping
their training: every run whose DONE.json names another commit, so a rerun after an
interruption evaluates only the rest; the previous files move to eval/previous/. A run
that raises is logged in one sentence (run, directory, error.log), the other runs go on,
REPORT.md lists the failure, and the study then stops with a :class:`StudyError`;
rerunning the same command retries only that run. Changing
``study.families``, ``study.seeds`` or ``study.qc_lambda_sweep`` (and logging/checkpoint
cadences) in an existing DIR is allowed: runs are added, none is lost.
``study.compilation_cache`` points JAX's persistent compilation cache at ``DIR/jax_cache``
while the study runs, so the seeds of a family compile once. With several processes all
of them train and evaluate (collectively) and process 0 writes the study's files.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import re
import shutil
import time
import traceback
from collections.abc import Iterator
from typing import NamedTuple

import jax
import numpy as np
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from ebm_vs_score import builders, checkpoints, evaluate, results, settings, train
from ebm_vs_score import data as data_lib
from ebm_vs_score import workdir as workdir_lib
from ebm_vs_score.errors import WorkdirError
from ebm_vs_score.evaluate import samples as samples_lib
from ebm_vs_score.study import plan, power, report, verdicts, workers
from ebm_vs_score.study.plan import DONE_FILE, ENERGY_FAMILIES, StudyError


def _record_invocation(s: settings.Settings, study_dir: str) -> None:
    """Saves the study config (atomically) and appends this command to commands.jsonl."""
    if not plan.is_writer():
        return
    evaluate.write_json_atomic(os.path.join(study_dir, "study_config.json"), s.as_dict())
    entry = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
             "command": plan.command_line(s, study_dir),
             "overrides": plan.study_overrides(s)}
    with open(os.path.join(study_dir, "commands.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


class RunRecord(NamedTuple):
    """Outcome of one run: status 'finished', 'reused', 'failed' or 'pending' (not finished,
    ``study.report_only``).

    ``family`` is the model family; ``variant`` the study's name for the run's kind (the
    family, or ``qc_lam<lambda>`` in a QC sweep).
    """

    name: str
    family: str
    seed: int
    run_dir: str
    status: str
    done: dict | None = None
    error: str | None = None
    variant: str = ""


def checkpoint_steps(run_dir: str) -> list[int]:
    """Steps of the complete checkpoints (Orbax renames a finished temporary directory)."""
    path = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def read_done(run_dir: str, n_iters: int) -> dict | None:
    """The DONE record if the run is finished: DONE.json, final checkpoint and eval JSON."""
    try:
        with open(os.path.join(run_dir, DONE_FILE)) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    finished = (done.get("step") == n_iters and n_iters in checkpoint_steps(run_dir)
                and os.path.isfile(evaluate.eval_path(run_dir, n_iters)))
    return done if finished else None


def code_stamp() -> str | None:
    """The commit of the code that runs; None outside git or with tracked files changed."""
    head, dirty = results.commit()
    return None if head is None or dirty else head


def needs_evaluation(s: settings.Settings, done: dict | None) -> bool:
    """Whether a run with DONE record ``done`` (None: unfinished) is to be evaluated: it is
    unfinished, or ``study.reevaluate`` is set and its record names another commit than
    this code's (always, off a clean checkout)."""
    if done is None:
        return True
    if not s.study.reevaluate:
        return False
    stamp = code_stamp()
    return stamp is None or done.get("eval_commit") != stamp


def archive_evaluation(run_dir: str, n_iters: int, done: dict | None) -> None:
    """Moves DONE.json and every eval/ file of step ``n_iters`` into
    eval/previous/<commit>_<UTC time>/ before a re-evaluation, so that none is lost."""
    if done is None or not plan.is_writer():
        return
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    dest = os.path.join(run_dir, "eval", "previous", f"{done.get('eval_commit') or 'unknown'}"
                        f"_{when}")
    os.makedirs(dest, exist_ok=True)
    eval_file = evaluate.eval_path(run_dir, n_iters)  # its stem names every file of the step
    eval_dir, tag = os.path.dirname(eval_file), os.path.splitext(os.path.basename(eval_file))[0]
    for name in sorted(os.listdir(eval_dir)):
        if tag in name and os.path.isfile(os.path.join(eval_dir, name)):
            os.replace(os.path.join(eval_dir, name), os.path.join(dest, name))
    os.replace(os.path.join(run_dir, DONE_FILE), os.path.join(dest, DONE_FILE))
    logging.info("study: re-evaluating %s; the previous evaluation is in %s", run_dir, dest)


def steady_steps_per_sec(records: list[dict], from_step: int) -> float | None:
    """Steps/s between the first and the last train record after ``from_step``.

    The train loop writes one ``split='train'`` record per log step with its
    ``wall_time``; timing from the first of them leaves out start-up and the first,
    compiling, step (checkpoints and sample grids in between are included). None if the
    call wrote fewer than two timed records.
    """
    timed = [r for r in records if r.get("split") == "train" and "wall_time" in r
             and r["step"] > from_step]
    if len(timed) < 2 or timed[-1]["wall_time"] <= timed[0]["wall_time"]:
        return None
    return (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["wall_time"]
                                                      - timed[0]["wall_time"])


def timed_training(run: settings.Settings, run_dir: str) -> int:
    """Trains (resuming) and appends a 'timing' record to metrics.jsonl; the final step.

    The record holds the wall time of the training call over the steps it made
    (``wall_steps_per_sec``: includes start-up, compilation, checkpoints and the sample
    grid) and the steady-state ``steps_per_sec`` between the call's train records
    (:func:`steady_steps_per_sec`; the wall rate if it wrote fewer than two).
    """
    start = max(checkpoint_steps(run_dir), default=0)
    if start >= run.training.n_iters:
        return start
    metrics_file = os.path.join(run_dir, "metrics.jsonl")
    before = len(report.read_jsonl(metrics_file))
    t0 = time.perf_counter()
    state = train.train_and_evaluate(run, run_dir)
    wall, step = time.perf_counter() - t0, int(state.step)
    if step > start:
        steady = steady_steps_per_sec(report.read_jsonl(metrics_file)[before:], start)
        wall_rate = (step - start) / wall
        workdir_lib.append_metrics(run_dir, {
            "split": "timing", "train_wall_s": wall, "steps": step - start,
            "from_step": start, "to_step": step, "wall_steps_per_sec": wall_rate,
            "steps_per_sec": wall_rate if steady is None else steady})
    return step


def training_speed(run_dir: str) -> dict[str, float]:
    """Steady steps/s (step-weighted over the training calls) and total training wall time,
    from the run's 'timing' records in metrics.jsonl."""
    records = [r for r in report.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
               if r.get("split") == "timing"]
    steps = sum(r["steps"] for r in records)
    rate = sum(r["steps"] * r["steps_per_sec"] for r in records) / steps if steps else np.nan
    return {"steps_per_sec": float(rate), "train_wall_s": sum(r["train_wall_s"] for r in records)}


def _evaluate_run(run: settings.Settings, run_dir: str, family: str, extra: str) -> dict:
    """All metrics, plus the extra sampler for energies; the DONE record."""
    t0 = time.perf_counter()
    results = evaluate.evaluate(run, run_dir)
    extra_results = None
    if extra and family in ENERGY_FAMILIES:
        extra_results = evaluate.evaluate_sampler(run, run_dir, extra)
    return {"step": int(run.training.n_iters), "results": results,
            "num_params": num_params(run),
            "extra_sampler": extra if extra_results is not None else None,
            "extra_results": extra_results, "timing": training_speed(run_dir),
            "eval_wall_s": time.perf_counter() - t0, "eval_commit": code_stamp()}


def num_params(run: settings.Settings) -> int:
    """Number of network parameters of a run (shapes only, nothing allocated)."""
    model = builders.build_model(run)
    shapes = jax.eval_shape(lambda: builders.init_params(model, jax.random.PRNGKey(0)))
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(shapes)))


def _failure(name: str, run_dir: str, error: Exception) -> str:
    """Appends the traceback to the run's error.log and returns the one-sentence message."""
    log = os.path.join(run_dir, "error.log")
    if plan.is_writer():
        os.makedirs(run_dir, exist_ok=True)
        with open(log, "a") as f:
            f.write(traceback.format_exc())
    first = str(error).splitlines()[0] if str(error) else ""
    return (f"study run {name} failed ({type(error).__name__}: {first}); its directory is "
            f"{run_dir} and the traceback is in {log}; the other runs continue")


def run_one(s: settings.Settings, variant: str, seed: int,
            study_dir: str, *, train: bool = True) -> RunRecord:
    """Reuses, resumes or trains and evaluates one run; a failure is recorded, not raised.

    With ``train=False`` (``study.report_only``) an unfinished run is not touched: its
    record is 'pending'."""
    name = plan.run_name(variant, seed)
    run_dir = os.path.join(study_dir, "runs", name)
    family = plan.parse_variant(variant)[0]
    run = plan.run_settings(s, variant, seed, study_dir)
    n_iters = int(run.training.n_iters)
    done = read_done(run_dir, n_iters)
    if done is not None and (not train or not needs_evaluation(s, done)):
        logging.info("study: reusing finished run %s", name)
        return RunRecord(name, family, seed, run_dir, "reused", done, variant=variant)
    if not train:
        logging.info("study: %s is not finished; left out of the report", name)
        return RunRecord(name, family, seed, run_dir, "pending", variant=variant)
    try:
        archive_evaluation(run_dir, n_iters, done)
        logging.info("study: %s %s in %s", "training" if done is None else
                     "evaluating again (its training kept)", name, run_dir)
        step = timed_training(run, run_dir)
        if step < n_iters:
            raise StudyError(f"study run {name} stopped at step {step} of {n_iters} (SIGTERM "
                             "or Ctrl-C); its checkpoint is saved; rerun the same command to "
                             "resume")
        logging.info("study: evaluating %s", name)
        done = _evaluate_run(run, run_dir, family, str(s.study.extra_sampler))
        if plan.is_writer():
            evaluate.write_json_atomic(os.path.join(run_dir, DONE_FILE), done)
    except (StudyError, WorkdirError):  # the study stops: a file of it needs the user
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one run must not stop the others
        message = _failure(name, run_dir, e)
        logging.error("%s", message)
        return RunRecord(name, family, seed, run_dir, "failed", error=message, variant=variant)
    return RunRecord(name, family, seed, run_dir, "finished", done, variant=variant)


@contextlib.contextmanager
def compilation_cache(path: str | None) -> Iterator[None]:
    """JAX's persistent compilation cache in ``path`` while the study runs.

    Every jitted function of training and evaluation takes the params as an argument, so
    its program does not depend on the seed: runs of the same family then compile once.
    A cache the user configured (``JAX_COMPILATION_CACHE_DIR``) is left alone.
    """
    if path is None or jax.config.jax_compilation_cache_dir:
        yield
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax_cache.reset_cache()


def _run_job(s: settings.Settings, study_dir: str, cache: str | None,
             job: tuple[str, int]) -> RunRecord:
    """One run in a study worker (``workers.run_all``), with the study's compilation cache."""
    variant, seed = job
    with compilation_cache(cache):
        return run_one(s, variant, seed, study_dir)


def _worker_died(study_dir: str, job: tuple[str, int], why: str) -> RunRecord:
    """The failed record of a run whose worker process exited before answering."""
    variant, seed = job
    name = plan.run_name(variant, seed)
    run_dir = os.path.join(study_dir, "runs", name)
    message = (f"study run {name} failed ({why}); its directory is {run_dir}; the other "
               "runs continue")
    logging.error("%s", message)
    return RunRecord(name, plan.parse_variant(variant)[0], seed, run_dir, "failed",
                     error=message, variant=variant)


def _longest_first(s: settings.Settings, todo: list[tuple[str, int]],
                   study_dir: str) -> list[tuple[str, int]]:
    """The order in which workers take the runs: the longest expected first, so the last to
    finish are short ones and no core idles long (longest-processing-time-first, Graham
    1969). With one seed in the study's order the costliest run, Energy Matching, came
    last and ran alone on one of two cores (results/study_digits_seed0_workers_report.md,
    Runs)."""
    base = float(s.model.ch or 1)

    def cost(job: tuple[str, int]) -> float:
        width = float(plan.run_settings(s, job[0], job[1], study_dir).model.ch or base)
        return plan.expected_cost(job[0], width / base)

    return sorted(todo, key=cost, reverse=True)  # stable: ties keep the study's order


def run_all(s: settings.Settings, runs: list[tuple[str, int]], study_dir: str,
            cache: str | None) -> list[RunRecord]:
    """Every run's record, in the order of ``runs``: the unfinished ones trained and
    evaluated one after another here, or by ``study.workers`` processes (:mod:`.workers`).

    Raises:
      StudyError: a run was interrupted (its step is saved), or a stop signal came before
        every run was done.
    """
    todo = [] if s.study.report_only else [
        (v, seed) for v, seed in runs
        if needs_evaluation(s, read_done(
            os.path.join(study_dir, "runs", plan.run_name(v, seed)),
            int(plan.run_settings(s, v, seed, study_dir).training.n_iters)))]
    count = workers.count(int(s.study.workers), len(todo))
    done = {}
    if count > 1:
        todo = _longest_first(s, todo, study_dir)
        logging.info("study: %d runs to do in %d worker processes, the longest expected first "
                     "(%s)", len(todo), count, ", ".join(plan.run_name(*job) for job in todo))
        answers = workers.run_all(functools.partial(_run_job, s, study_dir, cache), todo,
                                  count, functools.partial(_worker_died, study_dir))
        done = {job: a for job, a in zip(todo, answers, strict=True) if a is not None}
        if checkpoints.sigterm_received():
            raise StudyError("the study was stopped (SIGTERM or Ctrl-C) before every run was "
                             "done; finished runs and saved steps are kept; rerun the same "
                             "command to resume")
        if len(done) < len(todo):
            raise StudyError(f"the study's worker processes exited before {len(todo) - len(done)}"
                             f" of its {len(todo)} runs started (see the lines above); rerun "
                             "with --config.study.workers=1 to run them in this process")
    records = []
    for i, (variant, seed) in enumerate(runs):
        if (variant, seed) not in done:
            logging.info("study: run %d/%d (%s)", i + 1, len(runs), plan.run_name(variant, seed))
        records.append(done.get((variant, seed)) or run_one(
            s, variant, seed, study_dir, train=not s.study.report_only))
    return records


def run_study(s: settings.Settings, workdir: str) -> str:
    """Runs (or resumes) the study of ``s`` in ``workdir``; returns REPORT.md's path.

    Raises:
      ConfigError: invalid study config, or ``workdir`` holds a different study.
      FileNotFoundError: ``eval.inception_weights`` is set but missing.
      StudyError: some runs failed (after the report is written), or a run was interrupted.
    """
    settings.require(s)
    plan.validate_study(s, workdir)
    plan.check_study_dir(s, workdir)
    load_start, start = results.load_average(), time.monotonic()
    os.makedirs(workdir, exist_ok=True)
    _record_invocation(s, workdir)
    cache = os.path.join(workdir, "jax_cache") if s.study.compilation_cache else None
    with compilation_cache(cache):
        accuracy = shared_classifier_accuracy(s, workdir)
        runs = [(v, seed) for v in plan.variants(s) for seed in s.study.seeds]
        records = run_all(s, runs, workdir, cache)
        figures = report.make_figures(s, workdir, records)
        floors = image_floors(s, workdir)
    values = study_values(s, records, floors)
    # This invocation, start to record: runs trained or resumed, the classifier, floors and
    # figures included (a resumed study counts only what it did now).
    values["runs"]["invocation_wall_s"] = time.monotonic() - start
    path = report.write_report(s, workdir, records, figures, accuracy,
                               verdicts.power_lines(values))
    write_study_record(s, workdir, values, load_start)
    failed = [r for r in records if r.status == "failed"]
    if failed:
        raise StudyError(f"{len(failed)} of {len(records)} study runs failed "
                         f"({', '.join(r.name for r in failed)}; see error.log in each run "
                         f"directory); {path} reports the others; rerun the same command to "
                         "retry only the failed runs")
    logging.info("study: wrote %s", path)
    return path


def _first_run(s: settings.Settings, study_dir: str) -> settings.Settings:
    """The settings of the study's first run (its data and evaluation settings)."""
    return plan.run_settings(s, s.study.families[0], s.study.seeds[0], study_dir)


def shared_classifier_accuracy(s: settings.Settings, study_dir: str) -> float | None:
    """Trains (or loads) the one offline classifier of the study (images); its accuracy."""
    if s.is_toy:
        return None
    clf = evaluate.offline_classifier(_first_run(s, study_dir), study_dir)
    return None if clf is None else clf.accuracy



def image_floors(s: settings.Settings, study_dir: str) -> dict[str, power.Floor] | None:
    """Real-vs-real floors of the offline-classifier metrics (FD, IS, precision, recall):
    ``study.floor_draws`` draws of ``eval.num_samples`` train images, each scored against
    the test images the samples are scored against. None for toys or without labels."""
    draws = int(s.study.floor_draws)
    if s.is_toy or draws <= 0:
        return None
    run = _first_run(s, study_dir)
    clf = evaluate.offline_classifier(run, study_dir)
    if clf is None:
        return None
    pool, _ = data_lib.labelled_split(run.data, "train")
    feats, logits = clf.apply(pool)
    feat_x, _ = clf.apply(data_lib.eval_data(run.data, "test", int(run.eval.num_examples)))
    n = min(int(run.eval.num_samples or run.eval.num_examples), len(pool))
    score = lambda idx: {k: v for k, v in samples_lib.feature_metrics(
        feats[idx], logits[idx], feat_x).items() if k in verdicts.FLOOR_METRICS}
    return power.real_floor(score, len(pool), n, draws, seed=int(s.seed))


def study_values(s: settings.Settings, records, floors) -> dict:
    """The study record's values (``verdicts.study_values``) from the finished runs."""
    toy = s.is_toy
    per_seed = verdicts.per_seed_metrics(records)
    families, labels = {}, {}
    for key in per_seed:
        variant, _, method = key.partition("@")
        families[key] = plan.parse_variant(variant)[0]
        labels[key] = report.variant_label(variant, toy) + (f" + {method}" if method else "")
    return verdicts.study_values(per_seed, families, labels, floors,
                                 scale=str(s.study.scale),
                                 runs=verdicts.run_times(records))


def write_study_record(s: settings.Settings, study_dir: str, values: dict,
                       load_start) -> None:
    """The study's record: ``results/<study.record>.json`` (:func:`results.write_record`)
    and a copy in the study directory."""
    if not plan.is_writer():
        return
    name = str(s.study.record or f"study_{s.study.scale}")
    command = plan.command_line(s, study_dir)
    for directory in (study_dir, None):
        path = results.write_record(name, values, command=command, load_start=load_start,
                                    directory=directory)
    report_path = copy_report(study_dir, name, results.results_dir())
    logging.info("study: wrote the record %s and %s", path, report_path)


def copy_report(study_dir: str, name: str, directory: str) -> str:
    """Copies REPORT.md to ``<directory>/<name>_report.md`` and the figures it links to
    ``<directory>/<name>/``, links rewritten to the copies; returns the report's path.

    The report is part of the study's record: published numbers that no rendered table
    holds (per-level NAsym, AIS, the NFE sweeps, OOD, the runs) are quoted from this copy,
    which only the study command writes (docs/DESIGN.md, Rule 10). Only linked figures
    are copied: the study directory's figures/ also keeps those of variants that an
    earlier invocation with other ``study.families`` drew, which this record does not hold.
    """
    with open(os.path.join(study_dir, "REPORT.md")) as f:
        report = f.read()
    for figure in sorted(set(re.findall(r"\]\(figures/([^)]+)\)", report))):
        source = os.path.join(study_dir, "figures", figure)
        copy = os.path.join(directory, name, figure)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            shutil.copy2(source, copy)
    text = report.replace("](figures/", f"]({name}/")
    path = os.path.join(directory, f"{name}_report.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
