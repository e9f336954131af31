"""The energy-vs-score study on the 2-D 8-Gaussians toy (exact density and scores).

python -m ebm_vs_score.main --mode=study --config=configs/study_toy.py --workdir=DIR

Fields: ebm_vs_score/config_base.py (shared by every run) and ebm_vs_score/study/plan.py (the
`study` section). Every field is overridable, e.g. --config.study.seeds=(0,1).
"""

from ebm_vs_score import study


def get_config():
    return study.get_config("toy")
