"""The study's plan: its config, the runs it is made of, and their configs.

The study config (:func:`get_config`) is a full config whose fields are shared by every
run, plus a ``study`` section: ``scale`` (toy/digits/cifar), ``families``, ``seeds``,
``qc_lambda`` (lambda of L_QC in the QC runs), ``qc_lambda_sweep`` (a lambda sweep: one
QC run per value and seed instead, '()' = none), ``extra_sampler`` ('' = none) and the
score-field figure of 2-D data (``field_times``, ``field_lim``, ``field_grid``). A run is a
*variant* (a family, or ``qc_lam<lambda>`` in a sweep) and a seed; its config is
``config_base.get_config(scale, family)`` with every shared field copied over except the
family-defining ones (:data:`FAMILY_FIELDS`), ``seed=seed``, QC's lambda, and
``eval.classifier_dir`` pointing at the study's one shared offline classifier.

This module is part of the one crossing (DESIGN.md rule 5): it builds each run's config
and turns it into typed :class:`~ebm_vs_score.settings.Settings`; the study's runner and
report take the study's settings and the runs' settings from here, never a ConfigDict.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections

from ebm_vs_score import config_base, evaluate, samplers, settings
from ebm_vs_score import workdir as workdir_lib
from ebm_vs_score.errors import ConfigError, UserError

STUDY_FAMILIES = ("score", "energy", "resnet_energy", "qc")
ENERGY_FAMILIES = ("energy", "resnet_energy")  # the only ones with an energy for MH samplers
# Time-invariant families (EqM, EqM-E, Energy Matching; issue #26). A run of theirs keeps
# the fields of TIME_INVARIANT_FIELDS from its own family config (its objective, its
# sampler and energy form: no SDE sampler applies) and takes every other shared field.
TIME_INVARIANT_FAMILIES = ("eqm", "eqm_energy", "energy_matching")
TIME_INVARIANT_FIELDS = ("training.objective", "model.energy_form", "sampling.method",
                         "sampling.num_steps", "sampling.step_size")
EQM_ENERGY_FORMS = ("dot", "l2")  # study.eqm_energy_forms: one eqm_energy_<form> variant each
# Fields that define a family (set by config_base.get_config(scale, family), never shared).
FAMILY_FIELDS = ("family", "model.parameterization", "model.name", "training.qc_weight")
# May differ between invocations on the same DIR: the run set and the cadences.
STUDY_MUTABLE = ("study.families", "study.seeds", "training.log_every",
                 "training.checkpoint_every", "training.sample_every",
                 "training.keep_checkpoints", "study.compilation_cache",
                 "study.qc_lambda_sweep",
                 "study.report_only", "study.resnet_energy_widths", "study.record",
                 "study.floor_draws", "study.eqm_energy_forms", "study.workers",
                 "study.reevaluate")
# Left out by workdir.config_differences but they change every run's numbers.
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
        "eqm": Family("EqM", f"time-invariant field {net}, s = -f(x)", "no", skips),
        "eqm_energy": Family("EqM-E", f"time-invariant energy {net}, E = -<F, x> (dot) or "
                             "||F||^2/2 (l2), s = -grad E", "yes", skips),
        "energy_matching": Family("EM", f"time-invariant potential {net}, E = -<F, x>, OT "
                                  "flow matching then + CD", "yes", skips),
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

    digits is sized for a 2-core CPU: the ODE NLL (which dominates the evaluation) on the
    first 64 test digits at tolerance 1e-4 with 4 Hutchinson probes (its standard error,
    probe noise included, and the probe std are reported; the exact divergence costs 64
    JVPs per ODE evaluation: 32 digits took 6.5 min for U alone on 2 shared cores, which
    puts three seeds out of reach), and AIS on the same dequantized digits for the
    energies. cifar has no extra sampler (MALA on 10k samples would double the sampling
    cost).
    """
    config = config_base.get_config(scale, "score")
    config.family = "study"
    # No sample grid at the end of training: each run's evaluation draws the study's
    # samples (and the report's figures) right after; the grid cost a sampler's compilation
    # and one draw (BENCHMARKS.md, the digits study's cost).
    config.training.sample_every = 0
    _set_study_eval(config.eval, scale)
    config.study = _study_section(scale)
    return config


