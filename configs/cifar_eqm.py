"""cifar data, family 'eqm': Equilibrium Matching's implicit field (Wang & Du 2025).

The CIFAR U-Net (35.7M parameters) with its time input zeroed; NAG-GD with the paper's
eta = 0.0017, mu = 0.3 and 250 steps. Runs offline on photograph patches with
``--config.data.dataset=patches32``.
Fields: ``eqm.*`` (c(gamma) and the path), ``sampling.*`` (gd / nag, adaptive ``tol``).
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("cifar", "eqm")
