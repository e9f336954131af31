"""The energy-vs-score study on sklearn digits (8x8), sized for a 2-core CPU.

python -m ebm_vs_score.main --mode=study --config=configs/study_digits.py --workdir=DIR

Budget per run: 2000 steps at batch 64 of the 176k-parameter U-Net (C is about 2-3x slower
per step: its score is a gradient), 250 Euler-Maruyama steps for 297 samples (the size of
the test split, so FD/precision/recall compare equal sets), MALA for the energies, and the
ODE NLL of the first 64 test digits at tolerance 1e-4 with 4 Hutchinson probes,
and for the energies AIS on the same dequantized digits with the same bits/dim offset
(--config.eval.ais=False drops it). Energy Matching is the costliest run, then C
(BENCHMARKS.md, the digits study's cost). Five seeds (about 44 min each on 2 cores, BENCHMARKS.md);
fewer with --config.study.seeds=(0,1,2). The headline claim alone (U and C, ten seeds in
about an hour): --config.study.families='("score","energy")'
--config.study.seeds='(0,1,2,3,4,5,6,7,8,9)' (the default QC lambda sweep is ignored without
'qc'). The families issue 24 names (U, C, C-ResNet, QC), three seeds: 42 minutes.
On the CPU the runs go in one worker process per core, each pinned to its core
(study.workers=0; =1 runs them one after another in this process).
Every field: ebm_vs_score/config_base.py (shared by all runs) and
ebm_vs_score/study/plan.py (the `study` section, the digits budget). The QC lambda sweep:
configs/study_digits_qc_sweep.py.
"""

from ebm_vs_score import study


def get_config():
    return study.get_config("digits")
