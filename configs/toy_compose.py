"""Composing trained toy models (product, mixture, negation) against exact answers.

python -m ebm_vs_score.main --mode=compose --config=configs/toy_compose.py --workdir=DIR

Fields: ebm_vs_score/config_base.py (the component runs take seed, training.n_iters,
batch_size, log/checkpoint/sample_every and sde.name from here) and the `compose` section
(ebm_vs_score/config_base.py, compose_section). Every field is overridable, e.g.
--config.training.n_iters=300 --config.compose.num_samples=500.
"""

from ebm_vs_score import config_base


def get_config():
    config = config_base.get_config("toy", "score")
    # 2 x 3 component runs on 2 shared CPU cores: half the toy default budget.
    config.training.n_iters = 2000
    config.training.batch_size = 256
    config.training.checkpoint_every = 1000
    config.training.sample_every = 2000
    config.compose = config_base.compose_section()
    return config
