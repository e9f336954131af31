"""digits data, family 'eqm_energy': Equilibrium Matching's explicit energy EqM-E.

The digits U-Net F(x) (time input zeroed) defines E = -<F(x), x> (``model.energy_form='dot'``)
or E = ||F(x)||^2 / 2 ('l2'); the field grad E, by autodiff, is trained to
(eps - x) c(gamma) as in configs/digits_eqm.py (ebm_vs_score/eqm.py). With an energy, the
MH sampler 'langevin_mh' and AIS apply. On the scalar ResNet energy (with the restoring
base c_max ||x||^2 / 2): ``--config.model.parameterization=resnet_energy
--config.model.name=resnet_energy --config.model.energy_form=scalar``.
Fields: ``model.energy_form`` ('dot', the default, or 'l2'), ``eqm.*``, ``sampling.*``.
"""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("digits", "eqm_energy")
