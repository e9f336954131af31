"""The evaluation's runner: reads the ``eval.*`` / ``sampling.*`` settings, restores the
checkpoint, and calls the evaluators with model functions and plain arguments.

Optional ``eval.*`` fields (the study configs set them; see ``settings.EvalSettings``):
``num_samples``, ``classifier_dir``, ``classifier_steps``, ``nll_examples``, ``nll_rtol``,
``nll_atol``, ``ood`` (True), ``nfe_sweep_steps`` / ``nfe_sweep_tols`` (time-invariant
models; () = no sweep).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from ebm_vs_score import builders, checkpoints, metrics, plotting, settings, train
from ebm_vs_score import data as data_lib
from ebm_vs_score import workdir as workdir_lib
from ebm_vs_score.errors import CheckpointError, DataError
from ebm_vs_score.evaluate import fields, files, nll, ood
from ebm_vs_score.evaluate import samples as samples_lib
from ebm_vs_score.evaluate import time_invariant as ti_lib
from ebm_vs_score.metrics import fid as fid_lib
from ebm_vs_score.metrics import inception

Results = dict[str, Any]
MIXTURE_TOYS = ("8gaussians", "gmm")  # closed-form noised scores: exact Fisher divergence
_ASYM_EXAMPLES = 256


class EvalContext(NamedTuple):
    """What every metric group needs: the model, its checkpoint and the evaluation data."""

    settings: settings.Settings
    workdir: str
    model: builders.Model
    step: int
    params: Any
    data: np.ndarray


def _num_samples(ev: settings.EvalSettings) -> int:
    """``eval.num_samples``, or ``eval.num_examples`` when it is not set."""
    return int(ev.num_examples if ev.num_samples is None else ev.num_samples)


@contextlib.contextmanager
def timed(walls: dict[str, float] | None, name: str):
    """Adds the wall seconds of the ``with`` body (compilation included) to ``walls[name]``:
    the eval JSON's ``wall_s``, one entry per metric group."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if walls is not None:
            walls[name] = walls.get(name, 0.0) + time.perf_counter() - start



def _base_points(ctx: EvalContext, key, protocol: nll.Protocol) -> np.ndarray:
    """Every evaluation example, dequantized as the scored ones are: the points the AIS
    base is fitted to (``nll.ais_base``; more than the scored ones for its covariance)."""
    return nll.protocol_points(key, ctx.data, protocol.num_bins)


def _nll_examples(ctx: EvalContext) -> np.ndarray:
    """The first ``eval.nll_examples`` (default: all) evaluation examples."""
    n = ctx.settings.eval.nll_examples
    return ctx.data[:int(len(ctx.data) if n is None else n)]


def restore_params(s: settings.Settings, workdir: str, model: builders.Model, step: int = -1):
    """(step, EMA params) of the checkpoint ``step`` (-1: latest) in ``workdir``."""
    ckpt = checkpoints.Checkpointer(workdir)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise CheckpointError(
                f"no checkpoint in {ckpt.directory}; train first with --mode=train and the "
                "same --config and --workdir")
        if step != -1 and step not in steps:
            raise CheckpointError(f"eval.checkpoint={step} is not in {ckpt.directory}; "
                                    f"available steps: {steps}")
        tx = train.make_optimizer(s.optim)
        template = train.init_state(model, tx, s.seed)
        state = ckpt.restore(template, None if step == -1 else step)
    finally:
        ckpt.close()
    params = state.ema_params if s.sampling.use_ema else state.params
    return int(state.step), params


def likelihood_protocol(s: settings.Settings) -> nll.Protocol:
    """The NLL protocol of the settings: bins of the data, divergence, tolerances, batch."""
    num_bins = None if s.is_toy else int(data_lib.num_levels(s.data))
    return nll.Protocol(
        num_bins=num_bins, num_probes=int(s.eval.nll_probes),
        rtol=float(s.eval.nll_rtol), atol=float(s.eval.nll_atol),
        batch_size=int(s.eval.batch_size))


