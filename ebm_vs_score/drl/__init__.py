"""Diffusion recovery likelihood (Gao et al., ICLR 2021): a ladder of EBMs.

* :mod:`.ladder`: the T + 1 noise levels and their scales (``make_schedule``);
* :mod:`.recovery`: the math: the recovery EBM's Langevin / MALA chains, the DRL loss,
  progressive sampling (Algorithm 2), long-run chains and the AIS NLL;
* :mod:`.long_run`: ``--mode=drl_long_run``: trains a DRL config with the train loop, then
  runs the learned level-0 chains far beyond K steps (Gao et al. Sec. 6);
* :mod:`.report`: the long run's JSON and figure.

The math's names are importable from the package (``drl.make_schedule``, ``drl.drl_sample``).
"""

from ebm_vs_score.drl.ladder import (
    DDPM_STEPS,
    MAX_LEVELS,
    STEP_SCHEDULES,
    DRLConditioning,
    DRLSchedule,
    ddpm_steps,
    make_schedule,
)
from ebm_vs_score.drl.recovery import (
    ENERGY_SCALES,
    BoundEnergy,
    DRLChain,
    conditional_langevin,
    conditional_potential,
    drl_nll_by_ais,
    drl_sample,
    long_run_chain,
    make_drl_loss,
    model_fns,
    run_chain,
)

__all__ = [
    "DDPM_STEPS",
    "ENERGY_SCALES",
    "MAX_LEVELS",
    "STEP_SCHEDULES",
    "BoundEnergy",
    "DRLChain",
    "DRLConditioning",
    "DRLSchedule",
    "conditional_langevin",
    "conditional_potential",
    "ddpm_steps",
    "drl_nll_by_ais",
    "drl_sample",
    "long_run_chain",
    "make_drl_loss",
    "make_schedule",
    "model_fns",
    "run_chain",
]
