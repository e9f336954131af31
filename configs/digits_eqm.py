"""digits data, family 'eqm': Equilibrium Matching's implicit field (Wang & Du 2025).

The digits U-Net with its time input zeroed is the field f(x) ~ (eps - x) c(gamma) on the
flow-matching path (ebm_vs_score/eqm.py); samples are 100 Nesterov steps (eta = 0.005,
mu = 0.3) from N(0, I). MALA is refused: the implicit field has no energy.
Fields: ``eqm.*`` (c(gamma) and the path), ``sampling.*`` (gd / nag, adaptive ``tol``).
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("digits", "eqm")