def true_density(data: settings.DataSettings):
    """The toy's exact ``log_prob`` function, or None (spiral, moons, images)."""
    try:
        return data_lib.toy_log_prob(data.dataset, dim=int(data.toy_dim),
                                     num_components=int(data.num_components))
    except (ValueError, AttributeError):
        return None


def likelihood_metrics(ctx: EvalContext, key, walls: dict | None = None) -> Results:
    """ODE NLL and (energies, ``eval.ais``) AIS NLL on the same protocol points; their wall
    seconds go to ``walls`` (``ode_nll``, ``ais``)."""
    s, model = ctx.settings, ctx.model
    protocol = likelihood_protocol(s)
    k_deq, k_ode, k_ais = jax.random.split(key, 3)
    x = _nll_examples(ctx)
    points = nll.protocol_points(k_deq, x, protocol.num_bins)
    exact = true_density(s.data) if protocol.num_bins is None else None
    logging.info("eval: ODE likelihood of %d examples (%s divergence)", len(points),
                 nll.divergence_label(protocol.num_probes))
    with timed(walls, "ode_nll"):
        results, log_p = nll.ode_nll(model.fns.score, ctx.params, points, k_ode,
                                     sde=model.sde, protocol=protocol, true_log_prob=exact)
    if model.fns.energy is not None:
        with timed(walls, "energy_ode_agreement"):
            results.update(nll.energy_ode_agreement(
                model.fns.energy, ctx.params, points, log_p, sde=model.sde,
                batch_size=protocol.batch_size))
    if model.fns.energy is not None and s.eval.ais:
        logging.info("eval: AIS log-normalizer")
        with timed(walls, "ais"):
            results.update(nll.ais_nll_metrics(
                model.fns.energy, ctx.params, points, k_ais, sde=model.sde,
                protocol=protocol, true_log_prob=exact,
                base_points=_base_points(ctx, jax.random.fold_in(k_deq, 1), protocol)))
    return results


def model_metrics(ctx: EvalContext, key, walls: dict | None = None) -> Results:
    """Metrics of the model itself: Asym/NAsym, NLL (ODE, AIS), Fisher divergence (toys);
    the wall seconds of each go to ``walls``."""
    s, model, x = ctx.settings, ctx.model, ctx.data
    keys = jax.random.split(key, 3)
    logging.info("eval: Asym/NAsym over %d levels", s.eval.asym_levels)
    with timed(walls, "asym"):
        results = fields.asymmetry_metrics(
            model.fns.score, ctx.params, x[:_ASYM_EXAMPLES], keys[0], sde=model.sde,
            num_levels=int(s.eval.asym_levels), num_probes=int(s.eval.asym_probes))
    results.update(likelihood_metrics(ctx, keys[1], walls))
    mixture = _mixture(s)
    if mixture is not None:
        with timed(walls, "fisher"):
            results.update(fields.fisher_metrics(model.fns.score, ctx.params, x, keys[2],
                                                 sde=model.sde, mixture=mixture,
                                                 num_levels=int(s.eval.asym_levels)))
    return results


def _mixture(s: settings.Settings):
    """The exact Gaussian mixture of a mixture toy (None for other data)."""
    if not s.is_toy or s.data.dataset not in MIXTURE_TOYS:
        return None
    return data_lib.toy_mixture(s.data.dataset, dim=int(s.data.toy_dim),
                                num_components=int(s.data.num_components))


