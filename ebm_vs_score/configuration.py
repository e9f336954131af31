"""Names kept for callers of the old module: validation and the workdir policy.

Validation is :func:`ebm_vs_score.settings.validate` (the one config boundary); writing a
config to the workdir and the resume policy are in :mod:`ebm_vs_score.workdir`. Every
refusal is a :class:`ebm_vs_score.errors.ConfigError` with one sentence that names the
field, the bad value and the valid choices.
"""

from __future__ import annotations

from ebm_vs_score import samplers, settings
from ebm_vs_score.errors import ConfigError  # noqa: F401
from ebm_vs_score.workdir import check_workdir, config_differences, save  # noqa: F401

validate = settings.validate
is_toy = settings.is_toy
SAMPLERS = samplers.METHODS
MH_SAMPLERS = samplers.MH_METHODS
