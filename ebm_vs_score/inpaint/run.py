"""Inpainting trained digits models, scored by the offline digits classifier.

``python -m ebm_vs_score.main --mode=inpaint --config=configs/digits_score.py --workdir=W``
(the config and workdir of a trained run; ``--config.eval.checkpoint=N`` picks a step).

The bottom half of each test digit is hidden (``mask='bottom'``; or ``'right'``) and
completed from the top half by each conditional sampler of :mod:`ebm_vs_score.inpaint`:
``replacement`` (score_sde's replacement method; every family), and annealed ``ula`` /
``mala`` on the conditional model (MALA needs an energy). A time-invariant model (EqM,
Energy Matching) fills the hidden half with its own sampler (``sampling.method``) while
the known half is held (the ``replacement`` row; ula / mala are refused). The classifier
(:func:`ebm_vs_score.metrics.get_digits_classifier`, cached in ``W/classifier`` as
``--mode=eval`` does) labels each completion; the table gives how often that label is the
true digit's, against its accuracy on the same real digits and on the half digits alone
(hidden pixels set to background). Writes ``W/inpaint/REPORT.md``, ``results.json`` and
``completions.png`` (``W/inpaint/step_N/`` with ``--config.eval.checkpoint=N``). Optional
fields: an ``inpaint`` section in the config (``settings.InpaintSettings`` holds its
defaults). The report and the figure are :mod:`ebm_vs_score.inpaint.report`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ebm_vs_score import builders, compose, data, evaluate, inpaint, samplers, settings
from ebm_vs_score import metrics as metrics_lib
from ebm_vs_score import results as records
from ebm_vs_score.inpaint import report

METHODS = ("replacement", "ula", "mala")
MASKS = ("bottom", "right")


def check_inpaint(s: settings.Settings) -> settings.InpaintSettings:
    """The ``inpaint.*`` settings (defaults where the config has no section), checked with
    the data: a ValueError (one sentence) otherwise."""
    if s.data.dataset != "digits":
        raise ValueError(f"--mode=inpaint needs data.dataset='digits' (labelled, with the "
                         f"offline classifier), got {s.data.dataset!r}.")
    p = s.inpaint
    if p.mask not in MASKS:
        raise ValueError(f"inpaint.mask={p.mask!r} is unknown; valid names: {list(MASKS)}.")
    bad = [m for m in p.methods if m not in METHODS]
    if bad:
        raise ValueError(f"inpaint.methods has {bad}; valid names: {list(METHODS)}.")
    return p


def make_mask(shape: tuple[int, ...], which: str) -> np.ndarray:
    """1 on the known half (top or left), 0 on the hidden half; shape (H, W, C)."""
    h, w = shape[0], shape[1]
    mask = np.ones(shape, np.float32)
    if which == "bottom":
        mask[h // 2:] = 0.0
    else:
        mask[:, w // 2:] = 0.0
    return mask


def complete_time_invariant(model: compose.Component, key, known, mask,
                            sampling: settings.SamplingSettings):
    """Completions by the configured time-invariant sampler (gd, nag, langevin) on the
    hidden pixels only, started from N(0, I) there (``inpaint.held``)."""
    k_noise, k_run = jax.random.split(key)
    cond = inpaint.held(model, known, mask)
    init = inpaint.merge(jax.random.normal(k_noise, known.shape), known, mask)

    @jax.jit
    def run(k, init):
        return samplers.sample(sampling.method, k, known.shape, sde=None,
                               score_fn=cond.score, energy_fn=cond.energy,
                               num_steps=int(sampling.num_steps), init=init,
                               **sampling.options)

    x, info = run(k_run, init)
    return inpaint.merge(x, known, mask), info


def complete(method: str, model: compose.Component, sde, key, known, mask,
             s: settings.Settings):
    """Completions (N, H, W, C) of ``known`` and the sampler's info."""
    if sde is None:  # time-invariant: 'replacement' holds the known pixels during descent
        return complete_time_invariant(model, key, known, mask, s.sampling)
    if method == "replacement":
        fn = jax.jit(lambda k: inpaint.replacement_sample(
            k, model.score, sde, known, mask, int(s.sampling.num_steps)))
        return fn(key)
    k_noise, k_run = jax.random.split(key)
    cond = inpaint.conditional(model, sde, known, mask, jax.random.normal(k_noise, known.shape))

    @jax.jit
    def run(k):
        return samplers.sample(method, k, known.shape, sde=sde, score_fn=cond.score,
                               energy_fn=cond.energy, num_steps=int(s.inpaint.mcmc_levels),
                               n_steps_each=int(s.inpaint.n_steps_each),
                               step_size=float(s.sampling.step_size))

    x, info = run(k_run)
    return inpaint.merge(x, known, mask), info