def time_invariant_metrics(ctx: EvalContext, key) -> Results:
    """Metrics of a time-invariant model (``evaluate/time_invariant.py``): NAsym on the EqM
    path, AIS NLL of energies, the exact-field error on mixture toys (EqM)."""
    s, model = ctx.settings, ctx.model
    ti = s.time_invariant
    keys = jax.random.split(key, 3)
    results = ti_lib.path_asymmetry(model.fns.score, ctx.params, ctx.data[:_ASYM_EXAMPLES],
                                    keys[0], num_probes=int(s.eval.asym_probes))
    protocol = likelihood_protocol(s)
    if model.fns.energy is not None and s.eval.ais:
        x = _nll_examples(ctx)
        points = nll.protocol_points(jax.random.fold_in(keys[1], 0), x,
                                             protocol.num_bins)
        exact = true_density(s.data) if protocol.num_bins is None else None
        logging.info("eval: AIS log-normalizer of exp(-E)")
        results.update(ti_lib.ais_nll_metrics(
            model.fns.energy, ctx.params, points, keys[1], protocol=protocol,
            true_log_prob=exact,
            base_points=_base_points(ctx, jax.random.fold_in(keys[1], 1), protocol)))
    mixture = _mixture(s)
    if ti.objective == "eqm" and mixture is not None:
        results.update(ti_lib.exact_field_error(model.fns.score, ctx.params, mixture, keys[2],
                                                c_max=ti.c_max, interp=ti.interp))
    return results


def ood_metrics(ctx: EvalContext, key) -> Results:
    """OOD AUROC of the energy and the field's norm (``evaluate/ood.py``; images only)."""
    s, model = ctx.settings, ctx.model
    if s.is_toy or not s.eval.ood or (model.sde is None and model.ladder is not None):
        return {}
    sets = ood.ood_sets(ctx.data, s.data.dataset, seed=int(s.seed))
    t = 0.0 if model.sde is None else float(model.sde.eps)
    logging.info("eval: OOD AUROC against %s", list(sets))
    return ood.ood_metrics(model.fns.score, model.fns.energy, ctx.params, ctx.data, sets, t=t,
                           time_invariant=model.sde is None,
                           batch_size=int(s.eval.batch_size))


def _measured(ctx: EvalContext, s: settings.Settings, drawn, info, key) -> Results:
    usable, nonfinite = samples_lib.finite_samples(drawn, not s.is_toy)
    return dict(info, sample_nonfinite=nonfinite,
                **sample_quality(s, ctx.workdir, usable, ctx.data, key))


def _sweep_point(ctx: EvalContext, s: settings.Settings, key) -> Results:
    """Sample info and quality of the sampler of ``s`` (an adaptive row of the NFE sweep)."""
    k_sample, k_quality = jax.random.split(key)
    drawn, info = draw_samples(s, ctx.model, ctx.params, k_sample, _num_samples(s.eval))
    return _measured(ctx, s, drawn, info, k_quality)


def _sweep_points(ctx: EvalContext, s: settings.Settings, key, steps) -> list[Results]:
    """:func:`_sweep_point` of the fixed-step sampler of ``s`` after each of ``steps``
    (sorted) steps, from one chain per example (``samplers.sample_snapshots``)."""
    num = _num_samples(s.eval)
    chunk = min(num, int(s.eval.batch_size))
    k_sample, k_quality = jax.random.split(key)
    fn = builders.make_snapshot_sample_fn(s, ctx.model, steps, chunk)
    return [_measured(ctx, s, drawn, info, k_quality)
            for drawn, info in samples_lib.draw_snapshots(fn, ctx.params, k_sample, num, chunk)]


def nfe_sweep(ctx: EvalContext, key) -> Results:
    """``nfe_sweep``: sample quality against NFE (``eval.nfe_sweep_steps``, ``..._tols``)."""
    steps = tuple(ctx.settings.eval.nfe_sweep_steps)
    if not steps or ctx.model.sde is not None:
        return {}
    tols = tuple(ctx.settings.eval.nfe_sweep_tols)
    logging.info("eval: sample quality against NFE (%d chains of up to %d steps)",
                 len(ti_lib.FIXED_FORMS) + len(tols), max(steps))
    rows = ti_lib.nfe_sweep(ctx.settings, lambda s, k, n: _sweep_points(ctx, s, k, n),
                            lambda s, k: _sweep_point(ctx, s, k), key, steps, tols)
    return {"nfe_sweep": rows}


