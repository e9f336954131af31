"""toy data, family 'eqm': Equilibrium Matching's implicit field (Wang & Du 2025).

A 3x128 MLP f(x) with its time input zeroed, trained on x_gamma = gamma x + (1 - gamma) eps
to (eps - x) c(gamma), c = 4 min(1, (1 - gamma) / 0.2) (ebm_vs_score/eqm.py), and sampled
by Nesterov descent from N(0, I) noise (samplers/descent.py). Every other field: config_base.
Fields: ``eqm.*`` (c(gamma) and the path), ``sampling.*`` (gd / nag, adaptive ``tol``).
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("toy", "eqm")
