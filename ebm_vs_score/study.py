"""``--mode=study``: should a diffusion model parameterize the energy or the score?

``python -m ebm_vs_score.main --mode=study --config=configs/study_digits.py --workdir=DIR``
trains the families U (``score``), C (``energy``: E = ||F||^2/2 on the same U-Net),
C-ResNet (``resnet_energy``: a scalar ResNet energy; on toy data the scalar MLP energy,
reported as "C-MLP") and QC (``qc``: U trained with DSM + lambda L_QC) with the same
backbone, objective, optimizer, steps and seeds; samples every model with the same sampler
and number of steps (and, for energies only, ``study.extra_sampler``, e.g. MALA, reported
in extra rows); evaluates all metrics with :func:`ebm_vs_score.evaluate.evaluate`; and
writes ``DIR/REPORT.md``.

The study config (:func:`get_config`) is a full config whose fields are shared by every
run, plus a ``study`` section: ``scale`` (toy/digits/cifar), ``families``, ``seeds``,
``qc_weight`` (lambda of QC), ``extra_sampler`` ('' = none) and the score-field figure of
2-D data (``field_times``, ``field_lim``, ``field_grid``). The run (family, seed) is
``config_base.get_config(scale, family)`` with every shared field copied over except the
family-defining ones (:data:`FAMILY_FIELDS`), ``seed=seed``, and ``eval.classifier_dir``
pointing at the study's one shared offline classifier.

Layout of DIR::

  study_config.json        the study config; a different config in DIR is refused
  commands.jsonl           one line per invocation: command line and config overrides
  classifier/              offline classifier of the train split (images), trained once
  runs/<family>_seed<k>/   an ordinary workdir; metrics.jsonl holds 'timing' records
                           (wall time of the training call / steps), eval/ the metrics,
                           DONE.json (written atomically) marks it finished
  figures/                 sample grids per family, score fields with curl (2-D data)
  REPORT.md

Resume: a run is finished when DONE.json, its final checkpoint and its eval JSON exist;
finished runs are reused, never recomputed; unfinished ones resume from their
checkpoints. A run that raises is logged in one sentence (run, directory, error.log), the
other runs go on, REPORT.md lists the failure, and the study then stops with a
:class:`StudyError`; rerunning the same command retries only that run. Changing
``study.families`` or ``study.seeds`` (and logging/checkpoint cadences) in an existing DIR
is allowed: runs are added, none is lost. ``study.compilation_cache`` points JAX's
persistent compilation cache at ``DIR/jax_cache`` while the study runs, so the seeds of a
family compile once. With several processes all of them train and evaluate (collectively)
and process 0 writes the study's files.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from ebm_vs_score import builders, config_base, configuration, evaluate, plotting, train
from ebm_vs_score.errors import UserError

STUDY_FAMILIES = ("score", "energy", "resnet_energy", "qc")
ENERGY_FAMILIES = ("energy", "resnet_energy")  # the only ones with an energy for MH samplers
# Fields that define a family (set by config_base.get_config(scale, family), never shared).
FAMILY_FIELDS = ("family", "model.parameterization", "model.name", "training.qc_weight")
# May differ between invocations on the same DIR: the run set and the cadences.
STUDY_MUTABLE = ("study.families", "study.seeds", "training.log_every",
                 "training.checkpoint_every", "training.sample_every",
                 "training.keep_checkpoints", "study.compilation_cache")
# Left out by configuration.config_differences but they change every run's numbers.
_STRICT_PREFIXES = ("sampling.", "eval.", "training.n_iters")
DONE_FILE = "DONE.json"


class StudyError(UserError, ValueError):
    """The study stopped: failed runs, an interrupted run or a foreign directory."""


class Family(NamedTuple):
    """How a family is named and classified in the report (Salimans & Ho 2021, Table 1)."""

    label: str
    description: str
    conservative: str
    shortcuts: str


def family_info(family: str, toy: bool) -> Family:
    """Report label, description, conservative? and short-cuts to inputs? of a family.

    Short-cuts: U-Net backbones have skip connections from input-resolution features to
    the output; the scalar ResNet / MLP energies and the toy MLPs do not.
    """
    net = "MLP" if toy else "U-Net"
    skips = "no" if toy else "yes"
    table = {
        "score": Family("U", f"score {net}, s = -F/sigma", "no", skips),
        "energy": Family("C", f"energy {net}, E = ||F||^2/2, s = -grad E", "yes", skips),
        "resnet_energy": Family("C-MLP" if toy else "C-ResNet",
                                f"scalar {'MLP' if toy else 'ResNet'} energy, s = -grad E",
                                "yes", "no"),
        "qc": Family("QC", f"score {net} + lambda L_QC", "no (regularized)", skips),
    }
    if family not in table:
        raise ValueError(f"unknown study family {family!r}; valid names: {list(table)}")
    return table[family]


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------


def get_config(scale: str) -> ml_collections.ConfigDict:
    """The study config of a data scale: what ``configs/study_<scale>.py`` returns.

    digits is sized for a 2-core CPU: the ODE NLL (which dominates the evaluation of C) on
    the first 128 test digits at tolerance 1e-4, and no AIS (``eval.ais=True`` adds it:
    about 5 more minutes per energy run there). cifar has no extra sampler (MALA on 10k
    samples would double the sampling cost).
    """
    config = config_base.get_config(scale, "score")
    config.family = "study"
    config.eval.num_samples = int(config.eval.num_examples)
    config.eval.classifier_steps = 1000
    config.eval.nll_examples = ml_collections.config_dict.placeholder(int)  # None: all
    config.eval.nll_rtol = 1e-5
    config.eval.nll_atol = 1e-5
    if scale == "digits":
        config.eval.nll_examples = 128
        config.eval.nll_rtol = config.eval.nll_atol = 1e-4
        config.eval.ais = False
    study = ml_collections.ConfigDict()
    study.scale = scale
    study.families = STUDY_FAMILIES
    study.seeds = (0, 1, 2)
    study.qc_weight = float(config_base.get_config(scale, "qc").training.qc_weight)
    study.extra_sampler = "" if scale == "cifar" else "mala"
    study.field_times = (0.01, 0.05, 0.2, 0.5)
    study.field_lim = 2.5
    study.field_grid = 21
    study.compilation_cache = True  # DIR/jax_cache: the seeds of a family compile once
    config.study = study
    return config


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _set(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *sections, name = path.split(".")
    for section in sections:
        config = config[section]
    config[name] = value


def _writer() -> bool:
    """Only process 0 writes the study's files; training and evaluation are collective."""
    return jax.process_index() == 0


