"""Conditional sampling with known coordinates (inpainting), for every family.

``python -m ebm_vs_score.main --mode=inpaint --config=configs/digits_score.py --workdir=DIR``

* :mod:`.sampling`: the math: score_sde's replacement method and the conditional model at
  each noise level (Song et al. 2021, App. I.2; Du et al. 2023);
* :mod:`.run`: ``--mode=inpaint``: masked test digits completed by each method and scored
  by the offline digits classifier (``run_inpaint``);
* :mod:`.report`: ``REPORT.md`` and the figure.

The math's names are importable from the package (``inpaint.replacement_sample``).
"""

from ebm_vs_score.inpaint.sampling import (
    conditional,
    gaussian_conditional,
    held,
    merge,
    replacement_sample,
)

__all__ = ["conditional", "gaussian_conditional", "held", "merge", "replacement_sample"]
