"""Benchmark-local experiments behind the findings in BENCHMARKS.md (nothing here is used
by the library; each compares what the library does with one alternative).

    python -m benchmarks.experiments [--scale=digits] [--batch=64] [--only=loop,probes,qc]

* ``loop``: a score evaluated bare, inside ``lax.scan`` (how samplers, Hutchinson with
  K > 1 and ``lax.map`` call it) and in an unrolled loop; counts the convolutions XLA
  leaves non-canonical (XLA:CPU runs those with a naive loop; jax-ml/jax#12868).
* ``probes``: ``conservativeness.asymmetry`` with K probes vs the same estimate with the
  probe loop unrolled in Python (each probe still ``jax.checkpoint``-ed).
* ``qc``: the QC train step with ``conservativeness._probe_terms`` (one vjp + one jvp)
  vs one ``jax.linearize`` whose linear map is applied (Jv) and transposed (J^T v).
* ``convs``: GFLOP/s of the forward, input-gradient and weight-gradient 3x3 convolutions
  of the CIFAR U-Net's layer shapes at ``--batch``, under this process's XLA:CPU kernels
  (``EBM_XLA_CPU_DEFAULTS=1``: XLA's default YNNPACK; else Eigen, ``hostcpu.py``).
* ``sums``: a per-channel gradient sum over (B, H, W) as a reduction vs as a product
  with a vector of ones (what ``models/channelwise.py`` makes autodiff emit).
* ``ablate``: the CIFAR U train step at ``--batch`` with GroupNorm, the attention blocks
  or dropout replaced by the identity (and GroupNorm and dropout both): what each costs.
* ``optimizer``: the parameter update of the CIFAR U train step (``train.make_optimizer``'s
  clip + Adam, ``optax.apply_updates``, the EMA and the gradient norm, as ``train_step``
  writes them) against the same arithmetic in one ``jax.tree.map`` that reads gradient,
  moments, parameters and EMA once and writes the four results together.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import rows, timing
from benchmarks.peer_pytorch import kernel_arrays, kernel_shapes
from benchmarks.suites import RowSpec
from ebm_vs_score import builders, conservativeness, hostcpu, settings, train
from ebm_vs_score.models import layers, unet

CANONICAL = "dim_labels=b01f_01io->b01f"


def _conv_labels(compiled) -> dict[str, int]:
    """Number of convolutions in the optimized HLO, and how many are non-canonical."""
    labels = re.findall(r"convolution\([^)]*\), window=\{[^}]*\}, (dim_labels=[^,\s]+)",
                        compiled.as_text())
    return {"convolutions": len(labels),
            "non_canonical": sum(label != CANONICAL for label in labels)}


def _perturbed(params, scale: float = 0.02):
    """Params away from the zero-initialized output layer, so that J != 0."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    return treedef.unflatten([p + scale * jax.random.normal(k, p.shape, p.dtype)
                              for p, k in zip(leaves, keys, strict=True)])


def _measure(fn, args, per_call: int, opts: rows.Options) -> dict:
    compiled, compile_s = timing.compile_timed(jax.jit(fn), *args)
    t = timing.time_runner(timing.call_runner(compiled, *args), repeats=opts.repeats,
                           min_time=opts.min_time)
    return {"wall_ms": 1e3 * t.median_s / per_call, "cpu_ms": 1e3 * t.cpu_s / per_call,
            "compile_s": compile_s["compile_s"], "flops": timing.cost_flops(compiled),
            **_conv_labels(compiled)}


def loop_experiment(spec: RowSpec, opts: rows.Options, length: int = 4) -> dict:
    """ms per score evaluation: bare, in a ``lax.scan`` of ``length``, unrolled."""
    _, model, params, x, t = rows.model_and_params(spec)
    score = model.fns.score

    def looped(unroll):
        def fn(params, x, t):
            body = lambda c, _: (score(params, x + 1e-3 * c, t), None)
            return jax.lax.scan(body, jnp.zeros_like(x), None, length=length,
                                unroll=unroll)[0]
        return fn

    return {"bare": _measure(score, (params, x, t), 1, opts),
            "scan": _measure(looped(1), (params, x, t), length, opts),
            "unrolled": _measure(looped(True), (params, x, t), length, opts)}


def hutchinson_unrolled(field, x, key, num_probes):
    """``conservativeness.hutchinson_traces`` with the probe loop unrolled (same keys)."""
    keys = jax.random.split(key, num_probes)
    probe = jax.checkpoint(lambda k: conservativeness._probe_terms(
        field, x, jax.random.rademacher(k, x.shape, x.dtype)))
    terms = [probe(k) for k in keys]
    return (sum(a for a, _ in terms) / num_probes, sum(b for _, b in terms) / num_probes)


def probe_terms_linearized(field, x, v):
    """``(||J^T v||^2, (J^T v).(J v))`` from one ``jax.linearize`` (one forward pass)."""
    _, jvp_fn = jax.linearize(field, x)
    jv = jvp_fn(v)
    (jtv,) = jax.linear_transpose(jvp_fn, x)(v)
    flat = lambda a: a.reshape(a.shape[0], -1)
    return jnp.sum(flat(jtv) ** 2, axis=-1), jnp.sum(flat(jtv) * flat(jv), axis=-1)