def run_name(family: str, seed: int) -> str:
    return f"{family}_seed{int(seed)}"


def run_config(config: ml_collections.ConfigDict, family: str, seed: int,
               study_dir: str) -> ml_collections.ConfigDict:
    """The config of run (family, seed): the family's defaults + every shared study field."""
    run = config_base.get_config(config.study.scale, family)
    for path, value in _leaves(config):
        if not path.startswith("study.") and path not in FAMILY_FIELDS:
            _set(run, path, value)
    run.seed = int(seed)
    if family == "qc":
        run.training.qc_weight = float(config.study.qc_weight)
    run.eval.classifier_dir = os.path.join(os.path.abspath(study_dir), "classifier")
    return run


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise configuration.ConfigError(message)


def validate_study(config: ml_collections.ConfigDict, study_dir: str) -> None:
    """Checks the study section and every run config; one sentence on failure."""
    study = config.study
    _require(study.scale in config_base.SCALES,
             f"study.scale={study.scale!r} is not valid; choose one of {config_base.SCALES}")
    families, seeds = list(study.families), list(study.seeds)
    bad = [f for f in families if f not in STUDY_FAMILIES]
    _require(families and not bad and len(set(families)) == len(families),
             f"study.families={tuple(families)} must be distinct names from {STUDY_FAMILIES}")
    _require(seeds and len(set(seeds)) == len(seeds) and all(isinstance(s, int) for s in seeds),
             f"study.seeds={tuple(seeds)} must be distinct integers, e.g. (0, 1, 2)")
    _require(config.sampling.method not in configuration.MH_SAMPLERS,
             f"sampling.method={config.sampling.method!r} needs an energy, but the study "
             "samples every family with it; use e.g. 'euler_maruyama' and set "
             f"study.extra_sampler={config.sampling.method!r} for the energies")
    default = dict(_leaves(get_config(study.scale)))
    fixed = [p for p, v in _leaves(config) if p in FAMILY_FIELDS and v != default[p]]
    _require(not fixed, f"{fixed[0] if fixed else ''} is set by each family in a study and "
             "cannot be overridden; choose the families with study.families and QC's lambda "
             "with study.qc_weight")
    extra = study.extra_sampler
    _require(extra == "" or extra in configuration.SAMPLERS,
             f"study.extra_sampler={extra!r} is not valid; choose '' (none) or one of "
             f"{list(configuration.SAMPLERS)}")
    for family in families:
        try:
            configuration.validate(run_config(config, family, seeds[0], study_dir),
                                   num_devices=jax.device_count())
        except configuration.ConfigError as e:
            raise configuration.ConfigError(f"study family {family!r}: {e}") from None
    evaluate.check_inception_weights(config)


