"""A score's cost per network evaluation inside the project's loops, against a bare call.

    python -m benchmarks.loops [--families=U,C,C-ResNet] [--batch=64] [--steps=20]
        [--before=DIR] [--pairs=3] [--out=FILE.json]

For each family (digits U-Net; C-ResNet is the scalar ResNet energy) it times, after
compilation, one lone batched score call (``bare``) and the real loops that call it:
Euler-Maruyama (``em``), MALA (``mala``, energies), the fixed-grid probability-flow ODE
(``ode``, Heun), AIS (``ais``, ``likelihood.ais_log_normalizer`` at t = eps, one HMC
step of 5 leapfrog steps per temperature, ``batch`` chains) and the ODE likelihood's
augmented vector field (``nll``: the drift and its divergence with one Hutchinson probe,
as ``likelihood.ode_log_prob`` evaluates it, in a ``lax.scan`` of ``steps`` Euler steps,
against a bare call of the field: at initial parameters the adaptive solver needs
thousands of steps, so its own loop is tested for canonical convolutions in
tests/test_conv.py and timed end to end by ``benchmarks.eval_cost``). ``ratio`` is seconds
per NFE inside the loop over seconds per bare call (the bare call pays its own dispatch,
so a loop can come out below 1). Each program's optimized HLO is searched for
convolutions that are not in XLA:CPU's canonical form (``non_canonical``; BENCHMARKS.md
finding 2): those run through a naive loop emitter inside a loop body.

``--before=DIR`` (a checkout of another commit) runs the same measurements with that
tree's library in fresh processes, alternating with this tree ``--pairs`` times
(A B B A ...), so that a change in the machine's load hits both; every side records its
commit, and the JSON the load average at the start and end of each side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CANONICAL = "dim_labels=b01f_01io->b01f"
LOOPS = ("em", "mala", "ode", "ais", "nll")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="U,C,C-ResNet")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="sampler / AIS steps per call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--before", help="a checkout of the commit to compare with (its library)")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def conv_labels(compiled) -> dict[str, int]:
    """Convolutions in the optimized HLO and how many are not canonical."""
    labels = re.findall(r"convolution\([^)]*\), window=\{[^}]*\}, (dim_labels=[^,\s]+)",
                        compiled.as_text())
    return {"convolutions": len(labels),
            "non_canonical": sum(label != CANONICAL for label in labels)}


def _timed(fn, args, opts) -> dict:
    import jax

    from benchmarks import timing

    compiled, compile_s = timing.compile_timed(jax.jit(fn), *args)
    t = timing.time_runner(timing.call_runner(compiled, *args), repeats=opts.repeats,
                           min_time=opts.min_time)
    out = jax.block_until_ready(compiled(*args))
    info = out[1] if isinstance(out, tuple) and isinstance(out[1], dict) else {}
    nfe = float(jax.device_get(info["nfe"])) if "nfe" in info else 1.0
    return {**t.as_dict(), "compile_s": compile_s["compile_s"], "nfe": nfe,
            "time_per_nfe_s": t.median_s / nfe, **conv_labels(compiled)}


def _loop_fns(model, spec, steps: int):
    """``{name: (fn(params, x, key), bare name)}`` of the loops measured for ``model``."""
    import jax
    import jax.numpy as jnp

    from ebm_vs_score import estimators, likelihood, samplers
    from ebm_vs_score import parameterization as param_lib

    sde, shape = model.sde, (spec.batch,) + model.example_shape
    bind = param_lib.bind

    def sampler(method, **options):
        def fn(params, x, key):
            energy = None if model.fns.energy is None else bind(model.fns.energy, params)
            return samplers.sample(method, key, shape, sde=sde,
                                   score_fn=bind(model.fns.score, params), energy_fn=energy,
                                   num_steps=steps, **options)
        return fn

    def ais(params, x, key):
        t0 = jnp.full((spec.batch,), sde.eps)
        return likelihood.ais_log_normalizer(lambda y: model.fns.energy(params, y, t0), key,
                                             model.example_shape, num_steps=steps,
                                             num_chains=spec.batch)

    def field(params, x, key):  # the ODE likelihood's augmented field, one probe
        drift = samplers.ode_drift(bind(model.fns.score, params), sde)
        v = estimators.probes(key, (1,) + x.shape, "rademacher", x.dtype)
        return estimators.divergence(lambda u: drift(u, jnp.full((u.shape[0],), 0.5)), x, v)

    def nll(params, x, key):  # that field in a scan of Euler steps (the solver's loop body)
        def step(carry, _):
            y, delta = carry
            dy, div = field(params, y, key)
            return (y + 1e-3 * dy, delta + 1e-3 * div), None

        zeros = jnp.zeros(x.shape[:1], x.dtype)
        (y, delta), _ = jax.lax.scan(step, (x, zeros), None, length=steps)
        return (y, delta), {"nfe": jnp.asarray(steps)}

    fns = {"em": (sampler("euler_maruyama"), "bare"),
           "ode": (sampler("ode", ode_solver="heun"), "bare"),
           "bare_field": (field, None), "nll": (nll, "bare_field")}
    if model.fns.energy is not None:
        fns.update(mala=(sampler("mala", step_size=1e-3, adapt=False), "bare"),
                   ais=(ais, "bare"))
    return jax, fns


def family_rows(family: str, args: argparse.Namespace, opts) -> dict:
    """Bare and in-loop times of one family's score (digits, ``args.batch``)."""
    from benchmarks import rows
    from benchmarks.suites import RowSpec

    spec = RowSpec(name=f"loops/digits/{family}", kind="loops", scale="digits",
                   family=family, batch=args.batch)
    _, model, params, x, t = rows.model_and_params(spec)
    jax, fns = _loop_fns(model, spec, args.steps)
    key = jax.random.PRNGKey(1)
    res = {"bare": _timed(lambda p, y, k: model.fns.score(p, y, t), (params, x, key), opts)}
    for name, (fn, _) in fns.items():
        res[name] = _timed(fn, (params, x, key), opts)
        print(f"{family}/{name}: {1e3 * res[name]['time_per_nfe_s']:.2f} ms per NFE, "
              f"NFE {res[name]['nfe']:.0f}, compile {res[name]['compile_s']:.1f} s, "
              f"{res[name]['non_canonical']} non-canonical convolutions",
              file=sys.stderr, flush=True)
    for name, (_, base) in fns.items():
        if base is not None:
            res[name].update(bare=base,
                             ratio=res[name]["time_per_nfe_s"] / res[base]["time_s"],
                             cpu_ratio=(res[name]["cpu_time_s"] / res[name]["nfe"])
                             / res[base]["cpu_time_s"])
    return res


