"""digits data, family 'energy_matching'.
Energy Matching (Balcerak et al., NeurIPS 2025): one potential V(x) on the digits U-Net.

The method, its training and sampling: ebm_vs_score/energy_matching.py and
samplers/descent.py.
Fields: ``energy_matching.*`` (time_cutoff, lambda_cd, num_gibbs, dt, eps_max,
phase1_steps), ``model.energy_form``, ``sampling.*``.
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("digits", "energy_matching")
