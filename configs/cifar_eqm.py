"""cifar data, family 'eqm': Equilibrium Matching's implicit field (Wang & Du 2025).

The CIFAR U-Net (35.7M parameters) with its time input zeroed; NAG-GD with the paper's
eta = 0.0017, mu = 0.3 and 250 steps. Runs offline on photograph patches with
``--config.data.dataset=patches32``.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("cifar", "eqm")
    config.training.objective = "eqm"
    config.model.parameterization = "unconstrained"
    config.eqm.c_max, config.eqm.interp = 4.0, 0.8
    config.sampling.method = "nag"
    config.sampling.num_steps, config.sampling.step_size, config.sampling.mu = 250, 0.0017, 0.3
    return config
