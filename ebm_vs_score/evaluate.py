"""``--mode=eval`` and ``--mode=sample``: metrics and samples of a trained checkpoint.

Evaluation sees a model only through its bound ``score_fn(x, t)`` / ``energy_fn(x, t)``
(big_vision's "evaluators see a predict_fn"), so every family is measured the same way.
Each metric group is one small function returning a flat dict:

every data type
  * ``asymmetry_metrics``: Asym / NAsym averaged over data and ``eval.asym_levels`` noise
    levels (Chao et al. 2023, Table 2), with the per-level values;
  * ``ais_metrics`` (energies, ``eval.ais``): log Z by annealed importance sampling at the
    smallest noise level and the NLL it implies;
  * ``sample_metrics``: ``eval.num_samples`` samples (default ``eval.num_examples``) from
    the configured sampler, in chunks of ``eval.batch_size``, with their NFE (and MCMC
    acceptance); the quality metrics below use the finite samples (images clipped to
    [-1, 1]) and ``sample_nonfinite`` reports the fraction left out;
toy data (known density)
  * ``toy_nll_metrics``: NLL in nats by the probability-flow ODE (Song et al. 2021), next to
    the true NLL when the toy has a closed-form density (``metrics.nll_report``: the gap
    estimates KL(p || q));
  * ``fisher_metrics``: exact Fisher divergence E||s - grad log p_t||^2 per noise level for
    Gaussian-mixture toys, and its sigma^2-weighted mean (the DSM weighting);
  * ``toy_sample_quality``: MMD and sliced Wasserstein distance between samples and data;
images
  * ``image_nll_metrics``: test NLL in bits/dim with uniform dequantization;
  * ``classifier_metrics``: offline Frechet distance ("FD"), Inception-score analogue
    ("IS") and k-NN precision/recall in the feature space of a small classifier trained on
    the dataset's own train split (``metrics.get_classifier``, cached in
    ``eval.classifier_dir``, default ``WORKDIR/classifier``);
  * ``inception_metrics``: FID / IS with the standard Inception network when
    ``eval.inception_weights`` is set (skipped with a log line otherwise).

Optional config fields read with defaults (the study configs set them):
``eval.num_samples``, ``eval.classifier_dir``, ``eval.classifier_steps``,
``eval.nll_examples``, ``eval.nll_rtol``, ``eval.nll_atol``.

Every group jits its computation with the params as an argument (never as constants), so
compilations are fast and, with JAX's persistent cache, shared by runs of the same shapes.

Results go to ``WORKDIR/eval/step_N.json`` (written atomically; per-level lists included),
``WORKDIR/metrics.jsonl`` (``split='eval'``, scalars) and TensorBoard; the samples to
``WORKDIR/eval/samples_step_N_<method>.{npz,png}``.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import types
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ebm_vs_score import builders, checkpoints, configuration, plotting, train
from ebm_vs_score import data as data_lib
from ebm_vs_score import parameterization as param_lib

Results = dict[str, Any]
MIXTURE_TOYS = ("8gaussians", "gmm")  # closed-form noised scores: exact Fisher divergence
_ASYM_EXAMPLES = 256


class EvalContext(NamedTuple):
    """What every metric group needs: the model, its checkpoint and the evaluation data."""

    config: ml_collections.ConfigDict
    workdir: str
    model: builders.Model
    step: int
    params: Any
    data: np.ndarray


def _eval_field(config, name: str, default: Any) -> Any:
    """An optional ``eval.*`` field (set by the study configs), or ``default``."""
    value = config.eval.get(name, None)
    return default if value is None else value


# ----------------------------------------------------------------------------------------
# Checkpoints and files
# ----------------------------------------------------------------------------------------


def restore_params(config, workdir: str, model: builders.Model, step: int = -1):
    """(step, EMA params) of the checkpoint ``step`` (-1: latest) in ``workdir``."""
    ckpt = checkpoints.Checkpointer(workdir)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {ckpt.directory}; train first with --mode=train and the "
                "same --config and --workdir")
        if step != -1 and step not in steps:
            raise FileNotFoundError(f"eval.checkpoint={step} is not in {ckpt.directory}; "
                                    f"available steps: {steps}")
        tx = train.make_optimizer(config.optim)
        template = train.init_state(model, tx, config.seed)
        state = ckpt.restore(template, None if step == -1 else step)
    finally:
        ckpt.close()
    params = state.ema_params if config.sampling.use_ema else state.params
    return int(state.step), params


def eval_path(workdir: str, step: int, method: str | None = None) -> str:
    """``WORKDIR/eval/step_N.json``, or ``step_N_<method>.json`` for a second sampler."""
    suffix = "" if method is None else f"_{method}"
    return os.path.join(workdir, "eval", f"step_{step:08d}{suffix}.json")


def samples_path(workdir: str, step: int, method: str, ext: str = "png") -> str:
    """Where :func:`evaluate` puts the samples of ``method`` (``png`` or ``npz``)."""
    return os.path.join(workdir, "eval", f"samples_step_{step:08d}_{method}.{ext}")


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON through a temporary file and ``os.replace``: never half-written."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
    os.replace(tmp, path)


def scalars(results: Results) -> dict[str, float]:
    """The scalar entries of a results dict (per-level lists left out)."""
    return {k: float(v) for k, v in results.items() if isinstance(v, int | float)}


# ----------------------------------------------------------------------------------------
# Metric groups: every data type
# ----------------------------------------------------------------------------------------


def asymmetry_metrics(config, model, params, x: np.ndarray, key) -> Results:
    """Asym/NAsym over data and noise levels (exact for small D, else Hutchinson)."""
    from ebm_vs_score import conservativeness

    @jax.jit
    def run(params, x, key):
        return conservativeness.asymmetry_over_noise(
            param_lib.bind(model.fns.score, params), x, sde=model.sde, key=key,
            num_levels=int(config.eval.asym_levels), num_probes=int(config.eval.asym_probes))

    result = run(params, jnp.asarray(x), key)
    return {"asym": float(result["asym"]), "nasym": float(result["nasym"]),
            "asym_per_level": np.asarray(result["asym_per_level"]).tolist(),
            "nasym_per_level": np.asarray(result["nasym_per_level"]).tolist(),
            "t_levels": np.asarray(result["t"]).tolist()}


def ais_metrics(config, model, params, x: np.ndarray, key) -> Results:
    """log Z by AIS at t = eps and the NLL of the data under exp(-E(x, eps)) / Z."""
    from ebm_vs_score import likelihood

    t0 = model.sde.eps
    scale = float(model.sde.marginal_std(jnp.asarray(1.0)))

    @jax.jit
    def run(params, x, key):
        def energy(y):
            return model.fns.energy(params, y, jnp.full((y.shape[0],), t0))

        log_z, info = likelihood.ais_log_normalizer(  # shape: of ONE example (256 chains)
            energy, key, model.example_shape, base_std=max(scale, 1.0))
        return log_z, info["stderr"], jnp.mean(energy(x)) + log_z

    log_z, stderr, nll = run(params, jnp.asarray(x), key)
    dim = int(np.prod(model.example_shape))
    out = {"ais_log_z": float(log_z), "ais_log_z_stderr": float(stderr),
           "ais_nll_nats": float(nll)}
    if not configuration.is_toy(config):
        out["ais_nll_bpd"] = float(nll / (dim * np.log(2.0)))
    return out


def _chunked(config: ml_collections.ConfigDict, num: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose sampler draws ``num`` samples per call."""
    config = copy.deepcopy(config)
    config.sampling.num_samples = int(num)
    return config


