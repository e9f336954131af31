"""``--mode=drl_long_run``: the steady long-run MCMC check of a DRL model (Gao et al. 2021,
Sec. 6: the learned chains can run far beyond the K training steps and stay realistic).

``python -m ebm_vs_score.main --mode=drl_long_run --config=configs/digits_drl.py --workdir=W``

Trains the config's DRL model in ``W`` with :func:`ebm_vs_score.train.train_and_evaluate`
(a finished run is reused, an interrupted one resumed), then, with its latest checkpoint
(EMA params if ``sampling.use_ema``):

1. draws ``eval.long_run_chains`` samples by progressive sampling (Algorithm 2);
2. runs the learned level-0 conditional chain p(y_0 | x_1) for ``eval.long_run_steps``
   steps from the x_1 of those samples (``eval.long_run_start='sample'``) or of real points
   diffused to x_1 (``'data'``), with the config's level-0 step size and ``drl.metropolis``;
3. with ``eval.long_run_marginal``, also the marginal level-0 EBM exp(-E(y, 0)) from the
   progressive samples.

Snapshots (:func:`snapshot_steps`) are mapped back to data space (x_0 = y_0 / a'_0; the
conditional chain's step 0 is x_1 itself) and measured against held-out data: MMD² (RBF
bandwidths 0.1, 0.3, 1) on toys, the Frechet distance in the offline classifier's features
(``evaluate.offline_classifier``) on labelled images; next to the same distance of as many
real points of another split (``distance_real_same_n``, the floor of a distance estimated
from that many points). ``drift`` is the last snapshot's distance minus that of the
progressive samples (start 'sample', and the marginal chain) or of the step-K snapshot
(start 'data'): the number the paper's claim is about. Mixture toys also get each
component's share of the points and their spread. Outputs: :mod:`ebm_vs_score.drl.report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ebm_vs_score import builders, data, evaluate, markdown, settings, train
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import results as records
from ebm_vs_score.drl import recovery, report
from ebm_vs_score.errors import ConfigError, DataError
from ebm_vs_score.metrics import distances

STARTS = ("sample", "data")
MMD_BANDWIDTHS = (0.1, 0.3, 1.0)
MIXTURE_TOYS = ("8gaussians", "gmm")


class LongRun(NamedTuple):
    """``eval.long_run_*``: chain length, number of chains, start, and the marginal chain."""

    steps: int
    chains: int
    start: str
    marginal: bool


class Judge(NamedTuple):
    """How snapshots are measured: ``distance(x)`` to held-out data (``metric``), ``real``
    (as many real points of another split: the floor, and the 'data' start), per-snapshot
    ``describe(x)``, and ``info`` for the JSON."""

    metric: str
    distance: Callable[[np.ndarray], float]
    real: np.ndarray
    held_out: np.ndarray
    describe: Callable[[np.ndarray], dict]
    info: dict


def long_run_settings(s: settings.Settings) -> LongRun:
    """``eval.long_run_*`` of a DRL run's settings, checked (one-sentence ConfigError
    otherwise)."""
    ev = s.eval
    out = LongRun(ev.long_run_steps, ev.long_run_chains, ev.long_run_start,
                  ev.long_run_marginal)
    checks = [
        (s.is_drl, "--mode=drl_long_run needs a DRL config "
         f"(training.objective='drl'), got {s.loss.objective!r}; use configs/*_drl.py"),
        (isinstance(out.steps, int) and out.steps >= 1,
         f"eval.long_run_steps={out.steps!r} must be an integer >= 1"),
        (isinstance(out.chains, int) and out.chains >= 2,
         f"eval.long_run_chains={out.chains!r} must be an integer >= 2 (a distance needs "
         "a spread)"),
        (out.start in STARTS, f"eval.long_run_start={out.start!r} is not valid; choose one "
         f"of {list(STARTS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return out


def snapshot_steps(chain_steps: int, num_steps: int) -> list[int]:
    """0, K (the training chain length), 100, 300, 1000, 3000, ... and the last step."""
    decades = [m * 10 ** k for k in range(2, 12) for m in (1, 3)]
    steps = {0, num_steps, chain_steps, *decades}
    return sorted(s for s in steps if s <= chain_steps)


def _mode_occupancy(means: np.ndarray, x: np.ndarray) -> dict:
    """Share of the points nearest each mixture component, and the RMS per-coordinate
    distance to it (the component std if the points are right)."""
    dist = np.linalg.norm(x[:, None] - means[None], axis=-1)
    weights = np.bincount(dist.argmin(1), minlength=len(means)) / len(x)
    spread = np.sqrt(np.mean(dist.min(1) ** 2) / x.shape[1])
    return {"mode_weights": np.round(weights, 3).tolist(), "mode_spread": float(spread)}


def _toy_judge(data_s: settings.DataSettings, n: int) -> Judge:
    """MMD² to ``n`` held-out toy points (test split); ``real`` from the train split."""
    held_out = data.eval_data(data_s, "test", n)
    means = None
    if data_s.dataset in MIXTURE_TOYS:
        means = np.asarray(data.toy_mixture(data_s.dataset, dim=int(data_s.toy_dim),
                                            num_components=int(data_s.num_components)).means)

    def describe(x):
        out = {"std": float(x.std())}
        return out if means is None else dict(out, **_mode_occupancy(means, x))

    return Judge("mmd2", lambda x: distances.mmd(x, held_out, MMD_BANDWIDTHS),
                 data.eval_data(data_s, "train", n), held_out, describe, {})


def _image_judge(s: settings.Settings, workdir: str, n: int, seed: int) -> Judge:
    """FD in the offline classifier's features to the test split; ``real``: n train images."""
    clf = evaluate.offline_classifier(s, workdir)
    if clf is None:
        raise DataError(f"--mode=drl_long_run measures images with the offline classifier, "
                        f"which needs class labels; {s.data.dataset!r} has none")
    test_x, _ = data.labelled_split(s.data, "test")
    train_x, _ = data.labelled_split(s.data, "train")
    features = lambda images: clf.apply(np.clip(images, -1, 1))[0]  # noqa: E731
    reference = distances.feature_statistics(features(test_x))

    def distance(x):
        mu, sigma = distances.feature_statistics(features(x))
        return float(distances.frechet_distance(mu, sigma, *reference))

    real = train_x[np.random.default_rng(seed).permutation(len(train_x))[:n]]
    return Judge("fd", distance, real, test_x, lambda x: {"std": float(x.std())},
                 {"classifier_accuracy": clf.accuracy})


