"""digits data, family 'score' (see ebm_vs_score/config_base.py for every field)."""

from ebm_vs_score import config_base


def get_config():
    return config_base.get_config("digits", "score")
