"""AIS's budget chosen by measurement: log Z's error against its cost on a trained energy.

    python -m benchmarks.ais_budget --config=CONFIG.py --workdir=DIR [--steps=50,100,200,400]
        [--chains=64,256] [--tune_chains=0,16] [--leapfrog=5] [--repeats=3]
        [--base=eval|fitted|isotropic] [--out=FILE.json] [--config.x=y ...]

The config is loaded as ``main`` loads it (config_flags, every ``--config.*`` override)
and crosses into typed settings once.

On the trained checkpoint of ``DIR`` (restored as ``--mode=eval`` does), the energy at
t = eps of an energy family (time-conditioned: the evaluation's ``nll.ais_nll_metrics``)
or the time-invariant energy (``time_invariant.ais_nll_metrics``), it runs
``likelihood.ais_log_normalizer`` for every (intermediate targets K, chains N, pilot chains
M: 0 is the fixed step size 0.1, M > 0 tunes the step size of every target first) of the grid
``--repeats`` times with independent keys (the same keys for every budget: key i is the
i-th repeat's everywhere). Per budget: log Z of each repeat, their mean and standard
deviation (the real error of ONE run, which the delta-method ``stderr`` over chains
underestimates when the weights are heavy-tailed), the mean within-run ``stderr``, ESS
and acceptance, NFE per chain, and the wall seconds of each call (the first call of a
budget compiles; ``run_s`` is the median of the rest). Every error is also in bits/dim
of the image (nats / (D ln 2): log Z shifts every AIS NLL by the same amount), and each
budget's mean is compared with that of the most expensive one (``shift_vs_reference``,
with the standard error of the difference): AIS's log Ẑ is biased low by an amount that
shrinks as K grows, so a cheaper budget must not sit below the reference by more than its
noise. If log Z keeps rising with K and with the step size, no budget converges: the
record's ``rays`` (the energy along rays r u from the origin, u uniform on the sphere, and
``likelihood.energy_tail`` at the test points) say whether exp(-E) is normalizable at all.
``--steps=`` (empty) records the rays alone. The base is the evaluation's (``--base=eval``:
``nll.ais_base``, on images a Gaussian fitted to the evaluation examples pooled with
N(0, base_std^2 I), half the chains each), that fitted Gaussian alone (``--base=fitted``)
or N(0, base_std^2 I) alone (``--base=isotropic``); each budget also gets the AIS NLL its
mean log Z implies for the evaluation's scored examples, with its 99% lower bound.
"""

from __future__ import annotations

import math
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's workdir.")
_STEPS = flags.DEFINE_string("steps", "50,100,200,400", "Intermediate targets K.")
_CHAINS = flags.DEFINE_string("chains", "64,256", "Chains N.")
_TUNE = flags.DEFINE_string("tune_chains", "0,16", "Pilot chains M (0: fixed step size).")
_LEAPFROG = flags.DEFINE_integer("leapfrog", 5, "Leapfrog steps per HMC move.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Independent runs per budget.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON record.")
_BASE = flags.DEFINE_enum("base", "eval", ["eval", "fitted", "isotropic"],
                          "AIS base: the evaluation's (nll.ais_base: on images N(mean, "
                          "covariance) of the evaluation examples pooled with N(0, "
                          "base_std^2 I)), that fitted base alone, or N(0, base_std^2 I).")
flags.mark_flags_as_required(["config", "workdir"])


def energy_at_eval_time(ctx):
    """``(E(params, y) -> (B,), base_std)`` as the evaluation's AIS reads the energy."""
    import jax.numpy as jnp

    model = ctx.model
    if model.fns.energy is None:
        raise app.UsageError(f"family {ctx.settings.family!r} has no energy; AIS needs an "
                             "energy family (energy, resnet_energy, eqm_energy, ...)")
    if ctx.settings.is_time_invariant:
        return (lambda params, y: model.fns.energy(params, y, jnp.zeros(y.shape[:1]))), 1.0
    t0 = model.sde.eps
    base_std = max(float(model.sde.marginal_std(jnp.asarray(1.0))), 1.0)
    return (lambda params, y: model.fns.energy(params, y, jnp.full((y.shape[0],), t0)),
            base_std)


