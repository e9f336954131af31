"""digits data, family 'drl': an energy trained by diffusion recovery likelihood.

The authors' recipe (Gao et al. 2021, github.com/ruiqigao/recovery_likelihood): T = 6
levels, K = 30 unadjusted Langevin steps of s_t^2 = b^2 c_t sigma_{t+1}^2 with b^2 = 2e-4
and their level factor c_t, the energy = raw network / s_t^2 (``drl.energy_scale='step'``,
their ``log_prob = net / b0``) and the loss on the raw network with their sigma_1 /
sigma_{t+1} weights; their network's head (ReLU, sum-pool, inner product with a projection
of the time embedding: ``model.energy_head='sum'``) and no normalization
(``model.num_groups=0``), on the digits C-ResNet's widths (30k parameters, not their
~35M) and without their spectral norm. No base term (``model.energy_base='none'``): the
conditional's quadratic term is the restoring force at every level but the top.

What was tried on digits before this recipe, and what it gave: docs/notes/drl.md.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("digits", "drl")
    config.drl.step_schedule = "authors"
    config.drl.b_squared = 2e-4
    config.drl.metropolis = False
    config.drl.num_steps = 30
    config.drl.energy_scale = "step"
    config.model.energy_head = "sum"
    config.model.num_groups = 0
    config.model.energy_base = "none"
    config.training.n_iters = 2000
    config.training.sample_every = 250
    config.training.checkpoint_every = 250
    config.training.log_every = 50
    return config
