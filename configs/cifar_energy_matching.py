"""cifar data, family 'energy_matching'.
Energy Matching (Balcerak et al., NeurIPS 2025): one potential V(x) on the CIFAR U-Net.

The method, its training and sampling: ebm_vs_score/energy_matching.py and
samplers/descent.py.
Runs offline with ``--config.data.dataset=patches32``.
Fields: ``energy_matching.*`` (time_cutoff, lambda_cd, num_gibbs, dt, eps_max,
phase1_steps), ``model.energy_form``, ``sampling.*``.
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("cifar", "energy_matching")