def implied_nll(budgets: list[dict], energy, params, points, num_bins: int | None) -> None:
    """Adds to each budget the AIS NLL its mean log Z implies for the scored ``points``
    (``nll_nats``, and ``nll_bpd`` on images) and its 99% lower bound (``*_lower99``,
    ``nll.nll_lower_bounds``: log Ẑ is a stochastic lower bound of log Z)."""
    import jax.numpy as jnp
    import numpy as np

    from ebm_vs_score.evaluate import nll

    mean_energy = float(np.mean(np.asarray(energy(params, jnp.asarray(points)), np.float64)))
    dim = math.prod(points.shape[1:])
    for b in budgets:
        out = {"nll_nats": mean_energy + b["log_z_mean"]}
        if num_bins is not None:
            out["nll_bpd"] = float(nll.bits_per_dim(-out["nll_nats"], dim, num_bins))
        b.update(out, **nll.nll_lower_bounds(out, dim, prefix="nll"))


def eval_base(s, ctx, base_std: float) -> tuple[dict, str]:
    """(the AIS base's options, its label): ``--base=eval`` the evaluation's (``nll.ais_base``
    fitted to every evaluation example, dequantized here with a key of their own: another
    draw of the same points' law; AIS is unbiased for any base fixed before its chains; on
    images the fitted base pooled with N(0, base_std^2 I)), ``--base=fitted`` its fitted base
    alone, ``--base=isotropic`` N(0, base_std^2 I) alone."""
    import jax

    from ebm_vs_score.evaluate import nll, runner

    if _BASE.value == "isotropic":
        return {"base_std": base_std}, "isotropic"
    protocol = runner.likelihood_protocol(s)
    points = nll.protocol_points(jax.random.PRNGKey(s.seed + 3), ctx.data, protocol.num_bins)
    base = nll.ais_base(points, protocol.num_bins, base_std)
    if _BASE.value == "fitted" and "bases" in base:
        base = base["bases"][0]
    return base, nll.base_label(base)


def scored_points(s, ctx):
    """(the dequantized examples the evaluation scores, their number of levels or None)."""
    import jax

    from ebm_vs_score.evaluate import nll, runner

    protocol = runner.likelihood_protocol(s)
    points = nll.protocol_points(jax.random.PRNGKey(s.seed + 4), runner._nll_examples(ctx),
                                 protocol.num_bins)
    return points, protocol.num_bins


def budget_runs(energy, params, shape, base: dict, keys, num_steps, num_chains, leapfrog,
                tune_chains):
    """One jitted AIS per key at this budget (``base``: the base's options of
    ``nll.ais_with``: one base or several pooled): a list of per-run dicts."""
    import jax

    from ebm_vs_score.evaluate import nll

    options = dict(base, num_steps=num_steps, num_leapfrog=leapfrog, num_chains=num_chains,
                   tune_chains=tune_chains)

    @jax.jit
    def run(params, key):
        log_z, info = nll.ais_with(lambda y: energy(params, y), key, shape, options)
        per_base = info.get("log_z_per_base", log_z[None])
        # the last target's step size (of the first base when several are pooled)
        last = info["step_sizes"].reshape(-1, num_steps)[0, -1]
        return log_z, info["stderr"], info["ess"], info["acceptance"], last, per_base

    rows = []
    for key in keys:
        start = time.perf_counter()
        log_z, stderr, ess, acc, last, per_base = jax.block_until_ready(run(params, key))
        rows.append({"log_z": float(log_z), "stderr": float(stderr), "ess": float(ess),
                     "acceptance": float(acc), "last_step_size": float(last),
                     "log_z_per_base": [float(v) for v in per_base],
                     "call_s": time.perf_counter() - start})
    return rows


def summarize(rows: list[dict], num_steps: int, num_chains: int, leapfrog: int,
              tune_chains: int, nats_per_bit_dim: float) -> dict:
    """Mean and spread of log Z over the repeats, in nats and bits/dim."""
    log_z = [r["log_z"] for r in rows]
    sd = statistics.stdev(log_z) if len(log_z) > 1 else float("nan")
    later = [r["call_s"] for r in rows[1:]] or [rows[0]["call_s"]]
    return {"num_steps": num_steps, "num_chains": num_chains, "num_leapfrog": leapfrog,
            "tune_chains": tune_chains,
            "nfe_per_chain": 1 + num_steps * leapfrog, "repeats": rows,
            "log_z_mean": statistics.fmean(log_z), "log_z_sd": sd,
            "log_z_sd_bpd": sd / nats_per_bit_dim,
            "stderr_mean": statistics.fmean(r["stderr"] for r in rows),
            "ess_mean": statistics.fmean(r["ess"] for r in rows),
            "acceptance_mean": statistics.fmean(r["acceptance"] for r in rows),
            "first_call_s": rows[0]["call_s"], "run_s": statistics.median(later)}