def draw_samples(s: settings.Settings, model, params, key, num: int | None = None
                 ) -> tuple[np.ndarray, dict[str, float]]:
    """``num`` samples (default ``sampling.num_samples``) of the configured sampler, in
    chunks of at most ``eval.batch_size`` (one compilation)."""
    num = int(s.sampling.num_samples if num is None else num)
    chunk = min(num, int(s.eval.batch_size))
    return samples_lib.draw_samples(train.make_sample_fn(s, model, chunk), params, key, num,
                                    chunk)


def _labelled_split(data: settings.DataSettings, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images in [-1, 1] and labels (-1: none) of a whole split (digits, patches32, TFDS)."""
    return data_lib.labelled_split(data, split)


def offline_classifier(s: settings.Settings, workdir: str):
    """The offline classifier of the dataset's train split (cached), or None without labels.

    Cache: ``eval.classifier_dir`` (a study shares one), default ``WORKDIR/classifier``.
    """
    ev = s.eval
    cache = ev.classifier_dir or os.path.join(workdir, "classifier")
    steps = int(metrics.classifier.DEFAULT_STEPS if ev.classifier_steps is None
                else ev.classifier_steps)
    images, labels = _labelled_split(s.data, "train")
    if labels.min() < 0:
        logging.warning("eval: %s has no class labels; the offline FD/IS/precision/recall "
                        "are skipped", s.data.dataset)
        return None
    test_images, test_labels = _labelled_split(s.data, "test")
    clf = metrics.get_classifier(images, labels, cache, steps=steps, eval_images=test_images,
                                 eval_labels=test_labels)
    logging.info("offline classifier (%s): test accuracy %.3f", cache, clf.accuracy)
    return clf


def check_inception_weights(s: settings.Settings) -> None:
    """Raises the clear DataError now if ``eval.inception_weights`` is set but absent."""
    path = s.eval.inception_weights
    if path is not None and not os.path.isfile(os.path.expanduser(path)):
        raise DataError(inception.missing_weights_message(path))


def inception_metrics(s: settings.Settings, samples: np.ndarray, x: np.ndarray) -> Results:
    """FID and IS with the standard Inception network, or {} when no weights are set."""
    ev = s.eval
    if ev.inception_weights is None:
        logging.info("eval: FID/IS with the standard Inception network skipped "
                     "(eval.inception_weights is not set)")
        return {}
    net = metrics.load_inception(ev.inception_weights)
    reference = None
    if ev.fid_stats:  # the file of --mode=fid_stats (evaluate/fid_stats.py)
        reference = fid_lib.load_moments(ev.fid_stats)
    batch = int(ev.fid_batch_size)
    return samples_lib.inception_metrics(net, samples, x, reference=reference, batch_size=batch)


def sample_quality(s: settings.Settings, workdir: str, samples: np.ndarray, x: np.ndarray,
                   key) -> Results:
    """Distances between samples and held-out data, per data type."""
    if s.is_toy:
        return samples_lib.toy_sample_quality(samples, x, key)
    clf = offline_classifier(s, workdir)
    out = {} if clf is None else samples_lib.classifier_metrics(clf, samples, x)
    out.update(inception_metrics(s, samples, x))
    return out


def sampler_metrics(ctx: EvalContext, key, walls: dict | None = None) -> Results:
    """Samples of the configured sampler, their NFE and quality; saves them as npz + png.
    Wall seconds to ``walls``: ``samples`` (drawing them), ``sample_quality`` (one sample
    set for every distance; the offline classifier's training included when not cached)."""
    s = ctx.settings
    num = _num_samples(s.eval)
    k_sample, k_quality = jax.random.split(key)
    logging.info("eval: %d samples with %s", num, s.sampling.method)
    with timed(walls, "samples"):
        samples, info = draw_samples(s, ctx.model, ctx.params, k_sample, num)
    files.save_samples(ctx.workdir, ctx.step, s.sampling.method, samples, ctx.data)
    usable, nonfinite = samples_lib.finite_samples(samples, not s.is_toy)
    if nonfinite:
        logging.warning("eval: %d of %d samples are not finite; the sample metrics use the "
                        "others", len(samples) - len(usable), len(samples))
    results = dict(info, sample_nonfinite=nonfinite)
    with timed(walls, "sample_quality"):
        results.update(sample_quality(s, ctx.workdir, usable, ctx.data, k_quality))
    return results


def prepare(s: settings.Settings, workdir: str) -> EvalContext:
    """Checks the workdir and the weights files first, restores ``eval.checkpoint`` and the
    data."""
    settings.require(s)
    workdir_lib.check_workdir(s, workdir)
    check_inception_weights(s)
    model = builders.build_model(s)
    step, params = restore_params(s, workdir, model, int(s.eval.checkpoint))
    x = data_lib.eval_data(s.data, "test", int(s.eval.num_examples))
    return EvalContext(s, workdir, model, step, params, x)


def evaluate(s: settings.Settings, workdir: str) -> Results:
    """Evaluates checkpoint ``eval.checkpoint`` (-1: latest) of ``workdir``: all metrics.

    Returns the results (scalars, per-level lists, the divergence used, and ``wall_s``: the
    wall seconds of each metric group and the ``total``) also written to
    ``WORKDIR/eval/step_N.json``.
    """
    walls: dict[str, float] = {}
    start = time.perf_counter()
    with timed(walls, "restore"):
        ctx = prepare(s, workdir)
    key = jax.random.PRNGKey(s.seed + 2)
    if s.is_time_invariant:
        with timed(walls, "time_invariant"):
            results = time_invariant_metrics(ctx, jax.random.fold_in(key, 0))
    else:
        results = model_metrics(ctx, jax.random.fold_in(key, 0), walls)
    results.update(sampler_metrics(ctx, jax.random.fold_in(key, 1), walls))
    for name, group, index in (("ood", ood_metrics, 3), ("nfe_sweep", nfe_sweep, 4)):
        with timed(walls, name):
            extra = group(ctx, jax.random.fold_in(key, index))
        if not extra:  # the group does not apply to this model: no wall time recorded
            del walls[name]
        results.update(extra)
    results["wall_s"] = dict(walls, total=time.perf_counter() - start)
    results["step"] = ctx.step
    files.write_results(workdir, ctx.step, results)
    logging.info("eval at step %d: %s", ctx.step, files.scalars(results))
    return results


def evaluate_sampler(s: settings.Settings, workdir: str, method: str) -> Results:
    """Sample metrics only, with ``sampling.method=method`` (e.g. MALA for an energy).

    Written to ``WORKDIR/eval/step_N_<method>.json``; the model metrics do not depend on
    the sampler and stay in :func:`evaluate`'s file.
    """
    s = settings.override(settings.require(s), {"sampling.method": method})
    walls: dict[str, float] = {}
    start = time.perf_counter()
    with timed(walls, "restore"):
        ctx = prepare(s, workdir)
    results = sampler_metrics(ctx, jax.random.fold_in(jax.random.PRNGKey(s.seed + 2), 1),
                              walls)
    results["wall_s"] = dict(walls, total=time.perf_counter() - start)
    results["step"] = ctx.step
    files.write_results(workdir, ctx.step, results, method)
    logging.info("eval (%s) at step %d: %s", method, ctx.step, files.scalars(results))
    return results


def sample(s: settings.Settings, workdir: str) -> np.ndarray:
    """Draws ``sampling.num_samples`` samples and writes ``WORKDIR/sample/step_N.{npz,png}``."""
    settings.require(s)
    workdir_lib.check_workdir(s, workdir)
    model = builders.build_model(s)
    step, params = restore_params(s, workdir, model, int(s.eval.checkpoint))
    drawn, info = draw_samples(s, model, params, jax.random.PRNGKey(s.seed + 3))
    if jax.process_index() == 0:
        out = os.path.join(workdir, "sample")
        os.makedirs(out, exist_ok=True)
        name = f"step_{step:08d}_{s.sampling.method}"
        np.savez(os.path.join(out, name + ".npz"), samples=drawn, **info)
        plotting.save_png(plotting.samples_image(drawn), os.path.join(out, name + ".png"))
        logging.info("wrote %d samples to %s (%s)", len(drawn), out, info)
    return drawn