@contextlib.contextmanager
def patched(module, name, value):
    """Temporarily replaces ``module.name`` (experiment only; restored on exit)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def probes_experiment(spec: RowSpec, opts: rows.Options, num_probes: int = 4) -> dict:
    """Per-probe time of K-probe Asym: library (scan) vs unrolled; results must agree."""
    _, model, params, x, t = rows.model_and_params(spec)
    params = _perturbed(params)
    key = jax.random.PRNGKey(2)
    field = lambda p, y: model.fns.score(p, y, t)
    lib = lambda p, x, k: conservativeness.hutchinson_traces(
        lambda y: field(p, y), x, k, num_probes)
    unrolled = lambda p, x, k: hutchinson_unrolled(lambda y: field(p, y), x, k, num_probes)
    out = {"scan": _measure(lib, (params, x, key), num_probes, opts),
           "unrolled": _measure(unrolled, (params, x, key), num_probes, opts)}
    a, b = jax.jit(lib)(params, x, key), jax.jit(unrolled)(params, x, key)
    out["max_rel_diff"] = max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(u)) + 1e-30))
                              for u, v in zip(a, b, strict=True))
    return out


def _qc_step(spec: RowSpec, opts: rows.Options) -> dict:
    s = settings.from_config(rows.make_config(spec.scale, "QC", spec.batch))
    model = builders.build_model(s)
    mesh = train.make_mesh()
    tx = train.make_optimizer(s.optim)
    state = train.replicate(train.init_state(model, tx, s.seed), mesh)
    state = state.replace(params=_perturbed(state.params))
    loss_fn = builders.build_loss_fn(s, model)
    x = np.random.default_rng(0).standard_normal((spec.batch,) + model.example_shape)
    batch = {"x": jnp.asarray(x, jnp.float32)}
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    key = jax.random.PRNGKey(3)
    (loss, metrics), grads = grad(state.params, batch, key)
    res = _measure(jax.value_and_grad(loss_fn, has_aux=True), (state.params, batch, key), 1,
                   opts)
    res["qc"] = float(metrics["qc"])
    res["grad_norm"] = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
    return res


def qc_experiment(spec: RowSpec, opts: rows.Options) -> dict:
    """Loss+gradient of the QC objective: vjp + jvp (library) vs one linearize."""
    out = {"vjp_jvp": _qc_step(spec, opts)}
    with patched(conservativeness, "_probe_terms", probe_terms_linearized):
        out["linearize"] = _qc_step(spec, opts)
    return out


def _conv(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_fns(stride: int) -> dict:
    return {"forward": lambda x, w, g: _conv(x, w, stride),
            "input_grad": lambda x, w, g: jax.vjp(lambda x: _conv(x, w, stride), x)[1](g)[0],
            "weight_grad": lambda x, w, g: jax.vjp(lambda w: _conv(x, w, stride), w)[1](g)[0]}


def convs_experiment(batch: int, opts: rows.Options) -> dict:
    """GFLOP/s of y = conv(x, w), of its input gradient and of its weight gradient, at the
    shapes and on the inputs of ``peer_pytorch --kernels``."""
    out = {}
    for key, size, c_in, c_out, stride, gflop in kernel_shapes(batch):
        args = [jnp.asarray(a) for a in kernel_arrays(batch, size, c_in, c_out, stride)]
        row = {}
        for name, fn in _conv_fns(stride).items():
            ms = _measure(fn, args, 1, opts)["wall_ms"]
            row[name] = {"ms": ms, "gflop_per_s": gflop / ms * 1e3}
        out[key] = row
    return out


def sums_experiment(batch: int, opts: rows.Options) -> dict:
    """ms of sum over (B, H, W) of a (batch, 32, 32, 128) array: reduce vs ones-product."""
    g = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 32, 32, 128)),
                    jnp.float32)
    return {name: _measure(fn, (g,), 1, opts)["wall_ms"]
            for name, fn in channel_sum_fns(g.shape).items()}


def channel_sum_fns(shape: tuple[int, ...]) -> dict:
    """The sum over all but the last axis, as a reduction and as a product with ones."""
    ones = jnp.ones((int(np.prod(shape[:-1])),), jnp.float32)
    return {"reduce": lambda g: g.sum(tuple(range(g.ndim - 1))),
            "ones_product": lambda g: ones @ g.reshape(-1, g.shape[-1])}


class _NoDropout:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, x, deterministic=None):
        return x


def ablate_experiment(batch: int, opts: rows.Options) -> dict:
    """ms per CIFAR U train step: as is, and without GroupNorm / attention / dropout, and
    without both GroupNorm and dropout (a floor for what faster versions of them could buy)."""
    spec = RowSpec("experiment", "train", "cifar", "U", batch)
    identity_norm = lambda x, num_groups, dtype: x  # noqa: E731
    identity_attn = lambda remat, *args, **kwargs: (lambda h: h)  # noqa: E731
    no_norm = [(layers, "group_norm", identity_norm), (unet, "group_norm", identity_norm)]
    no_dropout = [(layers.nn, "Dropout", _NoDropout)]
    variants = {"as_is": [], "no_group_norm": no_norm,
                "no_attention": [(unet, "attn_block", identity_attn)],
                "no_dropout": no_dropout, "no_group_norm_no_dropout": no_norm + no_dropout}
    out = {}
    for name, patches in variants.items():
        with contextlib.ExitStack() as stack:
            for module, attr, value in patches:
                stack.enter_context(patched(module, attr, value))
            out[name] = 1e3 * rows.train_row(spec, opts)[0]["time_s"]
        print(f"ablate/{name}: {out[name]:.0f} ms/step", flush=True)
    return out


def library_update(tx, ema_decay):
    """The update half of ``train.train_step``: clip + Adam, apply, EMA, gradient norm."""
    import optax

    def update(grads, opt_state, params, ema, step):
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        return params, opt_state, ema, optax.tree_utils.tree_norm(grads)

    return update


def fused_update(optim, ema_decay):
    """The same arithmetic as :func:`library_update` for ``optim.optimizer='adam'`` with
    clipping (optax's clip_by_global_norm, scale_by_adam, linear warmup), one tree.map."""
    import optax

    schedule = optax.linear_schedule(0.0, optim.lr, max(int(optim.warmup), 1))

    def update(grads, opt_state, params, ema, step):
        (_, (adam, sched)) = opt_state
        g_norm = optax.tree_utils.tree_norm(grads)
        keep = g_norm < optim.grad_clip
        count = optax.safe_increment(adam.count)
        c1, c2 = 1 - optim.beta1**count, 1 - optim.beta2**count
        lr = schedule(sched.count)
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))

        def leaf(g, m, v, p, e):
            g = jnp.where(keep, g, (g / g_norm) * optim.grad_clip)
            m = (1 - optim.beta1) * g + optim.beta1 * m
            v = (1 - optim.beta2) * g**2 + optim.beta2 * v
            p = p + (-lr) * ((m / c1) / (jnp.sqrt(v / c2) + optim.eps))
            return m, v, p, decay * e + (1.0 - decay) * p

        out = jax.tree.map(leaf, grads, adam.mu, adam.nu, params, ema)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)  # noqa: E731
        state = (opt_state[0], (adam._replace(count=count, mu=pick(0), nu=pick(1)),
                                sched._replace(count=optax.safe_increment(sched.count))))
        return pick(2), state, pick(3), g_norm

    return update


