"""2-D toy data, an MLP energy trained by diffusion recovery likelihood (Gao et al. 2021).

On 2-D data the paper's step sizes (authors' level factor, b^2 = 2e-4) do not mix: the
chains use the paper's Sec. 4 schedule s_t = b sigma_{t+1} with b^2 = 0.1 and a
Metropolis-Hastings correction instead (docs/notes/drl.md has the measurements).
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("toy", "drl")
    config.drl.step_schedule = "sigma"
    config.drl.b_squared = 0.1
    config.drl.metropolis = True
    config.training.n_iters = 20_000
    config.training.sample_every = 5_000
    config.training.checkpoint_every = 5_000
    return config
