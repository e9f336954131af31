"""ebm_vs_score."""
