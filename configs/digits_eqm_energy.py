"""digits data, family 'eqm_energy'.
EqM-E (Wang & Du 2025): an explicit energy on the digits U-Net, f = grad E.

The method, its training and sampling: ebm_vs_score/eqm.py and parameterization.py.
Fields: ``model.energy_form`` ('dot', the default, or 'l2'), ``eqm.*``, ``sampling.*``.
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("digits", "eqm_energy")