def compare_with_reference(budgets: list[dict], nats_per_bit_dim: float) -> None:
    """Adds ``shift_vs_reference`` (nats and bits/dim, with its standard error) to each
    budget: its mean log Z minus the most expensive tuned budget's."""
    ref = max(budgets, key=lambda b: (b["nfe_per_chain"] * b["num_chains"], b["tune_chains"]))
    for b in budgets:
        n_b, n_r = len(b["repeats"]), len(ref["repeats"])
        se = math.sqrt(b["log_z_sd"] ** 2 / n_b + ref["log_z_sd"] ** 2 / n_r)
        shift = b["log_z_mean"] - ref["log_z_mean"]
        b.update(reference=[ref["num_steps"], ref["num_chains"]], shift_vs_reference=shift,
                 shift_vs_reference_se=0.0 if b is ref else se,
                 shift_vs_reference_bpd=shift / nats_per_bit_dim)


def _ints(csv: str) -> list[int]:
    """'50,100' -> [50, 100]; '' -> [] (``--steps=``: the rays only, no AIS)."""
    return [int(v) for v in csv.split(",") if v.strip()]


def ray_energies(energy, params, data, shape, radii=(0, 1, 2, 4, 8, 16, 32, 64, 128),
                 num_rays: int = 16) -> dict:
    """E(r u) for ``num_rays`` directions u uniform on the unit sphere, and the tail test
    of ``likelihood.energy_tail`` at the first 64 test points."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ebm_vs_score import likelihood

    u = jax.random.normal(jax.random.PRNGKey(0), (num_rays,) + tuple(shape))
    u = u / jnp.sqrt(jnp.sum(u**2, axis=tuple(range(1, u.ndim)), keepdims=True))
    fn = jax.jit(lambda p, y: energy(p, y))
    table = {str(r): np.asarray(fn(params, r * u)).round(3).tolist() for r in radii}
    tail = likelihood.energy_tail(lambda y: fn(params, y), jnp.asarray(data[:64]))
    return {"radii": list(radii), "energy_along_rays": table, "tail": tail,
            "summary": {r: float(np.median(v)) for r, v in table.items()}}


def main(argv: list[str]) -> None:
    from benchmarks import trained

    s, ctx = trained.restore(argv, _CONFIG.value, _WORKDIR.value)
    import jax

    from benchmarks import timing

    energy, base_std = energy_at_eval_time(ctx)
    shape = tuple(ctx.data.shape[1:])
    base, base_label = eval_base(s, ctx, base_std)
    nats_per_bit_dim = math.prod(shape) * math.log(2)
    keys = [jax.random.fold_in(jax.random.PRNGKey(s.seed + 2), i)
            for i in range(_REPEATS.value)]
    options = {"config": config_flags.get_config_filename(flags.FLAGS["config"]),
               "workdir": _WORKDIR.value, "steps": _STEPS.value, "chains": _CHAINS.value,
               "leapfrog": _LEAPFROG.value, "repeats": _REPEATS.value}
    result = {"schema_version": 1, "kind": "ais_budget", "options": options,
              "machine": timing.machine_info(sys.argv[1:], module="benchmarks.ais_budget"),
              "step": ctx.step, "family": s.family, "dim": math.prod(shape),
              "base_std": base_std, "base": base_label, "budgets": []}
    result["rays"] = ray_energies(energy, ctx.params, ctx.data, shape)
    print(f"rays: {result['rays']['summary']}", file=sys.stderr, flush=True)
    grid = [(m, n, k) for m in _ints(_TUNE.value) for n in _ints(_CHAINS.value)
            for k in _ints(_STEPS.value)]
    for tune_chains, num_chains, num_steps in grid:
        rows = budget_runs(energy, ctx.params, shape, base, keys, num_steps, num_chains,
                           _LEAPFROG.value, tune_chains)
        b = summarize(rows, num_steps, num_chains, _LEAPFROG.value, tune_chains,
                      nats_per_bit_dim)
        result["budgets"].append(b)
        print(f"M={tune_chains} K={num_steps} N={num_chains}: log Z {b['log_z_mean']:.2f} ± "
              f"{b['log_z_sd']:.2f} (sd over runs; stderr {b['stderr_mean']:.2f}), ESS "
              f"{b['ess_mean']:.1f}, acc {b['acceptance_mean']:.2f}, "
              f"{b['run_s']:.1f} s/run", file=sys.stderr, flush=True)
    if result["budgets"]:
        compare_with_reference(result["budgets"], nats_per_bit_dim)
        implied_nll(result["budgets"], energy, ctx.params, *scored_points(s, ctx))
    trained.finish(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