def _measure(judge: Judge, snaps: np.ndarray, info: dict, anchor: float) -> dict:
    """Each snapshot's distance and description, the chain's acceptance, and the drift:
    the last snapshot's distance minus ``anchor``."""
    log_prob = np.asarray(info["log_prob"])
    snapshots = [dict(step=int(s), distance=judge.distance(x), log_prob=float(lp.mean()),
                      **judge.describe(x))
                 for s, x, lp in zip(np.asarray(info["steps"]), snaps, log_prob, strict=True)]
    return {"snapshots": snapshots, "drift": snapshots[-1]["distance"] - anchor,
            "acceptance": float(jnp.mean(info["acceptance"])),
            "accept_prob": float(jnp.mean(info["accept_prob"]))}


def _chain(energy, model, chain, key, x_start, steps: list[int], conditional: bool):
    """Snapshots (S, N, ...) in data space and the info of one level-0 long chain."""
    run = jax.jit(lambda k, x: recovery.long_run_chain(
        energy, k, x, steps[-1], 0, model.ladder, chain, snapshot_steps=steps,
        conditional=conditional))
    snaps, info = run(key, x_start)
    snaps = np.asarray(snaps) / _y_scale(model)
    if conditional:  # step 0 is x_1 itself, not a y_0
        snaps[0] *= _y_scale(model)
    return snaps, info


