"""digits data, family 'drl': C-ResNet energy trained by diffusion recovery likelihood.

Langevin settings as configs/toy_drl.py, not the paper's. With the authors' step schedule
(b^2 = 2e-4 times the level factor sbar_t / sbar_0) the level-0 step is 0.005 per pixel,
the chains hardly move in K = 30 steps, and a 400-step run sampled saturated noise. Here
s_t = b sigma_{t+1} (the paper's Sec. 4 form) with b^2 = 0.2 and a MALA correction
(acceptance ~0.82 in training). K = 15 covers the same chain length sqrt(K) b sigma as
K = 30 with b^2 = 0.1; in 300-step pilots both gave the same per-level sample statistics
(progressive-sample pixel std 6.2 vs 0.76 for data), at 0.45 vs 0.65 s/step on 2 CPU cores.

Known limitation (measured, 2 CPU cores): 2000 steps (21 min) do NOT give digits. The
energy gap E(y^-) - E(y^+) grows steadily (to ~250 nats at step 2000). At step 939 the
learned level-0 conditional already ranks the clean y above its start x_1 by ~88 nats, and
-grad E at x_1 points towards y (cosine 0.6), but 15-100 MALA steps with b^2 of 0.2 or 1
do not reach it, so every level adds noise instead of removing it (progressive-sample
pixel std ~5). T = 30 levels looked the same after 200 steps.

These measurements predate ``model.energy_base='gaussian'`` (now the default): they used
the bounded C-ResNet head, which grows the sample scale by 1/a_t per level (issue #12).
With the base term a 2000-step probe gave per-level std 0.85-1.17 (issue #12), not digits.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("digits", "drl")
    config.drl.step_schedule = "sigma"
    config.drl.step_size = 0.2
    config.drl.metropolis = True
    config.drl.num_steps = 15
    config.training.sample_every = 500
    config.training.checkpoint_every = 500
    return config
