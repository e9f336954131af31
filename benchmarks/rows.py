"""Measuring one row: a real train step, a sampler against a bare network evaluation, or
the Hutchinson Asym estimator against one forward pass.

Every row builds its model from the same ``config_base.get_config(scale, family)`` that
training uses, so U, C and QC share one network per scale (the toy MLP or the U-Net) and
C-ResNet is that scale's scalar energy network (a ResNet; a scalar MLP on toy). Inputs
are synthetic (standard normal, fixed seed): the input pipeline is not part of any number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.suites import FAMILIES, RowSpec
from ebm_vs_score import builders, config_base, settings, train


@dataclasses.dataclass(frozen=True)
class Options:
    """How to time: repeats, seconds per repeat, sampler steps, Asym probe counts."""

    repeats: int
    min_time: float
    sampler_steps: int
    asym_probes: tuple[int, ...]
    keep_runners: bool = False  # keep train-step runners alive for --profile


def make_config(scale: str, family: str, batch: int | None, dtype: str = "float32",
                training: dict | None = None):
    """The training config of a benchmark family; QC gets one probe and a positive weight.

    ``batch`` None keeps the config's ``training.batch_size``; ``dtype`` is the compute
    dtype (``model.dtype``); ``training`` overrides ``training.*`` fields last.
    """
    config = config_base.get_config(scale, FAMILIES[family])
    config.model.dtype = dtype
    if batch is not None:
        config.training.batch_size = batch
    if family == "QC":
        config.training.qc_probes = 1
        if config.training.qc_weight <= 0:
            config.training.qc_weight = 1e-4
    for field, value in (training or {}).items():
        config.training[field] = value
    settings.validate(config, num_devices=jax.device_count())
    return config


def _normal(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _timed(compiled, run: Callable[[int], None], opts: Options, compile_s: dict) -> dict:
    """Median time of ``run`` plus compile times, FLOPs and memory of ``compiled``."""
    t = timing.time_runner(run, repeats=opts.repeats, min_time=opts.min_time)
    flops = compile_s.get("flops")
    out = {**t.as_dict(), **compile_s, "flops": flops,
           "flops_per_s": None if flops is None else flops / t.median_s,
           "memory": timing.memory_info(compiled)}
    return out


def train_row(spec: RowSpec, opts: Options) -> tuple[dict, Any]:
    """Steps/s and examples/s of ``train.compile_train_step``, the step users run.

    Returns the row and, if ``opts.keep_runners``, ``(compiled, run)`` for profiling.
    """
    s, state, step, batch = _train_inputs(spec)
    size = int(s.training.batch_size)
    compiled, compile_s = timing.compile_timed(step, state, batch)
    cell = [state]

    def run(n: int) -> None:
        s = cell[0]
        for _ in range(n):
            s, _ = compiled(s, batch)
        cell[0] = jax.block_until_ready(s)

    row = _timed(compiled, run, opts, compile_s)
    row.update(batch=size, steps_per_s=1.0 / row["time_s"], examples_per_s=size / row["time_s"],
               num_params=train.num_params(cell[0].params),
               objective=s.loss.objective, qc_weight=s.loss.qc_weight,
               qc_probes=s.loss.qc_probes, qc_fraction=s.loss.qc_fraction,
               qc_every=s.loss.qc_every, network=s.model.name)
    return row, ((compiled, run) if opts.keep_runners else None)


def _train_inputs(spec: RowSpec, training: dict | None = None):
    """``(settings, state, step, batch)``: a fresh replicated state, the jitted train step of
    the row's config (``training``: ``training.*`` overrides), and a sharded N(0, I) batch."""
    config = make_config(spec.scale, spec.family, spec.batch, spec.dtype, training)
    s = settings.from_config(config)
    model = builders.build_model(s)
    mesh = train.make_mesh()
    state, step = train.fresh_state_and_step(s, model, mesh)
    size = int(s.training.batch_size)
    batch = train.global_batch({"x": _normal((size,) + model.example_shape)}, mesh)
    return s, state, step, batch


def train_step_runner(spec: RowSpec) -> tuple[Callable[[], None], Any]:
    """``(one_step, settings)``: ``one_step()`` runs one real train step and blocks on it."""
    s, state, step, batch = _train_inputs(spec)
    cell = [state]

    def one_step() -> None:
        cell[0], _ = step(cell[0], batch)
        jax.block_until_ready(cell[0])

    return one_step, s


def model_and_params(spec: RowSpec):
    """``(settings, model, params, x, t)`` of a row: initial params, N(0, I) inputs, t = 0.5."""
    s = settings.from_config(make_config(spec.scale, spec.family, spec.batch, spec.dtype))
    model = builders.build_model(s)
    params = builders.init_params(model, jax.random.PRNGKey(s.seed))
    x = jnp.asarray(_normal((spec.batch,) + model.example_shape))
    t = jnp.full((spec.batch,), 0.5, jnp.float32)
    return s, model, params, x, t


def bare_eval(fn: Callable, params, x, t, opts: Options) -> dict:
    """Time of one batched call ``fn(params, x, t)`` (a score or an energy), compiled alone."""
    compiled, compile_s = timing.compile_timed(jax.jit(fn), params, x, t)
    return _timed(compiled, timing.call_runner(compiled, params, x, t), opts, compile_s)