def side(args: argparse.Namespace) -> dict:
    """This process's tree: every family's rows (run with --side)."""
    from ebm_vs_score import hostcpu

    hostcpu.use_fast_cpu_kernels()
    from benchmarks import rows

    opts = rows.Options(repeats=args.repeats, min_time=args.min_time,
                        sampler_steps=args.steps, asym_probes=(1,))
    out = {"load_average_start": list(os.getloadavg()), "families": {}}
    for family in args.families.split(","):
        out["families"][family] = family_rows(family, args, opts)
    out["load_average_end"] = list(os.getloadavg())
    return out


def _run_side(tree: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "loops.py"), "--side",
           f"--families={args.families}", f"--batch={args.batch}", f"--steps={args.steps}",
           f"--repeats={args.repeats}", f"--min-time={args.min_time}"]
    env = dict(os.environ, PYTHONPATH=tree)
    start = time.time()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=tree, env=env,
                         check=False)  # stderr (progress) passes through
    if out.returncode != 0:
        raise RuntimeError(f"side {tree} failed with status {out.returncode}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    from benchmarks import report

    result.update(report.checkout_commit(tree), wall_s=time.time() - start)
    return result


def _stats(values: list[float], prefix: str) -> dict:
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return {f"{prefix}_median": statistics.median(values),
            f"{prefix}_mean": statistics.fmean(values),
            f"{prefix}_se": sd / math.sqrt(len(values))}


def summarize(sides: list[dict], label: str) -> dict:
    """Per family and loop, over the sides (pairs) of one tree: the wall-time ratio
    (``ratio``) and CPU-time ratio (``cpu_ratio``, less moved by other processes) with
    their standard errors, ms per NFE, and the non-canonical convolutions."""
    out: dict = {}
    for family, loops in sides[0]["families"].items():
        for loop, row in loops.items():
            if "ratio" not in row:
                continue
            rows_ = [s["families"][family][loop] for s in sides]
            out.setdefault(family, {})[loop] = {
                "code": label, "n": len(rows_), "bare": row["bare"],
                **_stats([r["ratio"] for r in rows_], "ratio"),
                **_stats([r["cpu_ratio"] for r in rows_], "cpu_ratio"),
                "ms_per_nfe_median": 1e3 * statistics.median(r["time_per_nfe_s"]
                                                             for r in rows_),
                "non_canonical": row["non_canonical"], "convolutions": row["convolutions"]}
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.side:
        print(json.dumps(side(args)))
        return 0
    load_start = list(os.getloadavg())
    after = os.path.dirname(HERE)
    trees = [("after", after)] + ([("before", os.path.abspath(args.before))]
                                  if args.before else [])
    sides: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for i in range(args.pairs):
        order = trees[::-1] if (i % 2 == 0) else trees  # before first in pair 0
        for name, tree in order:
            sides[name].append(_run_side(tree, args))
    from benchmarks import timing

    result = {"schema_version": 1, "kind": "loops",
              "machine": timing.machine_info(argv, module="benchmarks.loops"),
              "options": vars(args), "sides": sides,
              "summary": {name: summarize(s, name) for name, s in sides.items()}}
    result["machine"]["load_average_start"] = load_start
    result["machine"]["load_average_end"] = list(os.getloadavg())
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
