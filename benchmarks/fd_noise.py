"""How much of a study's FD noise is the sample set's: paired sampler draws of trained runs.

    python -m benchmarks.fd_noise --study_dir=DIR [--variants=score,energy] [--seed=0]
        [--draws=8] [--nums=297] [--record=NAME]

For the run (variant, seed) of each variant of the study in DIR (restored as
``--mode=eval`` restores it, from the run's own config.json), it draws ``--draws`` sample
sets with independent keys, each of every size in ``--nums``, with the run's sampler, and
scores each as the evaluation does (``runner.sample_quality``: the study's offline
classifier against the test digits; FD, IS, precision, recall). Draw d uses the same key
for every variant, as the study's evaluation uses the same key for every family of a seed,
so the per-draw differences between variants are paired the way the study's per-seed
differences are. Per variant and size: every draw's metrics, their mean and sd over draws;
per size and variant after the first: the per-draw difference to the first variant, its
mean and sd.

The sd over draws at the study's sample size is the noise that the sample set alone puts
into one seed's number; the study's sd over seeds of the same difference holds that and
the training's noise. How the sd falls with the sample size says what more samples buy
(``results.write_record``: ``results/<record>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

METRICS = ("fd", "is", "precision", "recall")


def study_run_parser(prog: str, doc: str, variants: str,
                     variants_help: str) -> argparse.ArgumentParser:
    """The arguments of a command on one seed's trained runs of a study: --study_dir,
    --variants, --seed and --record."""
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study_dir", required=True, help="a study directory (its runs/)")
    p.add_argument("--variants", default=variants, help=variants_help)
    p.add_argument("--seed", type=int, default=0, help="the runs' training seed")
    p.add_argument("--record", help="write results/<record>.json")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = study_run_parser("python -m benchmarks.fd_noise", __doc__, "score,energy",
                         "comma-separated study variants; differences are to the first")
    p.add_argument("--draws", type=int, default=8, help="independent sample sets per size")
    p.add_argument("--nums", default="297", help="comma-separated sample-set sizes")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws={args.draws} must be at least 2 (an sd needs two draws)")
    return args


def run_settings(study_dir: str, variant: str, seed: int):
    """The typed settings a study run was trained with (its config.json)."""
    from ebm_vs_score import settings
    from ebm_vs_score import workdir as workdir_lib
    from ebm_vs_score.study import plan

    run_dir = os.path.join(study_dir, "runs", plan.run_name(variant, seed))
    path = os.path.join(run_dir, "config.json")
    config = workdir_lib.read_json(path)
    if config is None:
        raise SystemExit(f"error: {path} does not exist: {run_dir} is not a trained run of "
                         f"the study in {study_dir}; pass --variants and --seed of its runs")
    return settings.from_dict(config), run_dir


def draw_metrics(s, run_dir: str, ctx, key, num: int) -> dict[str, float]:
    """The evaluation's sample metrics of ``num`` samples drawn with ``key``."""
    import jax

    from ebm_vs_score.evaluate import runner
    from ebm_vs_score.evaluate import samples as samples_lib

    k_sample, k_quality = jax.random.split(key)
    drawn, _ = runner.draw_samples(s, ctx.model, ctx.params, k_sample, num)
    usable, _ = samples_lib.finite_samples(drawn, True)
    quality = runner.sample_quality(s, run_dir, usable, ctx.data, k_quality)
    return {m: float(quality[m]) for m in METRICS} | {"nonfinite": len(drawn) - len(usable)}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values),
            "n": len(values), "draws": values}


def differences(per_variant: dict[str, list[dict]], first: str) -> dict[str, dict]:
    """Per variant after ``first``: each metric's per-draw difference to ``first``."""
    return {v: {m: spread([a[m] - b[m] for a, b in zip(rows, per_variant[first], strict=True)])
                for m in METRICS}
            for v, rows in per_variant.items() if v != first}


def measure(args: argparse.Namespace) -> dict:
    import jax

    from ebm_vs_score.evaluate import runner

    variants, nums = args.variants.split(","), [int(n) for n in args.nums.split(",")]
    keys = [jax.random.fold_in(jax.random.PRNGKey(10_000 + args.seed), d)
            for d in range(args.draws)]
    rows: dict[int, dict[str, list[dict]]] = {num: {} for num in nums}
    for variant in variants:  # each run restored once, every size drawn from it
        s, run_dir = run_settings(args.study_dir, variant, args.seed)
        ctx = runner.prepare(s, run_dir)
        for num in nums:
            start = time.perf_counter()
            rows[num][variant] = [draw_metrics(s, run_dir, ctx, k, num) for k in keys]
            print(f"{variant} n={num}: FD {[round(r['fd'], 2) for r in rows[num][variant]]} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    sizes = {str(num): {"variants": {v: {m: spread([r[m] for r in rs]) for m in METRICS}
                                     for v, rs in by_variant.items()},
                        "differences": differences(by_variant, variants[0])}
             for num, by_variant in rows.items()}
    return {"study_dir": args.study_dir, "seed": args.seed, "variants": variants,
            "draws": args.draws, "sizes": sizes}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from ebm_vs_score import hostcpu, results

    hostcpu.use_fast_cpu_kernels()
    load_start = results.load_average()
    values = measure(args)
    print(json.dumps({n: {v: round(d["fd"]["sd"], 3) for v, d in size["variants"].items()}
                      for n, size in values["sizes"].items()}), file=sys.stderr)
    if args.record:
        print(results.write_record(args.record, values, load_start=load_start))


if __name__ == "__main__":
    main()
