"""digits data, family 'eqm_energy': Equilibrium Matching's explicit energy EqM-E.

The digits U-Net F(x) (time input zeroed) defines E = -<F(x), x> (``model.energy_form='dot'``)
or E = ||F(x)||^2 / 2 ('l2'); the field grad E, by autodiff, is trained to
(eps - x) c(gamma) as in configs/digits_eqm.py (ebm_vs_score/eqm.py). With an energy, the
MH sampler 'langevin_mh' and AIS apply. On the scalar ResNet energy (with the restoring
base c_max ||x||^2 / 2): ``--config.model.parameterization=resnet_energy
--config.model.name=resnet_energy --config.model.energy_form=scalar``.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("digits", "eqm_energy")
    config.training.objective = "eqm"
    config.model.parameterization = "conservative"  # an energy from the vector network
    config.model.energy_form = "dot"  # the paper's better explicit form; or 'l2'
    config.eqm.c_max, config.eqm.interp = 4.0, 0.8
    config.sampling.method = "nag"
    return config