def _y_scale(model) -> float:
    """a'_0: y_0 = a'_0 x_0."""
    return float(model.ladder.y_scale(jnp.zeros((), jnp.int32)))


def _progressive(energy, model, chain, lr: LongRun, judge: Judge, key):
    """Progressive samples x_0 (N, ...) with their results, and the chains' start x_1."""
    k_sample, k_start = jax.random.split(key)
    shape = (lr.chains,) + model.example_shape
    x0, info = jax.jit(lambda k: recovery.drl_sample(energy, k, shape, model.ladder, chain,
                                                     keep_levels=True))(k_sample)
    x0, x1 = np.asarray(x0), info["levels"][1]
    if lr.start == "data":
        level0 = jnp.zeros((lr.chains,), jnp.int32)
        _, x1 = model.ladder.diffuse_pair(k_start, jnp.asarray(judge.real), level0)
    results = {"distance_progressive_sample": judge.distance(x0),
               "progressive": dict(judge.describe(x0), nfe=int(info["nfe"]),
                                   acceptance=float(info["acceptance"]))}
    return x0, x1, results


def _chains(energy, model, chain, lr: LongRun, judge: Judge, key) -> tuple[dict, dict]:
    """Progressive samples, then the long chains; (results, figure rows)."""
    k_progressive, k_cond, k_marg = jax.random.split(key, 3)
    start = time.time()
    x0, x1, out = _progressive(energy, model, chain, lr, judge, k_progressive)
    seconds = {"progressive_sample": time.time() - start}
    d_sample = out["distance_progressive_sample"]
    steps = snapshot_steps(lr.steps, chain.num_steps)
    start = time.time()
    snaps, info = _chain(energy, model, chain, k_cond, x1, steps, True)
    if lr.start == "sample":
        out["conditional"] = _measure(judge, snaps, info, d_sample)
    else:  # drift from the step-K snapshot: x_1 of real points is not a sample
        k_index = steps.index(min(chain.num_steps, lr.steps))
        out["conditional"] = _measure(judge, snaps, info, judge.distance(snaps[k_index]))
    rows = {"start": x0 if lr.start == "sample" else judge.real, "conditional": snaps}
    if lr.marginal:  # the marginal EBM exp(-E(y, 0)) from the progressive samples' y_0
        y0 = jnp.asarray(x0) * _y_scale(model)
        rows["marginal"], info = _chain(energy, model, chain, k_marg, y0, steps, False)
        out["marginal"] = _measure(judge, rows["marginal"], info, d_sample)
    seconds["chains"] = time.time() - start
    return dict(out, seconds=seconds, snapshot_steps=steps), rows


def run_long_run(s: settings.Settings, workdir: str) -> dict[str, Any]:
    """Trains (or reuses) the run, then runs the long chains; returns what it writes to
    ``long_run.json``."""
    lr = long_run_settings(settings.require(s))
    load = records.load_average()
    state = train.train_and_evaluate(s, workdir)
    model = builders.build_model(s)
    step, params = evaluate.restore_params(s, workdir, model)
    logging.info("drl_long_run: checkpoint step %d (trained to %d)", step, int(state.step))
    judge = (_toy_judge(s.data, lr.chains) if s.is_toy
             else _image_judge(s, workdir, lr.chains, int(s.seed)))
    chain = s.drl.chain
    energy = param_lib.bind(model.fns.energy, params)
    results, rows = _chains(energy, model, chain, lr, judge,
                            jax.random.PRNGKey(int(s.seed) + 4))
    result = {"checkpoint_step": step, "start": lr.start, "num_chains": lr.chains,
              "chain_steps": lr.steps, "metric": judge.metric,
              "distance_real_same_n": judge.distance(judge.real),
              "data": judge.describe(judge.held_out), **judge.info, **results,
              "drl": s.as_dict()["drl"], "command": markdown.command()}
    report.write(report.output_dir(workdir, lr.start), result, judge.held_out, rows)
    records.write_record(f"drl_long_run_{s.data.dataset}_{lr.start}", result,
                         command=result["command"], load_start=load)
    return result
