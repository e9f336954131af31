"""Composing trained models: products, mixtures and negations of energies and scores.

``python -m ebm_vs_score.main --mode=compose --config=configs/toy_compose.py --workdir=DIR``

* :mod:`.operators`: the composition math (Du et al. 2023), pure functions of callables;
* :mod:`.run`: ``--mode=compose``: component runs trained, composed, sampled and scored
  against the exact composed densities of 2-D toys (``run_compose``);
* :mod:`.report`: ``REPORT.md`` and the figure.

The math's names are importable from the package (``compose.Component``, ``compose.product``).
"""

from ebm_vs_score.compose.operators import (
    OPERATORS,
    Component,
    EnergyFn,
    ScoreFn,
    compose,
    exact_log_density,
    mixture,
    negation,
    product,
)

__all__ = [
    "OPERATORS",
    "Component",
    "EnergyFn",
    "ScoreFn",
    "compose",
    "exact_log_density",
    "mixture",
    "negation",
    "product",
]
