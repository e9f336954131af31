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

What was tried on digits (2 CPU cores shared with a study run; samples in the README):

* C-ResNet (GroupNorm, mean-pool head), ``energy_scale='sigma'`` (E in nats), s_t = b
  sigma_{t+1} with b^2 = 0.2, K = 15 MALA steps: 2000 steps gave saturated noise (FD 31.8);
  with the published head the sample scale grew by 1/a_t per level, with the base term
  the per-level std stayed at 0.85-1.17 but the samples were noise.
* The same with the authors' b^2 = 2e-4 and K = 30: the chains did not move. The cause
  is the energy's scale, not the step: with E = N / (sigma c_in) the drift (s^2/2) grad E
  is ~1e-4 grad N, so N must output ~1e4x larger values first; the authors divide N by
  s_t^2, which makes the drift grad N / 2 whatever b^2 is.
* ``energy_scale='step'``, 1000 steps with the normalized mean-pool head and 500 with the
  sum head: the chains moved (0.7 sigma per coordinate) but the samples stayed saturated
  noise. The loss then weighted level t by 1 / s_t^2 (47,724 at level 0 against 52-579
  above), so level 0 got ~90% of the gradient; the loss now weights by s_t^2 as well
  (the authors' loss on N).
* This config (that loss, the sum head, no normalization): digit shapes by step 750; at
  2000 steps FD 10.8 against 9.1 for 64 real digits (README). Which of the loss weights
  and the head matters more was not separated.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("digits", "drl")
    config.drl.step_schedule = "authors"
    config.drl.step_size = 2e-4
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
