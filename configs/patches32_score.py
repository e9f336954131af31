"""CPU-sized offline twin of cifar_score.py: the same job on 32x32x3 photograph patches.

Same U-Net shape (ch_mult (1,2,2,2), 2 res blocks, attention at 16x16), same VP SDE, same
loss and data scaling as ``cifar_score.py``; only the sizes a 2-core CPU can afford differ:
width 32 instead of 128 (2.2M instead of 35.7M parameters) with 8 GroupNorm groups (4
channels per group, as at width 128 with 32 groups; 32 groups of ONE channel make GroupNorm
an instance norm that removes each channel's spatial mean in every block, and that run's
samples drifted further into saturated flat colours: README, patches paragraph),
batch 16, a 100-step warmup,
36 samples of 200 Euler-Maruyama steps, and an ODE likelihood of 64 test patches with one
Hutchinson probe at solver tolerance 1e-3 (the full protocol's 1e-5 costs hours per batch
of 3072-dimensional images on a CPU). The README's patch samples and bits/dim come from it.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("cifar", "score")
    config.data.dataset = "patches32"
    config.model.ch = 32
    config.model.num_groups = 8
    config.training.batch_size = 16
    config.training.n_iters = 2000
    config.training.log_every = 100
    config.training.checkpoint_every = 200
    config.training.sample_every = 100_000
    config.optim.warmup = 100
    config.sampling.num_samples = 36
    config.sampling.num_steps = 200
    config.eval.num_examples = 64
    config.eval.batch_size = 64
    config.eval.nll_probes = 1
    config.eval.nll_rtol = 1e-3
    config.eval.nll_atol = 1e-3
    config.eval.asym_levels = 4
    return config