def optimizer_experiment(batch: int, opts: rows.Options) -> dict:
    """ms of the CIFAR U parameter update: library vs fused; the largest difference."""
    s, _, params, _, _ = rows.model_and_params(RowSpec("experiment", "train", "cifar", "U",
                                                       batch))
    tx = train.make_optimizer(s.optim)
    grads = _perturbed(jax.tree.map(jnp.zeros_like, params))
    state = tx.init(params)
    state = tx.update(grads, state, params)[1]  # a step in, so that the moments are not 0
    args = (grads, state, params, _perturbed(params), jnp.asarray(3.0))
    lib = library_update(tx, s.training.ema_decay)
    fused = fused_update(s.optim, s.training.ema_decay)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), lib(*args), fused(*args))
    out = {"library": _measure(lib, args, 1, opts), "fused": _measure(fused, args, 1, opts),
           "max_abs_difference": max(jax.tree.leaves(diff)),
           "num_params": sum(p.size for p in jax.tree.leaves(params))}
    print(f"optimizer: library {out['library']['wall_ms']:.0f} ms, fused "
          f"{out['fused']['wall_ms']:.0f} ms, max |diff| {out['max_abs_difference']:.2g}",
          flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.experiments")
    p.add_argument("--scale", default="digits")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--only", default="loop,probes,qc")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--out")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    hostcpu.use_fast_cpu_kernels()  # as main does (EBM_XLA_CPU_DEFAULTS=1: XLA's defaults)
    opts = rows.Options(args.repeats, args.min_time, 0, ())
    spec = lambda family: RowSpec("experiment", "asym", args.scale, family, args.batch)
    argv = sys.argv[1:] if argv is None else argv
    result = {"machine": timing.machine_info(argv, module="benchmarks.experiments")}
    todo = args.only.split(",")
    for family in ("U", "C"):
        if "loop" in todo:
            result[f"loop/{family}"] = loop_experiment(spec(family), opts)
            print(f"loop/{family}", json.dumps(result[f"loop/{family}"]), flush=True)
        if "probes" in todo:
            result[f"probes/{family}"] = probes_experiment(spec(family), opts)
            print(f"probes/{family}", json.dumps(result[f"probes/{family}"]), flush=True)
    if "qc" in todo:
        result["qc"] = qc_experiment(spec("QC"), opts)
        print("qc", json.dumps(result["qc"]), flush=True)
    for name, run in (("convs", convs_experiment), ("sums", sums_experiment),
                      ("ablate", ablate_experiment), ("optimizer", optimizer_experiment)):
        if name in todo:
            result[name] = run(args.batch, opts)
            print(name, json.dumps(result[name]), flush=True)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