def _set_study_eval(ev: ml_collections.ConfigDict, scale: str) -> None:
    """The study's ``eval.*``: a fixed sample count, the shared classifier, the NLL budget."""
    ev.num_samples = int(ev.num_examples)
    ev.classifier_steps = 1000
    ev.nll_examples = ml_collections.config_dict.placeholder(int)  # None: all
    ev.nll_rtol = 1e-5
    ev.nll_atol = 1e-5
    if scale == "digits":
        ev.nll_examples = 64
        ev.nll_rtol = ev.nll_atol = 1e-4
        ev.nll_probes = 4  # 16x cheaper than the exact divergence (64 JVPs)
        ev.nfe_sweep_steps = (25, 50, 100, 200)
        ev.nfe_sweep_tols = (2.0, 1.0)


def _study_section(scale: str) -> ml_collections.ConfigDict:
    """The ``study`` section of a scale's study config."""
    study = ml_collections.ConfigDict()
    study.scale = scale
    study.families = STUDY_FAMILIES
    study.eqm_energy_forms = EQM_ENERGY_FORMS
    if scale == "digits":  # issue #26: the time-invariant rows, same backbone and budget
        study.families = STUDY_FAMILIES + TIME_INVARIANT_FAMILIES
    # digits: five seeds, as the published table (docs/notes/study_digits_five_seeds.md: two
    # more seeds changed four verdicts of three; the cost of a seed: BENCHMARKS.md).
    study.seeds = (0, 1, 2, 3, 4) if scale == "digits" else (0, 1, 2)
    study.qc_lambda = float(config_base.get_config(scale, "qc").training.qc_weight)
    study.qc_lambda_sweep = ()  # a lambda sweep: one QC run per value (replaces qc_lambda)
    if scale == "digits":  # from the lambda sweep (README): 0.1 halves NAsym at no NLL
        study.qc_lambda_sweep = (0.1, 1.0)  # cost; 1 cuts it 87% but doubles FD.
    # Old names (config_base.RENAMED_FIELDS): a value set here means the new field.
    study.qc_weight = ml_collections.config_dict.placeholder(float)
    study.qc_weights = ml_collections.config_dict.placeholder(tuple)
    # One more C-ResNet run per width (model.ch) next to the shared-width one, so that
    # capacity and parameterization are not confounded: on digits ch=40 has 186k parameters
    # against U's 177k (ch=16, the shared width: 30k). Widths must divide by model.num_groups.
    study.resnet_energy_widths = (40,) if scale == "digits" else ()
    study.record = f"study_{scale}"  # results/<record>.json (ebm_vs_score.results)
    study.floor_draws = {"toy": 0, "digits": 200, "cifar": 20}[scale]  # real-vs-real draws
    study.extra_sampler = "" if scale == "cifar" else "mala"
    study.field_times = (0.01, 0.05, 0.2, 0.5)
    study.field_lim = 2.5
    study.field_grid = 21
    study.compilation_cache = True  # DIR/jax_cache: the seeds of a family compile once
    # Write REPORT.md from the finished runs only, training nothing (e.g. while other
    # processes still run seeds); unfinished runs show as "(k of n seeds)".
    study.report_only = False
    # Evaluate finished runs again with this code, keeping their training: every run whose
    # DONE.json names another commit (all of them off a clean checkout); the previous
    # evaluation files move to the run's eval/previous/ (study/run.py, archive_evaluation).
    study.reevaluate = False
    # Runs at once on the CPU, each in its own process pinned to its share of the cores
    # (study/workers.py): 0 = one per core (1 on GPU/TPU), 1 = one after another here.
    # Toy runs take seconds, less than a worker's start.
    study.workers = 1 if scale == "toy" else 0
    return study


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


def is_writer() -> bool:
    """Only process 0 writes the study's files; training and evaluation are collective."""
    return jax.process_index() == 0


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_seed{int(seed)}"


_QC_PREFIX = "qc_lam"


_WIDTH_PREFIX = "resnet_energy_ch"
_FORM_PREFIX = "eqm_energy_"


