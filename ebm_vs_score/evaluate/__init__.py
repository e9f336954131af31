"""``--mode=eval`` and ``--mode=sample``: metrics and samples of a trained checkpoint.

Evaluators see a model only through its ``score_fn(params, x, t)`` /
``energy_fn(params, x, t)`` or a ``sample_fn(params, key)`` and their own plain arguments
(big_vision's "evaluators see a predict_fn"), never the config; :mod:`.runner` is the one
place that reads the config and calls them.

* :mod:`.fields`: Asym / NAsym over noise levels (Chao et al. 2023, Table 2), the exact
  Fisher divergence of mixture toys, the curl of 2-D score fields;
* :mod:`.nll`: one NLL protocol for the probability-flow ODE and AIS (same
  dequantized points, same bits/dim offset, divergence and standard errors stated);
* :mod:`.samples`: samples in chunks with their NFE/acceptance; MMD and sliced Wasserstein
  (toys); FD / IS / precision / recall in an offline classifier's features and FID / IS
  with Inception (images);
* :mod:`.files`: the eval JSON (atomic), ``metrics.jsonl`` lines, TensorBoard, sample files;
* :mod:`.runner`: ``evaluate(config, workdir)``, ``evaluate_sampler``, ``sample``;
* :mod:`.fid_stats` (``--mode=fid_stats``) and :mod:`.energy_vs_ode`
  (``--mode=energy_vs_ode``), imported by ``main`` only.

Results go to ``WORKDIR/eval/step_N.json`` (per-level lists and ``nll_divergence``
included), ``WORKDIR/metrics.jsonl`` (``split='eval'``, scalars) and TensorBoard; the
samples to ``WORKDIR/eval/samples_step_N_<method>.{npz,png}``.
"""

from ebm_vs_score.evaluate.fields import (
    asymmetry_metrics,
    fisher_metrics,
    rotation_density,
    score_field_grid,
)
from ebm_vs_score.evaluate.files import (
    eval_path,
    samples_path,
    scalars,
    write_json_atomic,
)
from ebm_vs_score.evaluate.nll import (
    Protocol,
    ais_nll_metrics,
    bits_per_dim,
    energy_ode_agreement,
    ode_nll,
    ode_nll_metrics,
    protocol_points,
)
from ebm_vs_score.evaluate.runner import (
    EvalContext,
    check_inception_weights,
    draw_samples,
    evaluate,
    evaluate_sampler,
    inception_metrics,
    likelihood_protocol,
    model_metrics,
    offline_classifier,
    prepare,
    restore_params,
    sample,
    sampler_metrics,
    true_density,
)
from ebm_vs_score.evaluate.samples import classifier_metrics, toy_sample_quality

__all__ = [
    "EvalContext",
    "Protocol",
    "ais_nll_metrics",
    "asymmetry_metrics",
    "bits_per_dim",
    "check_inception_weights",
    "classifier_metrics",
    "draw_samples",
    "energy_ode_agreement",
    "eval_path",
    "evaluate",
    "evaluate_sampler",
    "fisher_metrics",
    "inception_metrics",
    "likelihood_protocol",
    "model_metrics",
    "ode_nll",
    "ode_nll_metrics",
    "offline_classifier",
    "prepare",
    "protocol_points",
    "restore_params",
    "rotation_density",
    "sample",
    "sampler_metrics",
    "samples_path",
    "scalars",
    "score_field_grid",
    "toy_sample_quality",
    "true_density",
    "write_json_atomic",
]
