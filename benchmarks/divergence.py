"""The ODE NLL's divergence chosen by measurement: exact against K Hutchinson probes.

    python -m benchmarks.divergence --config=CONFIG.py --workdir=DIR [--examples=64]
        [--probes=1,4,16] [--exact] [--rtol=1e-4] [--out=FILE.json] [--config.x=y ...]

The config is loaded as ``main`` loads it (config_flags, every ``--config.*`` override)
and crosses into typed settings once.

On the trained checkpoint of ``DIR`` (restored as ``--mode=eval`` does) and the same
dequantized test points (the evaluation's protocol), it runs ``likelihood.ode_log_prob``
with the exact divergence (D JVPs per evaluation) and with K Rademacher probes for each K,
twice with independent probes. Per estimator: mean bits/dim, its standard error over the
examples, the probe noise of one example (``probe_std``, from E[(a - b)^2] / 2 over the
two draws), the probe part of the mean's standard error (``probe_se`` = probe_std /
sqrt(n)), the mean difference from the exact divergence on the same points (paired, with
its standard error: Hutchinson is unbiased, so it should be 0 within it), the NFE and
the wall seconds of each call (the first compiles).
"""

from __future__ import annotations

import math
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's workdir.")
_EXAMPLES = flags.DEFINE_integer("examples", 64, "Test points.")
_PROBES = flags.DEFINE_string("probes", "1,4,16", "Hutchinson probe counts K.")
_EXACT = flags.DEFINE_bool("exact", False, "Also the exact divergence.")
_RTOL = flags.DEFINE_float("rtol", 1e-4, "rtol = atol of the solver.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON record.")
flags.mark_flags_as_required(["config", "workdir"])


def _draw(run, params, points, key, batch: int) -> tuple[list[float], float, float]:
    from ebm_vs_score.evaluate import nll

    start = time.perf_counter()
    log_p, nfe, _ = nll.ode_log_probs(run, params, points, key, batch)
    return log_p, nfe, time.perf_counter() - start


def estimator(ctx, points, key, num_probes: int, rtol: float, num_bins: int) -> dict:
    """Two draws (one for the exact divergence) of the NLL of ``points`` in bits/dim."""
    import jax
    import numpy as np

    from ebm_vs_score.evaluate import nll

    protocol = nll.Protocol(num_bins=num_bins, num_probes=num_probes, rtol=rtol,
                                    atol=rtol, batch_size=len(points))
    run = nll.ode_runner(ctx.model.fns.score, sde=ctx.model.sde, protocol=protocol)
    dim = int(np.prod(points.shape[1:]))
    draws = [_draw(run, ctx.params, points, jax.random.fold_in(key, i), len(points))
             for i in range(1 if num_probes == 0 else 2)]
    bpd = [nll.bits_per_dim(d[0], dim, num_bins) for d in draws]
    n = len(points)
    out = {"num_probes": num_probes, "n": n, "bpd": float(bpd[0].mean()),
           "bpd_se": float(bpd[0].std(ddof=1) / math.sqrt(n)), "nfe": draws[0][1],
           "call_s": [d[2] for d in draws], "per_example_bpd": bpd[0].tolist()}
    if len(bpd) == 2:
        probe_std = float(np.sqrt(np.mean((bpd[0] - bpd[1]) ** 2) / 2))
        out.update(probe_std=probe_std, probe_se=probe_std / math.sqrt(n),
                   bpd_second_draw=float(bpd[1].mean()))
    return out


def main(argv: list[str]) -> None:
    from benchmarks import trained

    s, ctx = trained.restore(argv, _CONFIG.value, _WORKDIR.value)
    import jax
    import numpy as np

    from benchmarks import timing
    from ebm_vs_score.evaluate import nll, runner

    num_bins = int(runner.likelihood_protocol(s).num_bins)
    key = jax.random.PRNGKey(s.seed + 2)
    points = nll.protocol_points(key, ctx.data[:_EXAMPLES.value], num_bins)
    options = {"config": config_flags.get_config_filename(flags.FLAGS["config"]),
               "workdir": _WORKDIR.value, "examples": _EXAMPLES.value,
               "probes": _PROBES.value, "exact": _EXACT.value, "rtol": _RTOL.value}
    counts = ([0] if _EXACT.value else []) + [int(k) for k in _PROBES.value.split(",")]
    result = {"schema_version": 1, "kind": "divergence", "options": options,
              "machine": timing.machine_info(sys.argv[1:], module="benchmarks.divergence"),
              "step": ctx.step, "estimators": []}
    for k in counts:
        row = estimator(ctx, points, jax.random.fold_in(key, 1), k, _RTOL.value, num_bins)
        result["estimators"].append(row)
        print(f"K={k}: {row['bpd']:.4f} ± {row['bpd_se']:.4f} bpd, probe std "
              f"{row.get('probe_std', 0):.4f}, NFE {row['nfe']:.0f}, calls "
              f"{', '.join(f'{s:.0f}' for s in row['call_s'])} s", file=sys.stderr, flush=True)
    exact = next((r for r in result["estimators"] if r["num_probes"] == 0), None)
    for row in result["estimators"]:
        if exact is not None and row is not exact:
            diff = np.asarray(row["per_example_bpd"]) - np.asarray(exact["per_example_bpd"])
            row.update(diff_vs_exact=float(diff.mean()),
                       diff_vs_exact_se=float(diff.std(ddof=1) / math.sqrt(diff.size)))
    trained.finish(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
