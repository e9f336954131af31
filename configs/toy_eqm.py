"""toy data, family 'eqm'.
Equilibrium Matching (Wang & Du 2025): a time-invariant field f(x) on the 3x128 MLP,
sampled by descent.

The method, its training and sampling: ebm_vs_score/eqm.py and samplers/descent.py.
Fields: ``eqm.*`` (c(gamma) and the path), ``sampling.*`` (gd / nag, adaptive ``tol``).
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("toy", "eqm")
