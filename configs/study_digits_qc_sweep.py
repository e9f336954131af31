"""QC's lambda on digits (Chao et al. 2023, Table 2 claim): U and one QC run per lambda.

python -m ebm_vs_score.main --mode=study --config=configs/study_digits_qc_sweep.py \
    --workdir=DIR [--config.training.n_iters=1000]

The digits study (configs/study_digits.py: same network, objective, optimizer, sampler,
metrics) restricted to U (lambda = 0) and QC, with ``study.qc_lambda_sweep`` = 1e-4 ... 1: one
QC run per lambda and seed, resumable like any study (finished runs are reused; adding a
lambda adds runs). REPORT.md gets a "QC λ sweep" table (NAsym, FD, NLL, train steps/s per
lambda) and figures/qc_sweep.png.

What lambda means here (``losses.qc_regularizer`` and ``losses._with_regularizer``):
L_QC = std(t)^2 * Hutchinson(Asym) with ``training.qc_probes`` Rademacher probes per
example, divided by D exactly when the DSM term is (``training.reduce_mean``), so lambda is
the weight of L_QC relative to the std^2-weighted DSM term in the same units as Chao et
al.'s code (std^2 weighting, summed like DSM) -- the reduction does not change it. It does
depend on the SDE (VP here, std <= 1; VE in Chao et al., std up to 50, which sets the
range of the std^2 weight and of Asym) and on training from scratch (Chao et al. fine-tune
a pretrained U-NCSN++); the probe count and batch (16 slices at batch 8 or 1 at batch 128
there, 1 probe at batch 64 here) change the variance of L_QC's gradient, not its mean.
"""

from ebm_vs_score import study


def get_config():
    config = study.get_config("digits")
    config.study.families = ("score", "qc")
    config.study.qc_lambda_sweep = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    config.study.seeds = (0,)
    config.study.extra_sampler = ""  # no energies in a QC sweep
    config.study.record = "study_digits_qc_sweep"  # results/study_digits_qc_sweep.json
    return config