def _flat_json(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_json(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def study_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """Fields where ``config`` differs from the saved study config, except the run set.

    ``configuration.config_differences`` plus the sampling / eval / ``training.n_iters``
    fields it tolerates for single runs: in a study they would mix numbers of two configs.
    """
    diff = configuration.config_differences(saved, config)
    before, now = _flat_json(saved), _flat_json(_as_json(config))
    diff += [f"{p}: {before.get(p)!r} -> {now.get(p)!r}" for p in sorted(set(before) | set(now))
             if p.startswith(_STRICT_PREFIXES) and before.get(p) != now.get(p)]
    return [d for d in diff if d.split(":")[0] not in STUDY_MUTABLE]


def check_study_dir(config: ml_collections.ConfigDict, study_dir: str) -> None:
    """Refuses a directory made by a different study config, or a single run's workdir."""
    path = os.path.join(study_dir, "study_config.json")
    if not os.path.exists(path):
        _require(not os.path.exists(os.path.join(study_dir, "config.json")),
                 f"{study_dir} is the workdir of a single run (it has config.json), not a "
                 "study directory; use a new --workdir for the study")
        return
    with open(path) as f:
        diff = study_differences(json.load(f), config)
    _require(not diff, f"study directory {study_dir} was created from a different study config "
             f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}); use a new --workdir, "
             "or the same config to resume it")


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------


def _cli_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        items = ",".join(_cli_value(v) for v in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    return value if isinstance(value, str) else repr(value)


def overrides(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
              skip: Sequence[str] = ()) -> list[str]:
    """``--config.path=value`` for every field where ``config`` differs from ``base``."""
    now, before = _flat_json(_as_json(config)), _flat_json(_as_json(base))
    return [f"--config.{p}={_cli_value(now[p])}" for p in sorted(now)
            if p not in skip and (p not in before or before[p] != now[p])]


def command_line(config: ml_collections.ConfigDict, study_dir: str) -> str:
    """The command of this invocation: ``sys.argv`` under ``ebm_vs_score.main``, else the
    equivalent ``main`` command rebuilt from the config (notebooks, tests)."""
    argv = sys.argv
    if argv and argv[0].endswith(os.path.join("ebm_vs_score", "main.py")):
        return "python -m ebm_vs_score.main " + " ".join(shlex.quote(a) for a in argv[1:])
    scale = config.study.scale
    args = ["--mode=study", f"--config=configs/study_{scale}.py", f"--workdir={study_dir}"]
    args += overrides(config, get_config(scale))
    return "python -m ebm_vs_score.main " + " ".join(shlex.quote(a) for a in args)


def _record_invocation(config: ml_collections.ConfigDict, study_dir: str) -> None:
    """Saves the study config (atomically) and appends this command to commands.jsonl."""
    if not _writer():
        return
    evaluate.write_json_atomic(os.path.join(study_dir, "study_config.json"), _as_json(config))
    entry = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
             "command": command_line(config, study_dir),
             "overrides": overrides(config, get_config(config.study.scale))}
    with open(os.path.join(study_dir, "commands.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------


class RunRecord(NamedTuple):
    """Outcome of one run: status 'finished', 'reused' or 'failed'."""

    name: str
    family: str
    seed: int
    run_dir: str
    status: str
    done: dict | None = None
    error: str | None = None


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


def reported_steps_per_sec(run_dir: str) -> list[float]:
    """The steps/s that the train loop's ReportProgress wrote to the run's TensorBoard files.

    Each value covers about 60 s of training (and the rest up to the last step), timed from
    the end of the first, compiling, step: the steady-state speed of the run.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    rates = []
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == "steps_per_sec":
                    rates.append(float(tensor_util.make_ndarray(value.tensor))
                                 if value.HasField("tensor") else float(value.simple_value))
    return rates


def timed_training(config: ml_collections.ConfigDict, run_dir: str) -> int:
    """Trains (resuming) and appends a 'timing' record to metrics.jsonl; the final step.

    The record holds the wall time of the training call over the steps it made
    (``wall_steps_per_sec``: includes start-up, compilation, checkpoints and the sample
    grid) and the steady-state ``steps_per_sec``: the mean of the rates ReportProgress
    reported during the call (the wall rate if it reported none).
    """
    start = max(checkpoint_steps(run_dir), default=0)
    if start >= config.training.n_iters:
        return start
    before = len(reported_steps_per_sec(run_dir))
    t0 = time.perf_counter()
    state = train.train_and_evaluate(config, run_dir)
    wall, step = time.perf_counter() - t0, int(state.step)
    if step > start:
        rates = reported_steps_per_sec(run_dir)[before:]
        wall_rate = (step - start) / wall
        train.append_metrics(run_dir, {
            "split": "timing", "train_wall_s": wall, "steps": step - start,
            "from_step": start, "to_step": step, "wall_steps_per_sec": wall_rate,
            "steps_per_sec": float(np.mean(rates)) if rates else wall_rate})
    return step


def training_speed(run_dir: str) -> dict[str, float]:
    """Steady steps/s (step-weighted over the training calls) and total training wall time,
    from the run's 'timing' records in metrics.jsonl."""
    records = [r for r in _read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
               if r.get("split") == "timing"]
    steps = sum(r["steps"] for r in records)
    rate = sum(r["steps"] * r["steps_per_sec"] for r in records) / steps if steps else np.nan
    return {"steps_per_sec": float(rate), "train_wall_s": sum(r["train_wall_s"] for r in records)}


def _evaluate_run(config, run_dir: str, family: str, extra: str) -> dict:
    """All metrics, plus the extra sampler for energies; the DONE record."""
    t0 = time.perf_counter()
    results = evaluate.evaluate(config, run_dir)
    extra_results = None
    if extra and family in ENERGY_FAMILIES:
        extra_results = evaluate.evaluate_sampler(config, run_dir, extra)
    return {"step": int(config.training.n_iters), "results": results,
            "num_params": num_params(config),
            "extra_sampler": extra if extra_results is not None else None,
            "extra_results": extra_results, "timing": training_speed(run_dir),
            "eval_wall_s": time.perf_counter() - t0}


def num_params(config: ml_collections.ConfigDict) -> int:
    """Number of network parameters of a run config (shapes only, nothing allocated)."""
    model = builders.build_model(config)
    shapes = jax.eval_shape(lambda: builders.init_params(model, jax.random.PRNGKey(0)))
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(shapes)))