def bare_loop_eval(fn: Callable, params, x, t, num_evals: int, opts: Options) -> dict:
    """Seconds per evaluation of ``fn`` called ``num_evals`` times in one compiled loop,
    each call on the previous one's output (as a sampler chains them): the baseline a
    sampler is compared with, free of the per-call dispatch a lone call pays (on a GPU
    that dispatch made samplers look cheaper than the network they run)."""

    def chain(params, x, t):
        return jax.lax.fori_loop(0, num_evals, lambda _, y: y - 1e-3 * fn(params, y, t), x)

    compiled, compile_s = timing.compile_timed(jax.jit(chain), params, x, t)
    t_loop = timing.time_runner(timing.call_runner(compiled, params, x, t),
                                repeats=opts.repeats, min_time=opts.min_time)
    return {"time_s": t_loop.median_s / num_evals, "loop_time_s": t_loop.median_s,
            "num_evals": num_evals, "compile_s": compile_s["compile_s"]}


def _sampler_fn(method: str, shape: tuple[int, ...], model, num_steps: int, options: dict):
    """``sample_fn(params, key) -> (samples, info)``, as ``train.make_sample_fn`` builds it."""
    from ebm_vs_score import parameterization, samplers

    def sample_fn(params, key):
        return samplers.sample(
            method, key, shape, sde=model.sde,
            score_fn=parameterization.bind(model.fns.score, params),
            energy_fn=parameterization.bind(model.fns.energy, params),
            num_steps=num_steps, **options)

    return jax.jit(sample_fn)


def sampler_row(spec: RowSpec, opts: Options, bare: dict, bare_loop: dict) -> dict:
    """Seconds per network evaluation of a sampler vs the bare score evaluations.

    ``overhead = (sampler time / NFE) / bare_loop time - 1``: what the sampler adds per
    evaluation (its arithmetic, MH energies) beyond the network run in a loop of its own;
    ``bare_eval_s`` is one lone batched call (with its dispatch), for reference.
    """
    s, model, params, _, _ = model_and_params(spec)
    options = settings.override(s, {"sampling.method": spec.method}).sampling.options
    shape = (spec.batch,) + model.example_shape
    fn = _sampler_fn(spec.method, shape, model, opts.sampler_steps, options)
    key = jax.random.PRNGKey(1)
    compiled, compile_s = timing.compile_timed(fn, params, key)
    t = timing.time_runner(timing.call_runner(compiled, params, key), repeats=opts.repeats,
                           min_time=opts.min_time)
    _, info = compiled(params, key)
    info = {k: float(np.mean(v)) for k, v in jax.device_get(info).items() if np.size(v) == 1}
    nfe = info.get("nfe")
    per_nfe = None if not nfe else t.median_s / nfe
    compile_s.pop("flops"), compile_s.pop("xla_flops")  # the sampler's cost is its time/NFE
    return {**t.as_dict(), **compile_s, "num_steps": opts.sampler_steps, "nfe": nfe,
            "info": info, "time_per_nfe_s": per_nfe, "bare_eval_s": bare["time_s"],
            "bare_loop_eval_s": bare_loop["time_s"],
            "overhead": None if per_nfe is None else per_nfe / bare_loop["time_s"] - 1.0,
            "memory": timing.memory_info(compiled)}


def score_and_energy_evals(spec: RowSpec, opts: Options) -> dict:
    """Bare evaluations of one family: ``score`` (U: forward; C: forward + gradient), the
    same in a loop of ``sampler_steps`` chained calls (``score_loop``) and, for C,
    ``energy`` (forward only)."""
    _, model, params, x, t = model_and_params(spec)
    out = {"score": bare_eval(model.fns.score, params, x, t, opts),
           "score_loop": bare_loop_eval(model.fns.score, params, x, t, opts.sampler_steps, opts)}
    if model.fns.energy is not None:
        out["energy"] = bare_eval(model.fns.energy, params, x, t, opts)
    return out


def _asym_fn(score: Callable, num_probes: int):
    from ebm_vs_score import conservativeness

    def fn(params, x, t, key):
        field = lambda y: score(params, y, t)
        return conservativeness.asymmetry(field, x, key=key, num_probes=num_probes)

    return jax.jit(fn)


def asym_row(spec: RowSpec, opts: Options, evals: dict) -> dict:
    """Hutchinson Asym: seconds per probe vs one network forward pass.

    ``evals`` are this family's bare evaluations; the forward pass is the network alone
    (U: the score; C: the energy), ``per_probe_over_forward`` = (time(K) / K) / forward.
    """
    _, model, params, x, t = model_and_params(spec)
    forward_s = evals.get("energy", evals["score"])["time_s"]
    key = jax.random.PRNGKey(2)
    probes = {}
    for k in opts.asym_probes:
        compiled, compile_s = timing.compile_timed(_asym_fn(model.fns.score, k), params, x, t,
                                                   key)
        row = _timed(compiled, timing.call_runner(compiled, params, x, t, key), opts, compile_s)
        if k > 1:  # a lax.scan over probes: XLA counts its body once
            row.update(xla_flops=None)
        row["per_probe_s"] = row["time_s"] / k
        row["per_probe_over_forward"] = row["per_probe_s"] / forward_s
        probes[str(k)] = row
    return {"forward_s": forward_s, "score_eval_s": evals["score"]["time_s"],
            "probes": probes}
