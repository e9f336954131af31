"""Where a time-invariant model's descent chain goes as it runs on: classes, energy, FD.

    python -m benchmarks.descent_drift --study_dir=DIR [--variants=eqm,eqm_energy_dot]
        [--seed=0] [--steps=100,200,400,800] [--num=297] [--record=NAME]

For the run (variant, seed) of each variant of the study in DIR (restored as ``--mode=eval``
restores it, from the run's own config.json), one chain per example of the run's own
sampler (``sampling.*``: EqM's Nesterov descent on the digits), read after each of
``--steps`` as the evaluation's NFE sweep reads it (``builders.make_snapshot_sample_fn``),
every variant from the same starting noise. After each step count: the evaluation's sample
metrics (``runner.sample_quality`` on the samples clipped to [-1, 1]: FD, IS, precision,
recall), how many samples the study's offline classifier puts in each class, the mean
||f|| of the last step and, for an energy, the samples' mean energy. For an energy also the
test digits' mean energy per class: the order in which its basins lie.

An energy descended past its sampler's step count keeps going downhill; this says where
to (Wang & Du 2025 sample EqM-E by descent; the FD of the sweep's longest chains is the
study's claim ``eqm_explicit_worse_long``; docs/notes/eqm_energy_matching.md).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.fd_noise import METRICS, run_settings, study_run_parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = study_run_parser("python -m benchmarks.descent_drift", __doc__, "eqm,eqm_energy_dot",
                         "comma-separated time-invariant variants of the study")
    p.add_argument("--steps", default="100,200,400,800", help="comma-separated step counts")
    p.add_argument("--num", type=int, default=297, help="chains (samples) per variant")
    args = p.parse_args(argv)
    steps = [int(n) for n in args.steps.split(",") if n.strip()]
    if not steps or min(steps) < 1:
        p.error(f"--steps={args.steps} must be positive step counts, e.g. 100,200,400")
    args.steps = sorted(set(steps))
    return args


def class_counts(clf, images: np.ndarray) -> list[int]:
    """How many of ``images`` the classifier puts in each class."""
    _, logits = clf.apply(images)
    return np.bincount(logits.argmax(1), minlength=clf.num_classes).tolist()


def has_energy(ctx) -> bool:
    return ctx.model.fns.energy is not None and ctx.model.fns.conservative


def mean_energy(ctx, images: np.ndarray) -> float | None:
    """The model's mean energy E(x) over ``images`` (None for a field without one)."""
    import jax.numpy as jnp

    if not has_energy(ctx):
        return None
    t = jnp.zeros((len(images),))
    return float(np.mean(ctx.model.fns.energy(ctx.params, jnp.asarray(images), t)))


def energy_by_class(s, ctx) -> list[float] | None:
    """The test digits' mean energy per class (None without an energy)."""
    from ebm_vs_score.evaluate import runner

    if not has_energy(ctx):
        return None
    images, labels = runner._labelled_split(s.data, "test")
    return [mean_energy(ctx, images[labels == c]) for c in range(int(labels.max()) + 1)]


def chain_rows(s, run_dir: str, ctx, key, steps: list[int], num: int) -> list[dict]:
    """One row per step count: sample metrics, class counts, ||f|| and mean energy."""
    import jax

    from ebm_vs_score import builders
    from ebm_vs_score.evaluate import runner
    from ebm_vs_score.evaluate import samples as samples_lib

    k_sample, k_quality = jax.random.split(key)
    chunk = min(num, int(s.eval.batch_size))
    fn = builders.make_snapshot_sample_fn(s, ctx.model, steps, chunk)
    clf = runner.offline_classifier(s, run_dir)
    rows = []
    for n, (drawn, info) in zip(steps, samples_lib.draw_snapshots(fn, ctx.params, k_sample,
                                                                    num, chunk), strict=True):
        usable, nonfinite = samples_lib.finite_samples(drawn, True)
        quality = runner.sample_quality(s, run_dir, usable, ctx.data, k_quality)
        rows.append({"steps": n, **{m: float(quality[m]) for m in METRICS},
                     "class_counts": class_counts(clf, usable), "nonfinite": nonfinite,
                     "grad_norm": float(info["sample_final_grad_norm"]),
                     "energy": mean_energy(ctx, drawn)})
    return rows


def measure(args: argparse.Namespace) -> dict:
    import jax

    from ebm_vs_score.evaluate import runner

    key = jax.random.PRNGKey(20_000 + args.seed)
    out = {}
    for variant in args.variants.split(","):
        s, run_dir = run_settings(args.study_dir, variant, args.seed)
        ctx = runner.prepare(s, run_dir)
        rows = chain_rows(s, run_dir, ctx, key, args.steps, args.num)
        out[variant] = {"sampler": dict(s.sampling.options, method=s.sampling.method),
                        "rows": rows, "test_energy_by_class": energy_by_class(s, ctx)}
        for r in rows:
            print(f"{variant} {r['steps']} steps: FD {r['fd']:.2f}, classes "
                  f"{r['class_counts']}, |f| {r['grad_norm']:.2f}", file=sys.stderr, flush=True)
    return {"study_dir": args.study_dir, "seed": args.seed, "num": args.num,
            "steps": args.steps, "variants": out}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from ebm_vs_score import hostcpu, results

    hostcpu.use_fast_cpu_kernels()
    load_start = results.load_average()
    values = measure(args)
    if args.record:
        print(results.write_record(args.record, values, load_start=load_start))


if __name__ == "__main__":
    main()
