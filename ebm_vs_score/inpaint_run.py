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
fields: an ``inpaint`` section in the config (see :data:`DEFAULTS`).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ebm_vs_score import builders, compose, data, evaluate, inpaint, samplers
from ebm_vs_score import metrics as metrics_lib
from ebm_vs_score import settings as settings_lib
from ebm_vs_score.compose_report import markdown_table

METHODS = ("replacement", "ula", "mala")
MASKS = ("bottom", "right")
DEFAULTS = {"mask": "bottom", "num_images": 100, "methods": METHODS, "mcmc_levels": 50,
            "n_steps_each": 4, "num_shown": 16}


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ``inpaint`` fields of the config over :data:`DEFAULTS`, validated."""
    section = config.get("inpaint", None)
    s = dict(DEFAULTS, **(section.to_dict() if section is not None else {}))
    if config.data.dataset != "digits":
        raise ValueError(f"--mode=inpaint needs data.dataset='digits' (labelled, with the "
                         f"offline classifier), got {config.data.dataset!r}.")
    if s["mask"] not in MASKS:
        raise ValueError(f"inpaint.mask={s['mask']!r} is unknown; valid names: {list(MASKS)}.")
    bad = [m for m in s["methods"] if m not in METHODS]
    if bad:
        raise ValueError(f"inpaint.methods has {bad}; valid names: {list(METHODS)}.")
    return s


def make_mask(shape: tuple[int, ...], which: str) -> np.ndarray:
    """1 on the known half (top or left), 0 on the hidden half; shape (H, W, C)."""
    h, w = shape[0], shape[1]
    mask = np.ones(shape, np.float32)
    if which == "bottom":
        mask[h // 2:] = 0.0
    else:
        mask[:, w // 2:] = 0.0
    return mask


def complete_time_invariant(model: compose.Component, key, known, mask, config):
    """Completions by the configured time-invariant sampler (gd, nag, langevin) on the
    hidden pixels only, started from N(0, I) there (``inpaint.held``)."""
    k_noise, k_run = jax.random.split(key)
    cond = inpaint.held(model, known, mask)
    init = inpaint.merge(jax.random.normal(k_noise, known.shape), known, mask)
    options = settings_lib.sampler_options(config)

    @jax.jit
    def run(k, init):
        return samplers.sample(config.sampling.method, k, known.shape, sde=None,
                               score_fn=cond.score, energy_fn=cond.energy,
                               num_steps=int(config.sampling.num_steps), init=init, **options)

    x, info = run(k_run, init)
    return inpaint.merge(x, known, mask), info


def complete(method: str, model: compose.Component, sde, key, known, mask, config, s):
    """Completions (N, H, W, C) of ``known`` and the sampler's info."""
    if sde is None:  # time-invariant: 'replacement' holds the known pixels during descent
        return complete_time_invariant(model, key, known, mask, config)
    if method == "replacement":
        fn = jax.jit(lambda k: inpaint.replacement_sample(
            k, model.score, sde, known, mask, int(config.sampling.num_steps)))
        return fn(key)
    k_noise, k_run = jax.random.split(key)
    cond = inpaint.conditional(model, sde, known, mask, jax.random.normal(k_noise, known.shape))

    @jax.jit
    def run(k):
        return samplers.sample(method, k, known.shape, sde=sde, score_fn=cond.score,
                               energy_fn=cond.energy, num_steps=int(s["mcmc_levels"]),
                               n_steps_each=int(s["n_steps_each"]),
                               step_size=float(config.sampling.step_size))

    x, info = run(k_run)
    return inpaint.merge(x, known, mask), info


