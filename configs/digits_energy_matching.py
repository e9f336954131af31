"""digits data, family 'energy_matching': Energy Matching (Balcerak et al., NeurIPS 2025).

One time-independent potential V(x) = -<F(x), x> on the digits U-Net (time input zeroed;
``model.energy_form`` as in EqM-E). Phase 1 (the first ``energy_matching.phase1_steps``)
is flow matching on mini-batch OT pairs with weight 1 up to t = time_cutoff, falling to 0
at the data; phase 2 adds lambda_cd (V(data) - V(negatives)), negatives from num_gibbs
Langevin steps x - dt grad V + sqrt(2 dt eps(t)) z started half at data, half at noise
(ebm_vs_score/energy_matching.py). Samples: Langevin with eps(t) = 0 before the cutoff,
rising to eps_max (samplers/descent.py).
Fields: ``energy_matching.*`` (time_cutoff, lambda_cd, num_gibbs, dt, eps_max,
phase1_steps), ``model.energy_form``, ``sampling.*``.
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("digits", "energy_matching")