def _failure(name: str, run_dir: str, error: Exception) -> str:
    """Appends the traceback to the run's error.log and returns the one-sentence message."""
    log = os.path.join(run_dir, "error.log")
    if _writer():
        os.makedirs(run_dir, exist_ok=True)
        with open(log, "a") as f:
            f.write(traceback.format_exc())
    first = str(error).splitlines()[0] if str(error) else ""
    return (f"study run {name} failed ({type(error).__name__}: {first}); its directory is "
            f"{run_dir} and the traceback is in {log}; the other runs continue")


def run_one(config: ml_collections.ConfigDict, family: str, seed: int,
            study_dir: str) -> RunRecord:
    """Reuses, resumes or trains and evaluates one run; a failure is recorded, not raised."""
    name = run_name(family, seed)
    run_dir = os.path.join(study_dir, "runs", name)
    cfg = run_config(config, family, seed, study_dir)
    n_iters = int(cfg.training.n_iters)
    done = read_done(run_dir, n_iters)
    if done is not None:
        logging.info("study: reusing finished run %s", name)
        return RunRecord(name, family, seed, run_dir, "reused", done)
    try:
        logging.info("study: training %s in %s", name, run_dir)
        step = timed_training(cfg, run_dir)
        if step < n_iters:
            raise StudyError(f"study run {name} stopped at step {step} of {n_iters} (SIGTERM); "
                             "its checkpoint is saved; rerun the same command to resume")
        logging.info("study: evaluating %s", name)
        done = _evaluate_run(cfg, run_dir, family, str(config.study.extra_sampler))
        if _writer():
            evaluate.write_json_atomic(os.path.join(run_dir, DONE_FILE), done)
    except StudyError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one run must not stop the others
        message = _failure(name, run_dir, e)
        logging.error("%s", message)
        return RunRecord(name, family, seed, run_dir, "failed", error=message)
    return RunRecord(name, family, seed, run_dir, "finished", done)


# ----------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------


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
    from jax.experimental.compilation_cache import compilation_cache as cache

    jax.config.update("jax_compilation_cache_dir", path)
    cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        cache.reset_cache()