def sample_metrics(config, model, params, key, num: int | None = None
                   ) -> tuple[np.ndarray, dict[str, float]]:
    """``num`` samples (default ``sampling.num_samples``) and their mean scalar info.

    Drawn in chunks of at most ``eval.batch_size`` (one compilation), chunk i with
    ``fold_in(key, i)``; info keys are ``sample_<name>`` (``sample_nfe``, ...).
    """
    num = int(config.sampling.num_samples if num is None else num)
    chunk = min(num, int(config.eval.batch_size))
    sample_fn = train.make_sample_fn(_chunked(config, chunk), model)
    parts, infos = [], []
    for i in range(-(-num // chunk)):
        samples, info = sample_fn(params, jax.random.fold_in(key, i))
        parts.append(np.asarray(jax.device_get(samples)))
        infos.append({k: float(np.mean(v)) for k, v in jax.device_get(info).items()
                      if np.ndim(v) == 0})
    info = {f"sample_{k}": float(np.mean([d[k] for d in infos])) for k in infos[0]}
    return np.concatenate(parts)[:num], info


# ----------------------------------------------------------------------------------------
# Metric groups: toy data with a known density
# ----------------------------------------------------------------------------------------


def _true_density(data_config) -> Any | None:
    """An object with the toy's exact ``log_prob``, or None (spiral, moons)."""
    try:
        log_prob = data_lib.toy_log_prob(data_config.dataset, dim=int(data_config.toy_dim),
                                         num_components=int(data_config.num_components))
    except ValueError:
        return None
    return types.SimpleNamespace(log_prob=log_prob)


def toy_nll_metrics(config, model, params, x: np.ndarray, key) -> Results:
    """Model NLL (nats) by the ODE, and the true NLL and the gap where the density is known."""
    from ebm_vs_score import likelihood, metrics

    @jax.jit
    def run(params, x, key):
        return likelihood.ode_log_prob(
            param_lib.bind(model.fns.score, params), x, sde=model.sde, key=key,
            num_probes=int(config.eval.nll_probes), rtol=_nll_tol(config, "rtol"),
            atol=_nll_tol(config, "atol"))

    x = _nll_examples(config, x)
    log_prob, info = run(params, jnp.asarray(x), key)
    log_prob = np.asarray(log_prob, np.float64)
    out = {"nll_nats": float(-log_prob.mean()),
           "nll_nats_stderr": float(log_prob.std(ddof=1) / np.sqrt(log_prob.size)),
           "nll_nfe": float(info["nfe"])}
    density = _true_density(config.data)
    if density is not None:
        report = metrics.nll_report(log_prob, density, jnp.asarray(x))
        out.update(nll_true_nats=report.true_nll, nll_gap_nats=report.gap,
                   nll_gap_stderr=report.gap_stderr)
    return out


def fisher_metrics(config, model, params, x: np.ndarray, key) -> Results:
    """Exact Fisher divergence per noise level (mixture toys) and its sigma^2-weighted mean."""
    if config.data.dataset not in MIXTURE_TOYS:
        logging.info("eval: no exact Fisher divergence for %s (not a Gaussian mixture)",
                     config.data.dataset)
        return {}
    from ebm_vs_score import metrics

    gmm = data_lib.toy_mixture(config.data.dataset, dim=int(config.data.toy_dim),
                               num_components=int(config.data.num_components))
    ts = jnp.linspace(model.sde.eps, model.sde.T, int(config.eval.asym_levels))

    @jax.jit
    def run(params, x, key):
        return metrics.fisher_divergence(param_lib.bind(model.fns.score, params), gmm, x,
                                         sde=model.sde, key=key, t_grid=ts)

    fisher = run(params, jnp.asarray(x), key)
    weighted = model.sde.marginal_std(ts) ** 2 * fisher
    return {"fisher": float(jnp.mean(weighted)),
            "fisher_per_level": np.asarray(fisher).tolist(), "t_levels": np.asarray(ts).tolist()}


def toy_sample_quality(samples: np.ndarray, x: np.ndarray, key) -> Results:
    """MMD^2 (median-heuristic RBF) and sliced 2-Wasserstein between samples and data."""
    from ebm_vs_score import metrics

    n = min(len(samples), len(x))
    return {"mmd": float(metrics.mmd(samples[:n], x[:n])),
            "swd": float(metrics.sliced_wasserstein(samples[:n], x[:n], key))}


# ----------------------------------------------------------------------------------------
# Metric groups: images
# ----------------------------------------------------------------------------------------


def image_nll_metrics(config, model, params, x: np.ndarray, key) -> Results:
    """Test NLL in bits/dim with uniform dequantization (Song et al. 2021, Table 2)."""
    from ebm_vs_score import likelihood

    @jax.jit
    def run(params, x, key):
        return likelihood.bits_per_dim(
            param_lib.bind(model.fns.score, params), x, sde=model.sde, key=key,
            num_probes=int(config.eval.nll_probes),
            num_bins=int(data_lib.num_levels(config.data)), rtol=_nll_tol(config, "rtol"),
            atol=_nll_tol(config, "atol"))[0]

    x = _nll_examples(config, x)
    values = []
    for i, batch in enumerate(np.array_split(x, -(-len(x) // int(config.eval.batch_size)))):
        values.append(np.asarray(run(params, jnp.asarray(batch), jax.random.fold_in(key, i))))
        logging.info("bits/dim: %d of %d examples", sum(map(len, values)), len(x))
    bpd = np.concatenate(values).astype(np.float64)
    return {"nll_bpd": float(bpd.mean()),
            "nll_bpd_stderr": float(bpd.std(ddof=1) / np.sqrt(bpd.size))}


def _nll_tol(config, name: str) -> float:
    return float(_eval_field(config, f"nll_{name}", 1e-5))


def _nll_examples(config, x: np.ndarray) -> np.ndarray:
    """The first ``eval.nll_examples`` (default all) evaluation examples."""
    return x[:int(_eval_field(config, "nll_examples", len(x)))]


def nll_metrics(config, model, params, x: np.ndarray, key) -> Results:
    """ODE NLL: nats (and the true NLL) for vector data, bits/dim for images."""
    if configuration.is_toy(config):
        return toy_nll_metrics(config, model, params, x, key)
    return image_nll_metrics(config, model, params, x, key)


def _labelled_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images in [-1, 1] and labels (-1: none) of a whole split (digits, patches32, TFDS)."""
    return data_lib.labelled_split(data_config, split)


def offline_classifier(config, workdir: str):
    """The offline classifier of the dataset's train split (cached), or None without labels.

    Cache: ``eval.classifier_dir`` (a study shares one), default ``WORKDIR/classifier``.
    """
    from ebm_vs_score import metrics

    cache = _eval_field(config, "classifier_dir", os.path.join(workdir, "classifier"))
    steps = int(_eval_field(config, "classifier_steps", metrics.classifier.DEFAULT_STEPS))
    images, labels = _labelled_split(config.data, "train")
    if labels.min() < 0:
        logging.warning("eval: %s has no class labels; the offline FD/IS/precision/recall "
                        "are skipped", config.data.dataset)
        return None
    test_images, test_labels = _labelled_split(config.data, "test")
    clf = metrics.get_classifier(images, labels, cache, steps=steps, eval_images=test_images,
                                 eval_labels=test_labels)
    logging.info("offline classifier (%s): test accuracy %.3f", cache, clf.accuracy)
    return clf


def classifier_metrics(clf, samples: np.ndarray, x: np.ndarray) -> Results:
    """FD, IS analogue and k-NN precision/recall in the offline classifier's feature space."""
    from ebm_vs_score import metrics

    feat_s, logits_s = clf.apply(samples)
    feat_x, _ = clf.apply(x)
    fd = metrics.frechet_distance(*metrics.feature_statistics(feat_s),
                                  *metrics.feature_statistics(feat_x))
    is_mean, is_std = metrics.inception_score(logits_s, splits=min(10, len(logits_s)))
    pr = metrics.precision_recall(feat_x, feat_s, k=min(3, len(samples) - 1, len(x) - 1))
    return {"fd": fd, "is": is_mean, "is_std": is_std, "precision": pr.precision,
            "recall": pr.recall, "classifier_accuracy": clf.accuracy}


def check_inception_weights(config) -> None:
    """Raises the clear FileNotFoundError now if ``eval.inception_weights`` is set but absent."""
    from ebm_vs_score.metrics import inception

    path = config.eval.inception_weights
    if path is not None and not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(inception.missing_weights_message(path))


def inception_metrics(config, samples: np.ndarray, x: np.ndarray) -> Results:
    """FID and IS with the standard Inception network, or {} when no weights are set."""
    if config.eval.inception_weights is None:
        logging.info("eval: FID/IS with the standard Inception network skipped "
                     "(eval.inception_weights is not set)")
        return {}
    from ebm_vs_score import metrics

    net = metrics.load_inception(config.eval.inception_weights)
    out_s = net.apply(samples)
    if config.eval.get("fid_stats"):  # reference file of --mode=fid_stats (metrics/fid.py)
        from ebm_vs_score.metrics import fid as fid_lib

        fid = fid_lib.fid(net.params, samples, fid_lib.load_moments(config.eval.fid_stats),
                          batch_size=int(config.eval.get("fid_batch_size", 200)))
    else:
        fid = metrics.frechet_distance(*metrics.feature_statistics(out_s.pool3),
                                       *metrics.feature_statistics(net.apply(x).pool3))
    score, std = metrics.inception_score(out_s.logits_unbiased, splits=min(10, len(samples)))
    return {"fid": fid, "inception_score": score, "inception_score_std": std}


def image_sample_quality(config, workdir: str, samples: np.ndarray, x: np.ndarray) -> Results:
    """Offline-classifier metrics, plus the standard FID/IS when Inception weights are set."""
    clf = offline_classifier(config, workdir)
    out = {} if clf is None else classifier_metrics(clf, samples, x)
    out.update(inception_metrics(config, samples, x))
    return out


def sample_quality(config, workdir: str, samples: np.ndarray, x: np.ndarray, key) -> Results:
    """Distances between samples and held-out data, per data type."""
    if configuration.is_toy(config):
        return toy_sample_quality(samples, x, key)
    return image_sample_quality(config, workdir, samples, x)


# ----------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------


def prepare(config: ml_collections.ConfigDict, workdir: str) -> EvalContext:
    """Validates, checks the weights files first, restores ``eval.checkpoint`` and the data."""
    configuration.validate(config, num_devices=jax.device_count())
    configuration.check_workdir(config, workdir)
    check_inception_weights(config)
    model = builders.build_model(config)
    step, params = restore_params(config, workdir, model, int(config.eval.checkpoint))
    x = data_lib.eval_data(config.data, "test", int(config.eval.num_examples))
    return EvalContext(config, workdir, model, step, params, x)


def model_metrics(ctx: EvalContext, key) -> Results:
    """Metrics of the model itself: Asym/NAsym, NLL, Fisher divergence (toys), AIS."""
    config, model, params, x = ctx.config, ctx.model, ctx.params, ctx.data
    keys = jax.random.split(key, 4)
    logging.info("eval: Asym/NAsym over %d levels", config.eval.asym_levels)
    results = asymmetry_metrics(config, model, params, x[:_ASYM_EXAMPLES], keys[0])
    logging.info("eval: ODE likelihood of %d examples", len(_nll_examples(config, x)))
    results.update(nll_metrics(config, model, params, x, keys[1]))
    if configuration.is_toy(config):
        results.update(fisher_metrics(config, model, params, x, keys[2]))
    if model.fns.energy is not None and config.eval.ais:
        logging.info("eval: AIS log-normalizer")
        results.update(ais_metrics(config, model, params, x, keys[3]))
    return results


def sampler_metrics(ctx: EvalContext, key) -> Results:
    """Samples of the configured sampler, their NFE and quality; saves them as npz + png."""
    config = ctx.config
    num = int(_eval_field(config, "num_samples", config.eval.num_examples))
    k_sample, k_quality = jax.random.split(key)
    logging.info("eval: %d samples with %s", num, config.sampling.method)
    samples, info = sample_metrics(config, ctx.model, ctx.params, k_sample, num)
    _save_samples(ctx, samples)
    finite = np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
    if not finite.all():
        logging.warning("eval: %d of %d samples are not finite; the sample metrics use the "
                        "others", int((~finite).sum()), len(samples))
    usable = samples[finite] if configuration.is_toy(config) else np.clip(samples[finite], -1, 1)
    results = dict(info, sample_nonfinite=float(1.0 - finite.mean()))
    results.update(sample_quality(config, ctx.workdir, usable, ctx.data, k_quality))
    return results


def _save_samples(ctx: EvalContext, samples: np.ndarray) -> None:
    if jax.process_index() != 0:
        return
    method = ctx.config.sampling.method
    os.makedirs(os.path.join(ctx.workdir, "eval"), exist_ok=True)
    np.savez(samples_path(ctx.workdir, ctx.step, method, "npz"), samples=samples)
    if samples.ndim == 2:
        image = plotting.scatter_image(samples[:, :2], reference=ctx.data[:, :2],
                                       title=method)
    else:
        image = plotting.samples_image(samples[:64])
    plotting.save_png(image, samples_path(ctx.workdir, ctx.step, method, "png"))


def _write(workdir: str, step: int, results: Results, method: str | None = None) -> None:
    if jax.process_index() != 0:
        return
    write_json_atomic(eval_path(workdir, step, method), results)
    values = scalars(results)
    train.append_metrics(workdir, dict(values, step=step, split="eval" if method is None
                                       else f"eval_{method}"))
    from clu import metric_writers

    prefix = "eval" if method is None else f"eval_{method}"
    writer = metric_writers.create_default_writer(workdir, asynchronous=False)
    writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in values.items()})
    writer.flush()


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> Results:
    """Evaluates checkpoint ``eval.checkpoint`` (-1: latest) of ``workdir``: all metrics.

    Returns the results (scalars and per-level lists) also written to
    ``WORKDIR/eval/step_N.json``.
    """
    ctx = prepare(config, workdir)
    key = jax.random.PRNGKey(config.seed + 2)
    results = model_metrics(ctx, jax.random.fold_in(key, 0))
    results.update(sampler_metrics(ctx, jax.random.fold_in(key, 1)))
    results["step"] = ctx.step
    _write(workdir, ctx.step, results)
    logging.info("eval at step %d: %s", ctx.step, scalars(results))
    return results


def evaluate_sampler(config: ml_collections.ConfigDict, workdir: str, method: str) -> Results:
    """Sample metrics only, with ``sampling.method=method`` (e.g. MALA for an energy).

    Written to ``WORKDIR/eval/step_N_<method>.json``; the model metrics do not depend on
    the sampler and stay in :func:`evaluate`'s file.
    """
    config = copy.deepcopy(config)
    config.sampling.method = method
    ctx = prepare(config, workdir)
    results = sampler_metrics(ctx, jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), 1))
    results["step"] = ctx.step
    _write(workdir, ctx.step, results, method)
    logging.info("eval (%s) at step %d: %s", method, ctx.step, scalars(results))
    return results


def sample(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
    """Draws ``sampling.num_samples`` samples and writes ``WORKDIR/sample/step_N.{npz,png}``."""
    configuration.validate(config, num_devices=jax.device_count())
    configuration.check_workdir(config, workdir)
    model = builders.build_model(config)
    step, params = restore_params(config, workdir, model, int(config.eval.checkpoint))
    key = jax.random.PRNGKey(config.seed + 3)
    samples, info = sample_metrics(config, model, params, key)
    if jax.process_index() == 0:
        out = os.path.join(workdir, "sample")
        os.makedirs(out, exist_ok=True)
        name = f"step_{step:08d}_{config.sampling.method}"
        np.savez(os.path.join(out, name + ".npz"), samples=samples, **info)
        plotting.save_png(plotting.samples_image(samples), os.path.join(out, name + ".png"))
        logging.info("wrote %d samples to %s (%s)", len(samples), out, info)
    return samples


# ----------------------------------------------------------------------------------------
# Score fields of 2-D models
# ----------------------------------------------------------------------------------------


def rotation_density(score_fn, points: jax.Array, t: float) -> tuple[jax.Array, jax.Array]:
    """Score s and its curl ds_y/dx - ds_x/dy at 2-D ``points`` (N, 2), time ``t``.

    The curl is the rotation density of the field (0 for a gradient field, 2 for the
    rotation (-y, x)); the Jacobian is exact, per point, by ``jax.jacfwd``.
    """
    def one(p):
        return score_fn(p[None], jnp.full((1,), t, p.dtype))[0]

    points = jnp.asarray(points, jnp.float32)
    jac = jax.vmap(jax.jacfwd(one))(points)  # (N, 2, 2): jac[n, i, j] = d s_i / d x_j
    return jax.vmap(one)(points), jac[:, 1, 0] - jac[:, 0, 1]


def score_field_grid(score_fn, params, times, lim: float, n: int = 21
                     ) -> dict[str, np.ndarray]:
    """Score and curl of ``score_fn(params, x, t)`` on an n x n grid over [-lim, lim]^2 at
    each time of ``times`` (one compilation for all times).

    Returns ``{'x', 'y'}`` (n, n) coordinates, ``'score'`` (T, n, n, 2), ``'curl'`` (T, n, n).
    """
    xs = np.linspace(-lim, lim, n, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs)
    points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1))
    run = jax.jit(lambda p, t: rotation_density(param_lib.bind(score_fn, p), points, t))
    fields, curls = [], []
    for t in times:
        s, c = run(params, jnp.float32(t))
        fields.append(np.asarray(s).reshape(n, n, 2))
        curls.append(np.asarray(c).reshape(n, n))
    return {"x": gx, "y": gy, "score": np.stack(fields), "curl": np.stack(curls)}
