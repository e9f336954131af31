"""The energy-vs-score study on CIFAR-10 (32x32), the scale of Salimans & Ho 2021 Table 1.

python -m ebm_vs_score.main --mode=study --config=configs/study_cifar.py --workdir=DIR \\
    --config.data.data_dir=TFDS_DIR --config.eval.inception_weights=inception_fid.npz

Accelerator budget (800k steps per run, 10k samples per model; launch/ says how to run on
GPUs or TPUs). FID/IS with the standard Inception network need eval.inception_weights
(ebm_vs_score/metrics/inception.py says where to get them); the offline-classifier FD/IS
are always computed. No extra sampler by default; add MALA for the energies with
--config.study.extra_sampler=mala. Every field: ebm_vs_score/config_base.py and
ebm_vs_score/study/plan.py.
"""

from ebm_vs_score import study


def get_config():
    return study.get_config("cifar")
