"""The composition experiment on 2-D toys, measured against exact composed densities.

``python -m ebm_vs_score.main --mode=compose --config=configs/toy_compose.py --workdir=W``

For each family (U = ``score``, C = ``energy``, QC = ``qc``) two models are trained, one per
toy dataset (``compose.datasets``, default 8gaussians and gmm), each in
``W/runs/<family>_<dataset>`` by :func:`ebm_vs_score.train.train_and_evaluate` (a finished
run is reused, an interrupted one resumed). The two are composed (product, mixture,
negation; :mod:`ebm_vs_score.compose`) and the composition is sampled with every sampler in
``compose.samplers``. The exact composed density is evaluated on a grid from the toys'
exact densities and sampled by grid sampling (a cell by its mass, then uniform inside the
cell); each family x sampler x composition gets MMD² to those exact samples, the total
variation of its mode weights (nearest component mean of either toy), and the NFE.
Results: ``W/compose/REPORT.md``, ``W/compose/results.json`` and ``W/compose/samples.png``.

Du et al. 2023 ("Reduce, Reuse, Recycle"): reverse diffusion of a composed score samples
the wrong distribution; Metropolis-corrected annealed MCMC (needs energies) repairs it.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ebm_vs_score import builders, compose, data, evaluate, samplers, settings, train
from ebm_vs_score import metrics as metrics_lib
from ebm_vs_score import results as records

FAMILY_LABELS = {"score": "U", "energy": "C", "qc": "QC", "resnet_energy": "C-ResNet"}
# Fields of the compose config that every component run takes over.
SHARED_FIELDS = ("seed", "training.n_iters", "training.batch_size", "training.log_every",
                 "training.checkpoint_every", "training.sample_every", "sde.name")
EXACT_TOYS = ("checkerboard", "8gaussians", "gmm")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_compose(c: settings.ComposeSettings) -> None:
    """One-sentence ValueError for each bad ``compose.*`` field."""
    _require(len(c.datasets) == 2 and all(d in EXACT_TOYS for d in c.datasets),
             f"compose.datasets={tuple(c.datasets)} must be two toys with exact densities, "
             f"from {EXACT_TOYS}.")
    for fam in c.families:
        _require(fam in FAMILY_LABELS, f"compose.families has {fam!r}; valid names: "
                 f"{list(FAMILY_LABELS)}.")
    for op in c.operators:
        _require(op in compose.OPERATORS, f"compose.operators has {op!r}; valid names: "
                 f"{list(compose.OPERATORS)}.")
    for m in c.samplers:
        _require(m in samplers.METHODS, f"compose.samplers has {m!r}; valid names: "
                 f"{list(samplers.METHODS)}.")
    _require(c.num_samples >= 2 and c.grid_size >= 8 and c.grid_lim > 0,
             "compose.num_samples >= 2, compose.grid_size >= 8 and compose.grid_lim > 0 are "
             "required; fix the override.")


# ----------------------------------------------------------------------------------------
# Component runs
# ----------------------------------------------------------------------------------------


def component_settings(s: settings.Settings, family: str,
                       dataset: str) -> settings.Settings:
    """The toy settings of one component: ``family`` on ``dataset``, shared fields copied."""
    shared = {path: s.get(path) for path in SHARED_FIELDS}
    return settings.of_family("toy", family, {"data.dataset": dataset, **shared})


def _checkpoint_steps(run_dir: str) -> list[int]:
    path = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def train_component(s: settings.Settings, run_dir: str) -> str:
    """Trains (or resumes) the run in ``run_dir``; a finished run is reused. Returns a status."""
    steps = _checkpoint_steps(run_dir)
    if steps and steps[-1] >= s.training.n_iters:
        logging.info("compose: reusing finished run %s", run_dir)
        return "reused"
    logging.info("compose: training %s", run_dir)
    state = train.train_and_evaluate(s, run_dir)
    if int(state.step) < s.training.n_iters:
        raise ValueError(f"compose: run {run_dir} stopped at step {int(state.step)} (SIGTERM "
                         "or Ctrl-C); its checkpoint is saved; rerun the same command to "
                         "resume it.")
    return "trained"


def load_component(s: settings.Settings, run_dir: str):
    """(compose.Component with params bound, sde) of the trained run (EMA params)."""
    model = builders.build_model(s)
    _, params = evaluate.restore_params(s, run_dir, model)
    score = functools.partial(model.fns.score, params)
    energy = None if model.fns.energy is None else functools.partial(model.fns.energy, params)
    return compose.Component(score, energy), model.sde


# ----------------------------------------------------------------------------------------
# Exact answers
# ----------------------------------------------------------------------------------------


def grid_points(lim: float, n: int) -> tuple[np.ndarray, float]:
    """Cell centres (n*n, 2) of the square [-lim, lim]^2 and the cell side."""
    side = 2 * lim / n
    centres = -lim + side * (np.arange(n) + 0.5)
    xx, yy = np.meshgrid(centres, centres)
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32), side


def exact_grid_density(operator: str, c: settings.ComposeSettings) -> np.ndarray:
    """The normalized composed density's cell masses (grid_size, grid_size), row = y."""
    log_probs = [data.toy_log_prob(d) for d in c.datasets]
    weights = {"product": c.product_weights, "mixture": c.mixture_weights}.get(operator)
    log_p = compose.exact_log_density(operator, log_probs, weights=weights, alpha=c.alpha)
    points, _ = grid_points(c.grid_lim, c.grid_size)
    lp = np.asarray(log_p(jnp.asarray(points)), np.float64)
    _require(not np.any(np.isposinf(lp) | np.isnan(lp)),
             f"the exact {operator} of {tuple(c.datasets)} is not a density (a negation "
             "divides by zero where the negated toy has none); pick other compose.datasets.")
    mass = np.exp(lp - lp.max())
    return (mass / mass.sum()).reshape(c.grid_size, c.grid_size)


