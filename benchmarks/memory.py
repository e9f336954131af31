"""Memory headroom: XLA memory of the real train step with and without remat / accumulation.

    python -m benchmarks.memory --scale=cifar --batch=128 --families=U,C,QC \
        --remat=0,1 --accum=1,4 [--time-steps=2] [--out=FILE.json]

For each family x ``model.remat`` x ``training.grad_accum_steps`` it compiles
``train.compile_train_step`` (the step users run, on synthetic N(0, I) inputs) and prints
XLA's static memory analysis of the executable: temporaries (activations kept for the
backward pass, where remat and accumulation act), arguments, outputs and the total
(arguments + outputs + temporaries - donated bytes). The analysis is a property of the
compiled program, so it does not depend on the machine's load; ``--time-steps=N`` also
times N steps (wall, comparable only on a quiet machine). Run it with one device per
process (``JAX_NUM_CPU_DEVICES=1`` on a CPU, one GPU) so the numbers are the whole batch's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import jax

from benchmarks import rows, timing
from ebm_vs_score import builders, hostcpu, settings, train

MIB = 2.0**20


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="digits", choices=("toy", "digits", "cifar"))
    p.add_argument("--batch", type=int, help="training.batch_size (config default if unset)")
    p.add_argument("--families", default="U,C,QC", help="comma-separated: U, C, C-ResNet, QC")
    p.add_argument("--remat", default="0,1", help="model.remat values to try (0/1)")
    p.add_argument("--accum", default="1", help="training.grad_accum_steps values to try")
    p.add_argument("--time-steps", type=int, default=0, help="also time this many steps")
    p.add_argument("--out", help="write the rows as JSON here")
    return p.parse_args(argv)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}={text!r} must be comma-separated integers, "
                         f"e.g. {flag}=0,1") from None


def measure(scale: str, family: str, batch: int | None, remat: bool, accum: int,
            time_steps: int) -> dict:
    """One row: memory (and optionally time) of the compiled train step."""
    config = rows.make_config(scale, family, batch)
    config.model.remat = bool(remat)
    config.training.grad_accum_steps = int(accum)
    s = settings.from_config(config, num_devices=jax.device_count())
    model = builders.build_model(s)
    mesh = train.make_mesh()
    state, step = train.fresh_state_and_step(s, model, mesh)
    size = int(s.training.batch_size)
    batch_x = rows._normal((size,) + model.example_shape)
    batch_data = train.global_batch({"x": batch_x}, mesh)
    compiled, compile_s = timing.compile_timed(step, state, batch_data)
    row = {"family": family, "scale": scale, "batch": size, "remat": bool(remat),
           "grad_accum_steps": int(accum), "devices": jax.device_count(),
           "compile_s": compile_s["compile_s"], **timing.memory_info(compiled)}
    if time_steps:
        state, _ = compiled(state, batch_data)  # warm
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(time_steps):
            state, _ = compiled(state, batch_data)
        jax.block_until_ready(state)
        row["ms_per_step"] = 1e3 * (time.perf_counter() - start) / time_steps
    return row


def render(results: list[dict]) -> str:
    head = ("family", "batch", "remat", "accum", "temp MiB", "args MiB", "total MiB",
            "ms/step")
    lines = ["  ".join(f"{h:>9}" for h in head)]
    for r in results:
        ms = f"{r['ms_per_step']:.0f}" if "ms_per_step" in r else "-"
        cells = (r["family"], r["batch"], int(r["remat"]), r["grad_accum_steps"],
                 f"{r['temp_bytes'] / MIB:.1f}", f"{r['argument_bytes'] / MIB:.1f}",
                 f"{r['xla_total_bytes'] / MIB:.1f}", ms)
        lines.append("  ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    hostcpu.use_fast_cpu_kernels()
    if hostcpu.devices_asked_for():
        hostcpu.use_cpu_cores()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in rows.FAMILIES]
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; choose from {list(rows.FAMILIES)}")
    results = []
    grid = itertools.product(families, _ints(args.remat, "--remat"),
                             _ints(args.accum, "--accum"))
    for family, remat, accum in grid:
        print(f"[memory] {family} remat={remat} accum={accum} ...", file=sys.stderr, flush=True)
        results.append(measure(args.scale, family, args.batch, bool(remat), accum,
                               args.time_steps))
    print(render(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