def run_study(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Runs (or resumes) the study of ``config`` in ``workdir``; returns REPORT.md's path.

    Raises:
      ConfigError: invalid study config, or ``workdir`` holds a different study.
      FileNotFoundError: ``eval.inception_weights`` is set but missing.
      StudyError: some runs failed (after the report is written), or a run was interrupted.
    """
    validate_study(config, workdir)
    check_study_dir(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    _record_invocation(config, workdir)
    cache = os.path.join(workdir, "jax_cache") if config.study.compilation_cache else None
    with compilation_cache(cache):
        accuracy = shared_classifier_accuracy(config, workdir)
        runs = [(f, s) for f in config.study.families for s in config.study.seeds]
        records = []
        for i, (family, seed) in enumerate(runs):
            logging.info("study: run %d/%d (%s)", i + 1, len(runs), run_name(family, seed))
            records.append(run_one(config, family, seed, workdir))
        figures = make_figures(config, workdir, records)
    path = write_report(config, workdir, records, figures, accuracy)
    failed = [r for r in records if r.status == "failed"]
    if failed:
        raise StudyError(f"{len(failed)} of {len(records)} study runs failed "
                         f"({', '.join(r.name for r in failed)}; see error.log in each run "
                         f"directory); {path} reports the others; rerun the same command to "
                         "retry only the failed runs")
    logging.info("study: wrote %s", path)
    return path


def shared_classifier_accuracy(config, study_dir: str) -> float | None:
    """Trains (or loads) the one offline classifier of the study (images); its accuracy."""
    if configuration.is_toy(config):
        return None
    cfg = run_config(config, config.study.families[0], config.study.seeds[0], study_dir)
    clf = evaluate.offline_classifier(cfg, study_dir)
    return None if clf is None else clf.accuracy


# ----------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------


def _first_done(records: Sequence[RunRecord], family: str) -> RunRecord | None:
    return next((r for r in records if r.family == family and r.done is not None), None)


def _copy_sample_grids(config, study_dir: str, records) -> list[tuple[str, str, str]]:
    """figures/samples_<family>_<sampler>.png from the first finished seed of each family;
    returns (family, sampler, path relative to the study directory) of each."""
    out = []
    os.makedirs(os.path.join(study_dir, "figures"), exist_ok=True)
    for family in config.study.families:
        record = _first_done(records, family)
        if record is None:
            continue
        step = int(record.done["step"])
        methods = [config.sampling.method] + [m for m in [record.done.get("extra_sampler")] if m]
        for method in methods:
            src = evaluate.samples_path(record.run_dir, step, method)
            if os.path.exists(src):
                rel = os.path.join("figures", f"samples_{family}_{method}.png")
                if _writer():
                    shutil.copyfile(src, os.path.join(study_dir, rel))
                out.append((family, method, rel))
    return out


def score_fields(config, study_dir: str, records) -> dict[str, dict[str, np.ndarray]]:
    """Score and curl grids (evaluate.score_field_grid) of seed 0 of each family (2-D)."""
    fields = {}
    toy = configuration.is_toy(config)
    for family in config.study.families:
        record = _first_done(records, family)
        if record is None:
            continue
        cfg = run_config(config, family, record.seed, study_dir)
        model = builders.build_model(cfg)
        _, params = evaluate.restore_params(cfg, record.run_dir, model)
        fields[family_info(family, toy).label] = evaluate.score_field_grid(
            model.fns.score, params, config.study.field_times, float(config.study.field_lim),
            int(config.study.field_grid))
    return fields


def make_figures(config, study_dir: str, records) -> dict[str, Any]:
    """Sample grids, and for 2-D data the score-field figure and mean |curl| per level."""
    figures: dict[str, Any] = {"samples": _copy_sample_grids(config, study_dir, records)}
    if not configuration.is_toy(config) or int(config.data.toy_dim) != 2:
        return figures
    fields = score_fields(config, study_dir, records)
    if fields:
        image = plotting.score_field_figure(fields, config.study.field_times,
                                            title="score direction and curl ds_y/dx - ds_x/dy")
        rel = os.path.join("figures", "score_fields.png")
        if _writer():
            plotting.save_png(image, os.path.join(study_dir, rel))
        figures["score_fields"] = rel
        figures["curl"] = {label: np.mean(np.abs(g["curl"]), axis=(1, 2)).tolist()
                           for label, g in fields.items()}
    return figures


# ----------------------------------------------------------------------------------------
# REPORT.md
# ----------------------------------------------------------------------------------------


class Column(NamedTuple):
    title: str
    key: str


_IMAGE_QUALITY = (Column("FD ↓", "fd"), Column("IS ↑", "is"), Column("precision ↑", "precision"),
                  Column("recall ↑", "recall"), Column("FID (Inception) ↓", "fid"),
                  Column("IS (Inception) ↑", "inception_score"))
_IMAGE_LIKELIHOOD = (Column("NLL bits/dim ↓", "nll_bpd"),)
_TOY_QUALITY = (Column("MMD² ↓", "mmd"), Column("SWD ↓", "swd"))
_TOY_LIKELIHOOD = (Column("NLL nats ↓", "nll_nats"), Column("true NLL nats", "nll_true_nats"),
                   Column("NLL gap (KL) ↓", "nll_gap_nats"),
                   Column("Fisher div. (σ²-wt) ↓", "fisher"))
_CONSERVATIVENESS = (Column("Asym ↓", "asym"), Column("NAsym ↓", "nasym"))
_COST = (Column("NFE", "sample_nfe"), Column("train steps/s ↑", "steps_per_sec"),
         Column("params", "num_params"))


class Row(NamedTuple):
    """One table row: label, family, per-seed metrics of finished runs, failed seeds, and
    whether it is the extra (energy-only) sampler's row."""

    label: str
    family: str
    runs: list[dict[str, float]]
    failed: int
    extra: bool = False


def _run_metrics(done: dict, extra: bool) -> dict[str, float]:
    """Scalars of a run: model metrics, the (extra) sampler's metrics, the step speed."""
    values = evaluate.scalars(done["results"])
    if extra:
        values.update(evaluate.scalars(done["extra_results"]))
    values["steps_per_sec"] = float(done["timing"]["steps_per_sec"])
    values["num_params"] = float(done["num_params"])
    return values


def build_rows(config, records: Sequence[RunRecord]) -> list[Row]:
    """One row per family (and per family with an extra sampler), seeds aggregated."""
    toy, rows = configuration.is_toy(config), []
    for family in config.study.families:
        mine = [r for r in records if r.family == family]
        done = [r.done for r in mine if r.done is not None]
        label = family_info(family, toy).label
        rows.append(Row(label, family, [_run_metrics(d, False) for d in done],
                        len(mine) - len(done)))
        with_extra = [d for d in done if d.get("extra_results")]
        if with_extra:
            method = with_extra[0]["extra_sampler"]
            runs = [_run_metrics(d, True) for d in with_extra]
            acc = np.mean([r.get("sample_acceptance", np.nan) for r in runs])
            rows.append(Row(f"{label} + {method} (acc. {acc:.2f})", family, runs,
                            len(mine) - len(with_extra), extra=True))
    return rows


def _fmt(values: Sequence[float]) -> str:
    """mean ± sample std over seeds (just the value for one seed or a constant)."""
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    if std == 0.0:
        return f"{int(mean)}" if mean.is_integer() else f"{mean:.4g}"
    return f"{mean:.4g} ± {std:.2g}"


def _columns(candidates: Sequence[Column], rows: Sequence[Row]) -> list[Column]:
    """The candidate columns that every finished run of every row has."""
    runs = [m for row in rows for m in row.runs]
    return [c for c in candidates if runs and all(c.key in m for m in runs)]


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def metric_table(rows: Sequence[Row], columns: Sequence[Column], toy: bool,
                 with_kind: bool = False) -> list[str]:
    """Markdown table: model [, conservative?, short-cuts?], one column per metric."""
    header = ["model"] + (["conservative?", "short-cuts to inputs?"] if with_kind else [])
    body = []
    for row in rows:
        label = row.label if not row.failed else f"{row.label} ({len(row.runs)} of " \
                                                 f"{len(row.runs) + row.failed} seeds)"
        info = family_info(row.family, toy)
        cells = [label] + ([info.conservative, info.shortcuts] if with_kind else [])
        cells += [_fmt([m[c.key] for m in row.runs]) if row.runs else "failed" for c in columns]
        body.append(cells)
    return markdown_table(header + [c.title for c in columns], body)


def _header(config, records: Sequence[RunRecord], classifier_accuracy: float | None) -> list[str]:
    toy, n = configuration.is_toy(config), len(config.study.seeds)
    finished = sum(r.done is not None for r in records)
    lines = [f"# Energy or score? Study on `{config.data.dataset}`", "",
             f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by "
             "`ebm_vs_score.study`. Families "
             + ", ".join(f"**{family_info(f, toy).label}** ({family_info(f, toy).description})"
                         for f in config.study.families)
             + f"; U, C and QC share one network, {family_info('resnet_energy', toy).label} "
             f"is the scalar-output network of the same config; same objective "
             f"(`{config.training.objective}`), "
             f"optimizer, {config.training.n_iters} steps at batch {config.training.batch_size}, "
             f"SDE `{config.sde.name}`; sampler `{config.sampling.method}` with "
             f"{config.sampling.num_steps} steps for every model. Seeds "
             f"{tuple(config.study.seeds)}: cells are mean ± sample std over seeds. "
             f"{finished} of {len(records)} runs finished.", ""]
    if toy:
        lines += ["Toy metrics: MMD² (median-heuristic RBF) and sliced 2-Wasserstein (SWD) "
                  "between samples and test data; NLL by the probability-flow ODE (exact "
                  "divergence) against the true NLL of the test points (gap = KL(p‖q) "
                  "estimate); exact Fisher divergence E‖s − ∇log p_t‖², σ(t)²-weighted, "
                  f"averaged over {config.eval.asym_levels} noise levels (mixture toys).", ""]
    else:
        acc = "n/a" if classifier_accuracy is None else f"{classifier_accuracy:.3f}"
        lines += ["Image metrics: FD, IS, precision, recall (k=3) in the feature space of a "
                  "small CNN trained on the train split (`classifier/`, shared by all runs, "
                  f"test accuracy {acc}): comparable within this study only, not with "
                  "published FID/IS. NLL: test bits/dim with uniform dequantization.", ""]
        if config.eval.inception_weights is None:
            lines += ["FID/IS with the standard Inception network: skipped "
                      "(`eval.inception_weights` is not set).", ""]
    probes = int(config.eval.asym_probes)
    jacobian = "exact Jacobian" if probes == 0 else f"Hutchinson, {probes} probe(s)"
    lines += [f"Asym/NAsym (Chao et al. 2023): averaged over {config.eval.asym_levels} noise "
              f"levels and the test data ({jacobian}). "
              "Train steps/s: the steady-state speed the train loop reported (ReportProgress, "
              "first compiling step excluded); the wall time of the training calls is in the "
              "Runs table.", ""]
    if n < 2:
        lines += ["(One seed: no standard deviations.)", ""]
    return lines


def _table_sections(rows: Sequence[Row], toy: bool) -> list[str]:
    """Salimans & Ho 2021 Table 1 (extended) and Chao et al. 2023 Tables 2-3."""
    quality = _TOY_QUALITY if toy else _IMAGE_QUALITY
    likelihood = _TOY_LIKELIHOOD if toy else _IMAGE_LIKELIHOOD
    chao_rows = [r for r in rows if r.family in ("score", "energy", "qc") and not r.extra]
    lines = ["## Table 1 (Salimans & Ho 2021, Table 1), extended", ""]
    lines += metric_table(rows, _columns(quality + likelihood + _CONSERVATIVENESS + _COST, rows),
                          toy, with_kind=True)
    lines += ["", "## Likelihood and conservativeness (Chao et al. 2023, Table 2)", ""]
    lines += metric_table(chao_rows, _columns(likelihood + _CONSERVATIVENESS, chao_rows), toy)
    lines += ["", "## Sample quality (Chao et al. 2023, Table 3)", ""]
    lines += metric_table(chao_rows, _columns(quality + _COST[:1], chao_rows), toy)
    return lines + [""]


def _per_level_table(rows: Sequence[Row], records, key: str, title: str) -> list[str]:
    """Mean over seeds of a per-noise-level metric, one column per level."""
    per_family = {}
    for row in (r for r in rows if not r.extra):
        lists = [r.done["results"].get(key) for r in records
                 if r.family == row.family and r.done is not None]
        if lists and all(lists):
            per_family[row.label] = (np.mean(lists, axis=0), _first_t(records, row.family))
    if not per_family:
        return []
    ts = next(iter(per_family.values()))[1]
    body = [[label] + [f"{v:.3g}" for v in values] for label, (values, _) in per_family.items()]
    return [f"## {title}", ""] + markdown_table(["model"] + [f"t={t:.3g}" for t in ts],
                                                body) + [""]


def _first_t(records, family: str) -> list[float]:
    return next(r.done["results"]["t_levels"] for r in records
                if r.family == family and r.done is not None)


def _energy_table(rows: Sequence[Row], toy: bool) -> list[str]:
    """AIS log Z and NLL next to the ODE NLL, for the energy families."""
    energy_rows = [r for r in rows if not r.extra and r.runs and "ais_log_z" in r.runs[0]]
    nll = "nll_nats" if toy else "nll_bpd"
    columns = _columns((Column("AIS log Z", "ais_log_z"),
                        Column("AIS NLL nats" if toy else "AIS NLL bits/dim",
                               "ais_nll_nats" if toy else "ais_nll_bpd"),
                        Column("ODE NLL nats" if toy else "ODE NLL bits/dim", nll)), energy_rows)
    if not energy_rows:
        return []
    return ["## Energies only: AIS (t = eps)", ""] + metric_table(energy_rows, columns, toy) + [""]


def _figure_lines(figures: dict[str, Any], config) -> list[str]:
    toy = configuration.is_toy(config)
    lines = ["## Samples (first finished seed)", ""]
    for family, method, rel in figures["samples"]:
        lines.append(f"![{family_info(family, toy).label}, {method}]({rel})")
    lines.append("")
    if "score_fields" in figures:
        times = list(config.study.field_times)
        lines += ["## Score fields and curl (first finished seed)", "",
                  f"![score fields]({figures['score_fields']})", "",
                  "Mean |curl| = |∂s_y/∂x − ∂s_x/∂y| over the grid "
                  f"[-{config.study.field_lim}, {config.study.field_lim}]² "
                  "(0 up to float error for a conservative field):", ""]
        body = [[label] + [f"{v:.3g}" for v in values]
                for label, values in figures["curl"].items()]
        lines += markdown_table(["model"] + [f"t={t:g}" for t in times], body) + [""]
    return lines


def _runs_lines(records: Sequence[RunRecord]) -> list[str]:
    body = []
    for r in records:
        if r.done is None:
            body.append([r.name, r.status, "-", "-", "-", "-", f"`{r.run_dir}`"])
            continue
        timing = r.done["timing"]
        body.append([r.name, r.status, str(r.done["step"]), f"{timing['steps_per_sec']:.3g}",
                     f"{timing['train_wall_s']:.1f}", f"{r.done['eval_wall_s']:.1f}",
                     f"`{r.run_dir}`"])
    lines = ["## Runs", ""] + markdown_table(
        ["run", "status", "step", "train steps/s", "train wall s", "eval wall s", "directory"],
        body) + [""]
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r.error}" for r in failed] + [
            "", "Rerun the same command to retry only these runs.", ""]
    return lines