def agreement(clf, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images the classifier labels with the true label."""
    _, logits = clf.apply(np.clip(images, -1, 1))
    return float(np.mean(np.argmax(logits, -1) == labels))


def method_row(method, model, sde, key, known, mask, truth, labels, clf, config, s):
    """One table row (dict) and the completions (None when refused)."""
    if method == "mala" and model.energy is None:
        return {"method": method, "status": "refused: MH needs an energy"}, None
    if sde is None and method != "replacement":
        return {"method": method, "status": "refused: annealed over noise levels; the model "
                "is time-invariant (its completion is the 'replacement' row)"}, None
    start = time.time()
    x, info = complete(method, model, sde, key, jnp.asarray(known), jnp.asarray(mask),
                       config, s)
    x = np.asarray(x)
    hidden = (1 - mask).astype(bool)
    row = {"method": method, "status": "ok", "seconds": time.time() - start,
           "agreement": agreement(clf, x, labels),
           "mse_hidden": float(np.mean((x - truth)[:, hidden] ** 2)),
           "finite": float(np.all(np.isfinite(x)))}
    row.update({k: float(v) for k, v in info.items() if np.ndim(v) == 0})
    return row, x


def run_inpaint(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Completes masked test digits with each method; returns the REPORT.md path."""
    s = settings(config)
    model_def = builders.build_model(config)
    step, params = evaluate.restore_params(config, workdir, model_def,
                                           int(config.eval.checkpoint))
    energy = model_def.fns.energy
    model = compose.Component(functools.partial(model_def.fns.score, params),
                              None if energy is None else functools.partial(energy, params))
    images, labels = data.load_digits_split("test")
    truth, labels = images[:int(s["num_images"])], labels[:int(s["num_images"])]
    mask = make_mask(truth.shape[1:], s["mask"])
    known = truth * mask + (1 - mask) * -1.0  # hidden pixels as background
    clf = metrics_lib.get_digits_classifier(os.path.join(workdir, "classifier"))
    base = {"real": agreement(clf, truth, labels), "half": agreement(clf, known, labels),
            "classifier_test_accuracy": clf.accuracy}
    rows, shown = [], {}
    key = jax.random.PRNGKey(int(config.seed))
    for method in s["methods"]:
        key, sub = jax.random.split(key)
        logging.info("inpaint: %s", method)
        row, x = method_row(method, model, model_def.sde, sub, known, mask, truth, labels,
                            clf, config, s)
        rows.append(row)
        shown[method] = x
    out_dir = os.path.join(workdir, "inpaint")
    if int(config.eval.checkpoint) != -1:  # a chosen step keeps the latest one's report
        out_dir = os.path.join(out_dir, f"step_{step}")
    results = {"step": step, "family": config.family, "settings": s, "baselines": base,
               "rows": rows}
    evaluate.write_json_atomic(os.path.join(out_dir, "results.json"), results)
    write_figure(os.path.join(out_dir, "completions.png"), truth, known, shown, s)
    return write_report(out_dir, results)


def _fmt(v: Any, f: str) -> str:
    return "–" if v is None else format(v, f)


def write_report(out_dir: str, results: dict) -> str:
    """``REPORT.md``: the label-agreement table, baselines and command."""
    b, s = results["baselines"], results["settings"]
    body = [["real digits", "–", f"{b['real']:.3f}", "", "", ""],
            [f"{s['mask']} half hidden (background)", "–", f"{b['half']:.3f}", "", "", ""]]
    for r in results["rows"]:
        if r["status"] != "ok":
            body.append([r["method"], r["status"], "", "", "", ""])
            continue
        body.append([r["method"], _fmt(r.get("nfe"), ".0f"), f"{r['agreement']:.3f}",
                     f"{r['mse_hidden']:.3f}", _fmt(r.get("acceptance"), ".2f"),
                     f"{r['seconds']:.0f}"])
    lines = [f"# Inpainting: family {results['family']}, checkpoint step {results['step']}", "",
             "Command: `" + " ".join(["python -m ebm_vs_score.main"] + sys.argv[1:]) + "`", "",
             f"{s['num_images']} test digits, the {s['mask']} half hidden and completed; label "
             "agreement = fraction the offline classifier (test accuracy "
             f"{b['classifier_test_accuracy']:.3f}) labels with the true digit; MSE on the "
             "hidden pixels in [-1, 1] units.", ""]
    lines += markdown_table(["method", "NFE", "label agreement ↑", "MSE hidden ↓",
                             "acceptance", "s"], body)
    lines += ["", "![completions](completions.png)", ""]
    path = os.path.join(out_dir, "REPORT.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path


def write_figure(path: str, truth, known, shown: dict, s: dict) -> None:
    """Rows: real digits, the known half, then each method's completions."""
    from ebm_vs_score import plotting

    n = int(s["num_shown"])
    rows = [("real", truth), ("known", known)] + [(m, x) for m, x in shown.items()
                                                   if x is not None]
    fig = plotting.new_figure(figsize=(0.5 * n, 0.6 * len(rows)))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (name, x) in zip(axes, rows, strict=True):
        ax.imshow(plotting.image_grid(np.clip(x[:n], -1, 1), cols=n), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