def exact_samples(mass: np.ndarray, lim: float, n: int, seed: int) -> np.ndarray:
    """n exact samples: a grid cell by its mass, then uniform within the cell."""
    rng = np.random.default_rng(seed)
    size = mass.shape[0]
    points, side = grid_points(lim, size)
    cells = rng.choice(size * size, size=n, p=mass.ravel())
    jitter = rng.uniform(-0.5, 0.5, size=(n, 2)) * side
    return (points[cells] + jitter).astype(np.float32)


def mode_centres(datasets) -> np.ndarray:
    """The component means of the mixture toys among ``datasets`` (the modes we count)."""
    means = [np.asarray(data.toy_mixture(d).means) for d in datasets
             if d in ("8gaussians", "gmm")]
    return np.concatenate(means) if means else np.zeros((0, 2), np.float32)


def mode_weights(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Fraction of the points nearest to each centre."""
    d2 = np.sum((x[:, None, :] - centres[None]) ** 2, -1)
    return np.bincount(np.argmin(d2, 1), minlength=len(centres)) / len(x)


# ----------------------------------------------------------------------------------------
# Sampling and scoring one cell (family x composition x sampler)
# ----------------------------------------------------------------------------------------

MMD_BANDWIDTHS = (0.1, 0.3, 1.0)  # fixed, so that every cell is on one scale
ANNEALED = ("ald", "ula", "mala", "hmc", "uhmc")


def sampler_steps(method: str, c: settings.ComposeSettings) -> tuple[int, dict[str, Any]]:
    """(num_steps, options) of ``method`` from the compose config."""
    if method in ANNEALED:
        return int(c.mcmc_levels), {"n_steps_each": int(c.n_steps_each)}
    if method in ("ode", "ode_adaptive"):
        return int(c.ode_steps), {}
    return int(c.sde_steps), {}


def draw(comp: compose.Component, sde, method: str, key: jax.Array,
         c: settings.ComposeSettings) -> tuple[np.ndarray, dict[str, float]]:
    """Samples of the composition with ``method``; info with nfe (and acceptance)."""
    num_steps, options = sampler_steps(method, c)

    @jax.jit
    def run(key):
        return samplers.sample(method, key, (int(c.num_samples), 2), sde=sde,
                               score_fn=comp.score, energy_fn=comp.energy,
                               num_steps=num_steps, **options)

    x, info = run(key)
    info = {k: float(v) for k, v in info.items() if np.ndim(v) == 0}
    return np.asarray(x), info


def refusal(operator: str, method: str, components) -> str | None:
    """Why a cell cannot run (one phrase), or None."""
    has_energy = all(comp.energy is not None for comp in components)
    if operator == "mixture" and not has_energy:
        return "refused: a mixture needs energies"
    if method in samplers.MH_METHODS and not has_energy:
        return "refused: MH needs an energy"
    return None


def score_cell(x: np.ndarray, exact_x: np.ndarray, centres: np.ndarray) -> dict[str, float]:
    """MMD² to the exact samples and total variation of the mode weights."""
    if not np.all(np.isfinite(x)):
        return {"mmd": float("nan"), "mode_tv": float("nan"), "finite": 0.0}
    out = {"mmd": metrics_lib.mmd(x, exact_x, bandwidths=MMD_BANDWIDTHS), "finite": 1.0}
    if len(centres):
        diff = mode_weights(x, centres) - mode_weights(exact_x, centres)
        out["mode_tv"] = 0.5 * float(np.abs(diff).sum())
    return out


def run_cell(components, sde, operator: str, method: str, key, c, exact_x, centres):
    """One table row (a dict) and its samples (None when refused)."""
    why = refusal(operator, method, components)
    if why is not None:
        return {"status": why}, None
    weights = {"product": c.product_weights, "mixture": c.mixture_weights}.get(operator)
    comp = compose.compose(operator, components, weights=weights, alpha=c.alpha)
    start = time.time()
    x, info = draw(comp, sde, method, key, c)
    row = {"status": "ok", "seconds": time.time() - start, **info}
    row.update(score_cell(x, exact_x, centres))
    return row, x


# ----------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------


def family_components(s: settings.Settings, family: str, workdir: str):
    """Trains or reuses the family's two runs; returns ([Component, Component], sde, status)."""
    comps, status, sde = [], {}, None
    for dataset in s.compose.datasets:
        component = component_settings(s, family, dataset)
        run_dir = os.path.join(workdir, "runs", f"{family}_{dataset}")
        status[dataset] = train_component(component, run_dir)
        comp, sde = load_component(component, run_dir)
        comps.append(comp)
    return comps, sde, status


def exact_references(c: settings.ComposeSettings, seed: int):
    """Per operator: grid masses, exact samples, and the MMD² of two exact sample sets."""
    refs = {}
    for op in c.operators:
        mass = exact_grid_density(op, c)
        x = exact_samples(mass, c.grid_lim, int(c.num_samples), seed)
        y = exact_samples(mass, c.grid_lim, int(c.num_samples), seed + 1)
        refs[op] = {"mass": mass, "x": x,
                    "floor": metrics_lib.mmd(x, y, bandwidths=MMD_BANDWIDTHS)}
    return refs


def run_compose(s: settings.Settings, workdir: str) -> str:
    """Runs the experiment end to end; returns the path of ``W/compose/REPORT.md``."""
    if settings.require(s).compose is None:
        from ebm_vs_score.errors import ConfigError

        raise ConfigError("--mode=compose runs the composition experiment of "
                          "configs/toy_compose.py (its compose section names the families it "
                          "trains); this config has no compose section, so pass "
                          "--config=configs/toy_compose.py")
    c = s.compose
    validate_compose(c)
    load = records.load_average()
    out_dir = os.path.join(workdir, "compose")
    os.makedirs(out_dir, exist_ok=True)
    refs = exact_references(c, s.seed)
    centres = mode_centres(c.datasets)
    rows, shown, runs = [], {}, {}
    key = jax.random.PRNGKey(s.seed)
    for family in c.families:
        components, sde, runs[family] = family_components(s, family, workdir)
        for op in c.operators:
            for method in c.samplers:
                key, sub = jax.random.split(key)
                logging.info("compose: %s %s %s", family, op, method)
                row, x = run_cell(components, sde, op, method, sub, c, refs[op]["x"], centres)
                rows.append({"family": family, "operator": op, "sampler": method, **row})
                shown[(family, op, method)] = x
    from ebm_vs_score.compose import report as compose_report

    results = {"rows": rows, "runs": runs,
               "floor": {op: refs[op]["floor"] for op in c.operators},
               "config": s.as_dict()}
    evaluate.write_json_atomic(os.path.join(out_dir, "results.json"), results)
    records.write_record("compose", results, load_start=load)  # results/compose.json
    compose_report.write_figure(os.path.join(out_dir, "samples.png"), c, refs, shown)
    return compose_report.write_report(out_dir, s, results)
