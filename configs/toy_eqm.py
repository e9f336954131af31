"""toy data, family 'eqm': Equilibrium Matching's implicit field (Wang & Du 2025).

A 3x128 MLP f(x) with its time input zeroed, trained on x_gamma = gamma x + (1 - gamma) eps
to (eps - x) c(gamma), c = 4 min(1, (1 - gamma) / 0.2) (ebm_vs_score/eqm.py), and sampled
by Nesterov descent from N(0, I) noise (samplers/descent.py). Every other field: config_base.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("toy", "eqm")
    config.training.objective = "eqm"  # time-invariant: sde.* is unused
    config.model.parameterization = "unconstrained"  # the implicit field, no energy
    config.eqm.c_max, config.eqm.interp = 4.0, 0.8
    config.sampling.method = "nag"  # or 'gd', 'langevin'; tol > 0 stops early per example
    config.sampling.num_steps, config.sampling.step_size, config.sampling.mu = 200, 0.02, 0.3
    return config
