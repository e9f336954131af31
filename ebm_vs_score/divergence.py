"""What to do after a training run diverged: advice that works (DESIGN.md rule 8).

A lower learning rate is offered only when ``optim.lr`` is plausible and the loss was finite
at first. An implausible lr is named with a value that trains (the scale's default). A loss
that was already non-finite before any update cannot be the learning rate's doing: the
advice names the float fields far from the scale's defaults instead.
"""

from __future__ import annotations

from typing import Any

from ebm_vs_score import settings

# Above this, a divergence is blamed on optim.lr itself, not on a step that is slightly too
# large: Adam trains these models at 2e-4 .. 1e-3 (config_base), and 0.1 is far outside.
MAX_PLAUSIBLE_LR = 0.1
# A float field this many times (or this fraction of) its default is named as a suspect
# when the loss is non-finite before any update (so optim.lr is not the cause).
_SUSPECT_FACTOR = 100.0
_SUSPECT_SECTIONS = ("sde", "model", "data", "training")


def _defaults_of(s: settings.Settings) -> dict[str, Any]:
    """config_base's defaults for the scale and family of ``s``, as a nested dict."""
    dataset = s.data.dataset
    scale = "toy" if s.is_toy else ("digits" if dataset == "digits" else "cifar")
    family = s.family if s.family in settings.families() else "score"
    return settings.family_defaults(scale, family)


def _suspects(s: settings.Settings) -> list[str]:
    """Float fields far (x100) from this scale's defaults, as ``field=value (default d)``."""
    defaults, now, out = _defaults_of(s), s.as_dict(), []
    for section in _SUSPECT_SECTIONS:
        for name, value in now[section].items():
            default = defaults.get(section, {}).get(name)
            if not isinstance(value, float) or not isinstance(default, float) or default == 0:
                continue
            ratio = abs(value / default) if value else 0.0
            if not (1 / _SUSPECT_FACTOR < ratio < _SUSPECT_FACTOR):
                out.append(f"{section}.{name}={value:g} (default {default:g})")
    return out


def advice(s: settings.Settings, last_checkpoint: int | None, *,
           before_any_update: bool = False) -> str:
    """What to do after a divergence, with a command-line flag that the workdir accepts.

    A lower learning rate is offered only when ``optim.lr`` is plausible and the loss was
    finite at first; an implausible lr is named with a working value instead, and a loss
    that was non-finite before any update names the fields far from their defaults.
    """
    if last_checkpoint is None:
        where = (f"the run stopped before its first checkpoint (due at step "
                 f"{s.training.checkpoint_every}), so nothing was saved")
        rerun = "rerun it to start again"
    else:
        where = f"the run stopped and its last checkpoint (step {last_checkpoint}) is kept"
        rerun = f"rerun it to resume from step {last_checkpoint}"
    if before_any_update:
        suspects = _suspects(s)
        named = ("check " + ", ".join(suspects) if suspects
                 else "check the data and the sde.* and model.* values")
        return (f"{where}; the loss was non-finite before any update, so optim.lr is not the "
                f"cause: {named}, fix it in the same command and {rerun}")
    lr = float(s.optim.lr)
    if not lr <= MAX_PLAUSIBLE_LR:
        default = float(_defaults_of(s)["optim"]["lr"])
        return (f"{where}; optim.lr={lr:g} is far above the learning rates Adam trains these "
                f"models with (at most {MAX_PLAUSIBLE_LR:g}): add --config.optim.lr={default:g} "
                f"(this scale's default) to the same command and {rerun}")
    return (f"{where}; add --config.optim.lr={lr / 10:g} (or raise optim.warmup) to the same "
            f"command and {rerun}")
