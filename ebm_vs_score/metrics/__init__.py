"""Metrics of the energy-vs-score study.

* `distances`: Frechet distance, MMD, sliced Wasserstein, improved precision/recall and the
  Inception score on feature arrays (numpy/scipy; JAX only to draw from a PRNG key).
* `classifier`: the offline CNN feature network (FID/IS analogue for digits-size data).
* `inception`: the FID Inception-v3 in Flax, loaded from a local weights file.
* `toy`: exact Fisher divergence and exact NLL for Gaussian-mixture toys.
"""

from ebm_vs_score.metrics.classifier import (
    Classifier,
    features_and_logits,
    get_classifier,
    get_digits_classifier,
)
from ebm_vs_score.metrics.distances import (
    PrecisionRecall,
    feature_statistics,
    frechet_distance,
    inception_score,
    knn_radii,
    manifold_coverage,
    median_bandwidth,
    mmd,
    precision_recall,
    sliced_wasserstein,
)
from ebm_vs_score.metrics.inception import (
    Inception,
    InceptionOutputs,
    inception_outputs,
    load_inception,
)
from ebm_vs_score.metrics.toy import NLLReport, exact_nll, fisher_divergence, nll_report

__all__ = [
    "Classifier",
    "Inception",
    "InceptionOutputs",
    "NLLReport",
    "PrecisionRecall",
    "exact_nll",
    "feature_statistics",
    "features_and_logits",
    "fisher_divergence",
    "frechet_distance",
    "get_classifier",
    "get_digits_classifier",
    "inception_outputs",
    "inception_score",
    "knn_radii",
    "load_inception",
    "manifold_coverage",
    "median_bandwidth",
    "mmd",
    "nll_report",
    "precision_recall",
    "sliced_wasserstein",
]