def variants(s: settings.Settings) -> list[str]:
    """The study's variants in report order: its families, with 'qc' replaced by one
    ``qc_lam<lambda>`` per value of ``study.qc_lambda_sweep`` when a sweep is set, one
    ``resnet_energy_ch<width>`` after 'resnet_energy' per ``study.resnet_energy_widths``, and
    'eqm_energy' by one ``eqm_energy_<form>`` per ``study.eqm_energy_forms``."""
    return _variants(_study_of(s))


def _study_of(s: settings.Settings) -> settings.StudySettings:
    study = settings.require(s).study
    if study is None:
        raise TypeError("these settings have no study section; pass the settings of a study "
                        "config (configs/study_*.py)")
    return study


def _variants(study: Any) -> list[str]:
    out = []
    for family in study.families:
        if family == "qc" and study.qc_lambda_sweep:
            out += [f"{_QC_PREFIX}{float(w):.0e}" for w in study.qc_lambda_sweep]
        elif family == "eqm_energy" and study.eqm_energy_forms:
            out += [f"{_FORM_PREFIX}{form}" for form in study.eqm_energy_forms]
        else:
            out.append(family)
        if family == "resnet_energy":
            out += [f"{_WIDTH_PREFIX}{int(w)}" for w in study.resnet_energy_widths]
    return out


def parse_variant(variant: str) -> tuple[str, float | None]:
    """(family, QC lambda of a sweep variant or None): 'qc_lam1e-03' -> ('qc', 0.001),
    'resnet_energy_ch40' -> ('resnet_energy', None), 'eqm_energy_l2' -> ('eqm_energy', None)."""
    if variant.startswith(_QC_PREFIX):
        return "qc", float(variant[len(_QC_PREFIX):])
    if variant.startswith(_WIDTH_PREFIX):
        return "resnet_energy", None
    if variant.startswith(_FORM_PREFIX):
        return "eqm_energy", None
    return variant, None


def variant_width(variant: str) -> int | None:
    """The C-ResNet width (model.ch) of a ``resnet_energy_ch<width>`` variant, else None."""
    return int(variant[len(_WIDTH_PREFIX):]) if variant.startswith(_WIDTH_PREFIX) else None


def variant_form(variant: str) -> str | None:
    """The energy form of an ``eqm_energy_<form>`` variant, else None."""
    return variant[len(_FORM_PREFIX):] if variant.startswith(_FORM_PREFIX) else None


# Seconds of a digits run (training and evaluation) per family: the mean per-run wall of
# seeds 3 and 4 on one AMD EPYC core each, the box otherwise quiet
# (results/study_digits_seeds34_report.md, Runs; EqM-E: the mean of its two forms, QC: of
# its two lambdas). Only their order is used: which run a study worker takes first.
_RUN_SECONDS = {"energy_matching": 1267, "energy": 751, "eqm_energy": 670, "qc": 364,
                "eqm": 326, "score": 212, "resnet_energy": 183}


def expected_cost(variant: str, width_ratio: float = 1.0) -> float:
    """A run's expected wall time relative to the others' (a C-ResNet width variant scales
    with its width over the base width, as measured: ch40 443 s, ch16 183 s). A family
    without a measurement counts as the costliest, so it starts first."""
    family, _ = parse_variant(variant)
    seconds = _RUN_SECONDS.get(family, max(_RUN_SECONDS.values()))
    return seconds * (width_ratio if variant_width(variant) else 1.0)


def _config_of(s: settings.Settings) -> ml_collections.ConfigDict:
    """The study config that ``s`` was read from (its JSON), as a ConfigDict."""
    return ml_collections.ConfigDict(settings.require(s).as_dict())


def run_settings(s: settings.Settings, variant: str, seed: int,
                 study_dir: str) -> settings.Settings:
    """The typed settings of run (variant, seed) of the study of ``s`` (:func:`run_config`)."""
    _study_of(s)
    return settings.from_config(run_config(_config_of(s), variant, seed, study_dir),
                                num_devices=jax.device_count())


