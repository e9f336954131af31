"""``--mode=study``: should a diffusion model parameterize the energy or the score?

``python -m ebm_vs_score.main --mode=study --config=configs/study_digits.py --workdir=DIR``
trains the families U (``score``), C (``energy``: E = ||F||^2/2 on the same U-Net),
C-ResNet (``resnet_energy``: a scalar ResNet energy; on toy data the scalar MLP energy,
reported as "C-MLP") and QC (``qc``: U trained with DSM + lambda L_QC) with the same
backbone, objective, optimizer, steps and seeds; samples every model with the same sampler
and number of steps (and, for energies only, ``study.extra_sampler``, e.g. MALA, reported
in extra rows); evaluates all metrics with :func:`ebm_vs_score.evaluate.evaluate`; and
writes ``DIR/REPORT.md``. ``study.qc_lambda_sweep=(1e-4, 1e-3, ...)`` adds a QC lambda sweep
(``configs/study_digits_qc_sweep.py``): one QC run per lambda, a table and a figure. The
digits study also trains the time-invariant families EqM, EqM-E (dot, l2) and Energy
Matching (issue #26), each with its own sampler, and reports their NAsym, AIS, sample
quality against NFE and OOD AUROC (:mod:`.report_time_invariant`).

* :mod:`.plan`: the study config, its variants and the runs' configs and settings
  (the study's side of the one crossing), validation, commands;
* :mod:`.run`: each run trained (resuming), evaluated and marked done; ``run_study``;
* :mod:`.workers`: the runs in worker processes pinned to their own CPU cores
  (``study.workers``);
* :mod:`.report`: figures and REPORT.md;
* :mod:`.claims` and :mod:`.verdicts`: the papers' claims (the seed papers' and Equilibrium
  Matching's), their paired per-seed intervals and verdicts in the study record
  ``results/study_<scale>.json``, and the tables rendered from it.
"""

from ebm_vs_score.study.plan import (
    ENERGY_FAMILIES,
    FAMILY_FIELDS,
    STUDY_FAMILIES,
    TIME_INVARIANT_FAMILIES,
    Family,
    StudyError,
    check_section,
    check_study_dir,
    command_line,
    family_info,
    get_config,
    overrides,
    parse_variant,
    run_config,
    run_name,
    run_settings,
    study_differences,
    validate_study,
    variant_form,
    variants,
)
from ebm_vs_score.study.report import make_figures, write_report
from ebm_vs_score.study.run import (
    RunRecord,
    checkpoint_steps,
    read_done,
    run_one,
    run_study,
    steady_steps_per_sec,
    timed_training,
    training_speed,
)

__all__ = [
    "ENERGY_FAMILIES",
    "FAMILY_FIELDS",
    "STUDY_FAMILIES",
    "TIME_INVARIANT_FAMILIES",
    "Family",
    "RunRecord",
    "StudyError",
    "check_section",
    "check_study_dir",
    "checkpoint_steps",
    "command_line",
    "family_info",
    "get_config",
    "make_figures",
    "overrides",
    "parse_variant",
    "read_done",
    "run_config",
    "run_name",
    "run_settings",
    "run_one",
    "run_study",
    "steady_steps_per_sec",
    "study_differences",
    "timed_training",
    "training_speed",
    "validate_study",
    "variant_form",
    "variants",
    "write_report",
]