def _command_lines(config, study_dir: str) -> list[str]:
    lines = ["## Commands", "", "Every invocation of this study directory:", ""]
    for entry in _read_jsonl(os.path.join(study_dir, "commands.jsonl")):
        lines += [f"- {entry['time']}:", "", "  ```", f"  {entry['command']}", "  ```", ""]
    scale = config.study.scale
    lines += [f"Overrides of `configs/study_{scale}.py`: "
              + (" ".join(f"`{o}`" for o in overrides(config, get_config(scale))) or "none"), "",
              f"Each run `runs/<family>_seed<k>` is `config_base.get_config('{scale}', family)` "
              "with these overrides and `--config.seed=<k>` (fields marked * are added by the "
              "study and do not exist in the family config files):", ""]
    for family in config.study.families:
        base = config_base.get_config(scale, family)
        run = run_config(config, family, config.study.seeds[0], study_dir)
        keys = {p for p, _ in _leaves(base)}
        items = [o if o.split("=")[0][len("--config."):] in keys else o + " *"
                 for o in overrides(run, base, skip=("seed",))]
        lines += [f"- `configs/{scale}_{family}.py`: " + (" ".join(f"`{o}`" for o in items)
                                                        or "no overrides")]
    return lines + [""]


def write_report(config, study_dir: str, records: Sequence[RunRecord], figures: dict[str, Any],
                 classifier_accuracy: float | None = None) -> str:
    """Writes ``study_dir/REPORT.md`` (atomically) and returns its path."""
    toy = configuration.is_toy(config)
    rows = build_rows(config, records)
    lines = _header(config, records, classifier_accuracy)
    lines += _table_sections(rows, toy)
    lines += _per_level_table(rows, records, "nasym_per_level", "NAsym per noise level")
    if toy:
        lines += _per_level_table(rows, records, "fisher_per_level",
                                  "Exact Fisher divergence per noise level (unweighted)")
    lines += _energy_table(rows, toy)
    lines += _figure_lines(figures, config)
    lines += _runs_lines(records)
    lines += _command_lines(config, study_dir)
    path = os.path.join(study_dir, "REPORT.md")
    if not _writer():
        return path
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
    return path