def run_config(config: ml_collections.ConfigDict, variant: str, seed: int,
               study_dir: str) -> ml_collections.ConfigDict:
    """The config of run (variant, seed): the family's defaults + every shared study field."""
    family, weight = parse_variant(variant)
    run = config_base.get_config(config.study.scale, family)
    own = TIME_INVARIANT_FIELDS if family in TIME_INVARIANT_FAMILIES else ()
    for path, value in _leaves(config):
        if not path.startswith("study.") and path not in FAMILY_FIELDS and path not in own:
            _set(run, path, value)
    run.seed = int(seed)
    if variant_form(variant) is not None:
        run.model.energy_form, run.family = variant_form(variant), variant
    if family == "qc":
        run.training.qc_weight = float(config.study.qc_lambda if weight is None else weight)
    if variant_width(variant) is not None:
        run.model.ch = variant_width(variant)
    run.eval.classifier_dir = os.path.join(os.path.abspath(study_dir), "classifier")
    return run


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_section(config: ml_collections.ConfigDict) -> None:
    """Checks the study section of a study config (old field names already read as their
    new ones) and the config of every variant; one sentence on failure."""
    _check_names(config)
    _check_sweeps(config)
    for variant in _variants(config.study):
        try:
            settings.from_config(run_config(config, variant, config.study.seeds[0], "STUDY"),
                                 num_devices=jax.device_count())
        except ConfigError as e:
            raise ConfigError(f"study run {variant!r}: {e}") from None


def validate_study(s: settings.Settings,
                   study_dir: str) -> dict[tuple[str, int], settings.Settings]:
    """The settings of every run ``(variant, seed)`` of the study, after checking that the
    inception weights (if any) exist."""
    evaluate.check_inception_weights(s)
    return {(variant, seed): run_settings(s, variant, seed, study_dir)
            for variant in variants(s) for seed in _study_of(s).seeds}


def _check_names(config: ml_collections.ConfigDict) -> None:
    """study.scale, families, energy forms and seeds; no family-defining field set."""
    study = config.study
    _require(study.scale in config_base.SCALES,
             f"study.scale={study.scale!r} is not valid; choose one of {config_base.SCALES}")
    families, seeds = list(study.families), list(study.seeds)
    valid = STUDY_FAMILIES + TIME_INVARIANT_FAMILIES
    bad = [f for f in families if f not in valid]
    _require(families and not bad and len(set(families)) == len(families),
             f"study.families={tuple(families)} must be distinct names from {valid}")
    forms = list(study.get("eqm_energy_forms", ()))
    _require(len(set(forms)) == len(forms) and set(forms) <= set(EQM_ENERGY_FORMS)
             and (forms or "eqm_energy" not in families),
             f"study.eqm_energy_forms={tuple(forms)} must be distinct forms from "
             f"{EQM_ENERGY_FORMS} (the U-Net's energies), at least one with 'eqm_energy'")
    workers = study.get("workers", 1)
    _require(isinstance(workers, int) and workers >= 0,
             f"study.workers={workers!r} must be 0 (one worker process per CPU core), 1 (the "
             "runs one after another in this process) or a number of worker processes")
    _require(seeds and len(set(seeds)) == len(seeds) and all(isinstance(s, int) for s in seeds),
             f"study.seeds={tuple(seeds)} must be distinct integers, e.g. (0, 1, 2)")
    _require(config.sampling.method not in samplers.MH_METHODS,
             f"sampling.method={config.sampling.method!r} needs an energy, but the study "
             "samples every family with it; use e.g. 'euler_maruyama' and set "
             f"study.extra_sampler={config.sampling.method!r} for the energies")
    default = dict(_leaves(get_config(study.scale)))
    fixed = [p for p, v in _leaves(config) if p in FAMILY_FIELDS and v != default[p]]
    _require(not fixed, f"{fixed[0] if fixed else ''} is set by each family in a study and "
             "cannot be overridden; choose the families with study.families and QC's lambda "
             "with study.qc_lambda")