def agreement(clf, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images the classifier labels with the true label."""
    _, logits = clf.apply(np.clip(images, -1, 1))
    return float(np.mean(np.argmax(logits, -1) == labels))


def method_row(method, model, sde, key, known, mask, truth, labels, clf, s):
    """One table row (dict) and the completions (None when refused)."""
    if method == "mala" and model.energy is None:
        return {"method": method, "status": "refused: MH needs an energy"}, None
    if sde is None and method != "replacement":
        return {"method": method, "status": "refused: annealed over noise levels; the model "
                "is time-invariant (its completion is the 'replacement' row)"}, None
    start = time.time()
    x, info = complete(method, model, sde, key, jnp.asarray(known), jnp.asarray(mask), s)
    x = np.asarray(x)
    hidden = (1 - mask).astype(bool)
    row = {"method": method, "status": "ok", "seconds": time.time() - start,
           "agreement": agreement(clf, x, labels),
           "mse_hidden": float(np.mean((x - truth)[:, hidden] ** 2)),
           "finite": float(np.all(np.isfinite(x)))}
    row.update({k: float(v) for k, v in info.items() if np.ndim(v) == 0})
    return row, x


def run_inpaint(s: settings.Settings, workdir: str) -> str:
    """Completes masked test digits with each method; returns the REPORT.md path."""
    p = check_inpaint(settings.require(s))
    load = records.load_average()
    model_def = builders.build_model(s)
    step, params = evaluate.restore_params(s, workdir, model_def, int(s.eval.checkpoint))
    energy = model_def.fns.energy
    model = compose.Component(functools.partial(model_def.fns.score, params),
                              None if energy is None else functools.partial(energy, params))
    images, labels = data.load_digits_split("test")
    truth, labels = images[:int(p.num_images)], labels[:int(p.num_images)]
    mask = make_mask(truth.shape[1:], p.mask)
    known = truth * mask + (1 - mask) * -1.0  # hidden pixels as background
    clf = metrics_lib.get_digits_classifier(os.path.join(workdir, "classifier"))
    base = {"real": agreement(clf, truth, labels), "half": agreement(clf, known, labels),
            "classifier_test_accuracy": clf.accuracy}
    rows, shown = [], {}
    key = jax.random.PRNGKey(s.seed)
    for method in p.methods:
        key, sub = jax.random.split(key)
        logging.info("inpaint: %s", method)
        row, x = method_row(method, model, model_def.sde, sub, known, mask, truth, labels,
                            clf, s)
        rows.append(row)
        shown[method] = x
    out_dir = os.path.join(workdir, "inpaint")
    if int(s.eval.checkpoint) != -1:  # a chosen step keeps the latest one's report
        out_dir = os.path.join(out_dir, f"step_{step}")
    fields = dataclasses.asdict(p)
    results = {"step": step, "family": s.family, "settings": fields, "baselines": base,
               "rows": rows}
    evaluate.write_json_atomic(os.path.join(out_dir, "results.json"), results)
    records.write_record(f"inpaint_{s.family}_step{step}", results, load_start=load)
    report.write_figure(os.path.join(out_dir, "completions.png"), truth, known, shown, fields)
    return report.write_report(out_dir, results)
