"""digits data, family 'resnet_energy' (see ebm_vs_score/config_base.py for every field).

The energy is E = c_in^2 ||x||^2 / 2 + N(c_in x, log sigma) / (sigma c_in)
(``model.energy_base='gaussian'``, the default: a restoring force far from the data, see
ebm_vs_score/parameterization.py). ``--config.model.energy_base=none`` gives Salimans & Ho's
model C as published, whose normalized head is bounded along rays (docs/notes/energy_base.md).
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("digits", "resnet_energy")