def _check_sweeps(config: ml_collections.ConfigDict) -> None:
    """The QC lambda sweep, the extra C-ResNet widths and the extra sampler."""
    study, families = config.study, list(config.study.families)
    weights = list(study.qc_lambda_sweep)
    default = list(_study_section(study.scale).qc_lambda_sweep)  # ignored without 'qc'
    _require(all(isinstance(w, int | float) and w > 0 for w in weights)
             and len({f"{float(w):.0e}" for w in weights}) == len(weights)
             and (not weights or "qc" in families or weights == default),
             f"study.qc_lambda_sweep={tuple(weights)} must be distinct positive numbers (e.g. "
             "(1e-4, 1e-3, 1e-2)) with 'qc' in study.families, or () for no sweep")
    widths = list(study.get("resnet_energy_widths", ()))
    groups = int(config.model.num_groups) or 1
    _require(all(isinstance(w, int) and w > 0 and w % groups == 0 for w in widths)
             and len(set(widths)) == len(widths),
             f"study.resnet_energy_widths={tuple(widths)} must be distinct positive integers "
             f"divisible by model.num_groups={groups} (e.g. (40,)), or () for none")
    extra = study.extra_sampler
    _require(extra == "" or extra in samplers.METHODS,
             f"study.extra_sampler={extra!r} is not valid; choose '' (none) or one of "
             f"{list(samplers.METHODS)}")


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


def study_differences(saved: dict, s: settings.Settings) -> list[str]:
    """Fields where ``config`` differs from the saved study config, except the run set.

    ``workdir.config_differences`` plus the sampling / eval / ``training.n_iters``
    fields it tolerates for single runs: in a study they would mix numbers of two configs.
    """
    diff = workdir_lib.config_differences(saved, s)
    before, now = _flat_json(saved), _flat_json(s.as_dict())
    diff += [f"{p}: {before.get(p)!r} -> {now.get(p)!r}" for p in sorted(set(before) | set(now))
             if p.startswith(_STRICT_PREFIXES) and before.get(p) != now.get(p)]
    return [d for d in diff if d.split(":")[0] not in STUDY_MUTABLE]


def check_study_dir(s: settings.Settings, study_dir: str) -> None:
    """Refuses a directory made by a different study config, or a single run's workdir.
    A study_config.json written with old field names (``config_base.RENAMED_FIELDS``)
    compares by the new names."""
    path = os.path.join(study_dir, "study_config.json")
    if not os.path.exists(path):
        _require(not os.path.exists(os.path.join(study_dir, "config.json")),
                 f"{study_dir} is the workdir of a single run (it has config.json), not a "
                 "study directory; use a new --workdir for the study")
        return
    from ebm_vs_score import workdir

    diff = study_differences(workdir.read_json(path), s)
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


def overrides(config: ml_collections.ConfigDict | dict, base: ml_collections.ConfigDict,
              skip: Sequence[str] = ()) -> list[str]:
    """``--config.path=value`` for every field where ``config`` differs from ``base``."""
    now = _flat_json(config if isinstance(config, dict) else _as_json(config))
    before = _flat_json(_as_json(base))
    return [f"--config.{p}={_cli_value(now[p])}" for p in sorted(now)
            if p not in skip and (p not in before or before[p] != now[p])]


def study_overrides(s: settings.Settings) -> list[str]:
    """``--config.path=value`` for every field where the study of ``s`` differs from
    ``configs/study_<scale>.py``."""
    return overrides(settings.require(s).as_dict(), get_config(_study_of(s).scale))


def family_overrides(s: settings.Settings, family: str, study_dir: str) -> list[str]:
    """``--config.path=value`` for every field where the run of ``family`` (first seed)
    differs from ``config_base.get_config(scale, family)``; fields the family config lacks
    are marked `` *``."""
    study = _study_of(s)
    base = config_base.get_config(study.scale, family)
    run = run_config(_config_of(s), family, study.seeds[0], study_dir)
    keys = {p for p, _ in _leaves(base)}
    return [o if o.split("=")[0][len("--config."):] in keys else o + " *"
            for o in overrides(run, base, skip=("seed",))]


def command_line(s: settings.Settings, study_dir: str) -> str:
    """The command of this invocation: ``sys.argv`` under ``ebm_vs_score.main``, else the
    equivalent ``main`` command rebuilt from the config (notebooks, tests)."""
    argv = sys.argv
    if argv and argv[0].endswith(os.path.join("ebm_vs_score", "main.py")):
        return "python -m ebm_vs_score.main " + " ".join(shlex.quote(a) for a in argv[1:])
    scale = _study_of(s).scale
    args = ["--mode=study", f"--config=configs/study_{scale}.py", f"--workdir={study_dir}"]
    args += study_overrides(s)
    return "python -m ebm_vs_score.main " + " ".join(shlex.quote(a) for a in args)


