"""Our CIFAR U train step against score_sde_pytorch's, on this CPU, in interleaved pairs.

    python -m benchmarks.peer_pytorch --peer_dir=/path/to/score_sde_pytorch [--pairs=3]
        [--batch=8] [--steps=5] [--threads=0] [--out=FILE.json]
    python -m benchmarks.peer_pytorch --kernels [--pairs=3] [--batch=8] [--steps=5] [--out=...]
    python -m benchmarks.peer_pytorch --blocks --peer_dir=... [--pairs=3] [--batch=8] [...]

The peer is Song et al.'s own PyTorch code (github.com/yang-song/score_sde_pytorch), the
tool users would pick instead: its DDPM CIFAR-10 model and loss (``configs/vp/ddpm/
cifar10.py``: 35.7M parameters, ``get_ddpm_loss_fn``, Adam, EMA) against our
``configs/cifar_score.py`` step (the same DDPM U-Net, DSM, Adam, EMA) at the same batch.
Each side runs in its own fresh process (no thread pools shared between frameworks),
builds and warms up, then times ``--steps`` steps; sides alternate ``--pairs`` times so
that a change in machine load hits both. Threads: ``--threads=0`` lets each framework use
every core as it does by default (ours: as ``main`` does, one device whose Eigen
convolutions use every core, ``hostcpu.py``; one device per core with
``EBM_CPU_DEVICES=all`` or ``--threads=N``; torch: ``torch.get_num_threads()``). Without
torch or without ``--peer_dir`` the command prints why it is skipped and exits 0, so it
never breaks a run of the harness.

``--kernels`` compares the step's building blocks instead of the step: the 3x3 convolutions
of the U-Net's layer shapes (``CONV_SHAPES``) at ``--batch``, forward, input
gradient and weight gradient, ours (``lax.conv_general_dilated`` under the kernels ``main``
chooses) against torch's (``conv2d`` and ``aten.convolution_backward`` on contiguous NCHW
tensors, as the peer's model runs them), each side a fresh process, interleaved
``--pairs`` times, each kernel the median of ``--steps`` calls after a warm-up. It needs
torch, not the peer's checkout (``--threads`` then sets torch's threads only; ours runs
as ``main`` would). Where the kernels are level and the steps are not, the gap is in the
rest of the step. ``--blocks`` compares the U-Net's residual and attention blocks, forward
and backward (``benchmarks/peer_blocks.py``): between the two, it says which part of the
step carries a gap.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks import peer_blocks


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_pytorch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer_dir", default=os.environ.get("SCORE_SDE_PYTORCH"),
                   help="a checkout of score_sde_pytorch (or $SCORE_SDE_PYTORCH)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per side per pair")
    p.add_argument("--threads", type=int, default=0, help="0: each framework's default")
    p.add_argument("--out", help="write the JSON result here")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--kernels", action="store_true",
                      help="compare the U-Net's 3x3 convolutions, not the train step")
    mode.add_argument("--blocks", action="store_true",
                      help="compare the U-Net's residual and attention blocks (needs --peer_dir)")
    p.add_argument("--side", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _time_steps(step, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step()`` (which blocks), after one warm-up."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def ours(batch: int, steps: int, threads: int) -> dict:
    """Our real train step (``train.compile_train_step``) on the cifar_score config."""
    import jax

    from ebm_vs_score import hostcpu

    hostcpu.use_fast_cpu_kernels()  # as main does
    if hostcpu.devices_asked_for() or threads:
        hostcpu.use_cpu_cores(batch, threads or None)
    from benchmarks import rows
    from benchmarks.suites import RowSpec

    spec = RowSpec(name="peer/ours", kind="train", scale="cifar", family="U", batch=batch)
    step, _ = rows.train_step_runner(spec)
    return {"times_s": _time_steps(step, steps), "devices": jax.device_count(),
            "jax_version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),  # the kernels use_fast_cpu_kernels chose
            hostcpu.KEEP_DEFAULTS_ENV: os.environ.get(hostcpu.KEEP_DEFAULTS_ENV, "")}


# (H = W, C_in, C_out, stride) of the CIFAR U-Net's 3x3 convolutions, one per kind
CONV_SHAPES = ((32, 128, 128, 1), (16, 256, 256, 1), (8, 256, 256, 1), (4, 256, 256, 1),
               (32, 128, 128, 2))
KERNEL_OPS = ("forward", "input_grad", "weight_grad")


def kernel_shapes(batch: int):
    """(name, size, c_in, c_out, stride, GFLOP) of each convolution at ``batch``; the
    GFLOP count is 2 per multiply-add of the forward (each gradient has as many)."""
    for size, c_in, c_out, stride in CONV_SHAPES:
        out = size // stride
        yield (f"{size}x{size}x{c_in}->{c_out}/s{stride}", size, c_in, c_out, stride,
               2 * batch * out * out * c_out * c_in * 9 / 1e9)


def kernel_arrays(batch: int, size: int, c_in: int, c_out: int, stride: int):
    """x (NHWC), w (HWIO), output gradient g (NHWC): the same numbers on both sides."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, size, size, c_in), np.float32),
            (0.01 * rng.standard_normal((3, 3, c_in, c_out))).astype(np.float32),
            rng.standard_normal((batch, size // stride, size // stride, c_out), np.float32))


def _median_ms(call, calls: int) -> float:
    """Median milliseconds of ``calls`` calls of ``call()`` (which blocks), after a warm-up."""
    return 1e3 * statistics.median(_time_steps(call, calls))


def ours_kernels(batch: int, calls: int) -> dict:
    """Our convolutions (``experiments._conv_fns``) under the kernels ``main`` chooses."""
    import jax
    import jax.numpy as jnp

    from ebm_vs_score import hostcpu

    hostcpu.use_fast_cpu_kernels()  # as main does
    from benchmarks.experiments import _conv_fns

    out = {}
    for name, size, c_in, c_out, stride, _ in kernel_shapes(batch):
        args = [jnp.asarray(a) for a in kernel_arrays(batch, size, c_in, c_out, stride)]
        for op, fn in _conv_fns(stride).items():
            compiled = jax.jit(fn).lower(*args).compile()
            out[f"{name} {op}"] = _median_ms(
                lambda c=compiled, a=args: jax.block_until_ready(c(*a)), calls)
    return {"kernels_ms": out, "devices": jax.device_count(), "jax_version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def torch_conv_calls(torch, x, w, g, stride: int) -> dict:
    """Forward, input gradient and weight gradient of one convolution on NCHW tensors, one
    call each (the gradients one at a time through ``aten.convolution_backward``, as
    autograd asks). Padding as our "SAME": 1 on each side at stride 1; at stride 2 the
    input arrives padded by one at the end (the peer's ``Downsample`` pads it so)."""
    pad = 1 if stride == 1 else 0

    def grad(mask):
        return torch.ops.aten.convolution_backward(
            g, x, w, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, mask)

    return {"forward": lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad),
            "input_grad": lambda: grad([True, False, False]),
            "weight_grad": lambda: grad([False, True, False])}


def torch_inputs(torch, batch: int, size: int, c_in: int, c_out: int, stride: int):
    """``kernel_arrays`` as contiguous NCHW / OIHW tensors; at stride 2 the input padded by
    one at the end, as ``torch_conv_calls`` expects."""
    x, w, g = kernel_arrays(batch, size, c_in, c_out, stride)
    x, g = (torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (x, g))
    if stride == 2:
        x = torch.nn.functional.pad(x, (0, 1, 0, 1))
    return x, torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(), g


def theirs_kernels(batch: int, calls: int, threads: int) -> dict:
    """torch's convolutions on contiguous NCHW tensors, as the peer's model runs them."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = {}
    with torch.no_grad():
        for name, size, c_in, c_out, stride, _ in kernel_shapes(batch):
            x, w, g = torch_inputs(torch, batch, size, c_in, c_out, stride)
            for op, call in torch_conv_calls(torch, x, w, g, stride).items():
                out[f"{name} {op}"] = _median_ms(call, calls)
    return {"kernels_ms": out, "threads": torch.get_num_threads(),
            "torch_version": torch.__version__}


def theirs(peer_dir: str, batch: int, steps: int, threads: int) -> dict:
    """score_sde_pytorch's DDPM CIFAR-10 step (their ``losses.get_step_fn``)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, peer_dir)
    import losses
    import sde_lib
    from configs.vp.ddpm import cifar10
    from models import ddpm  # noqa: F401  (registers the 'ddpm' model)
    from models import utils as mutils
    from models.ema import ExponentialMovingAverage

    config = cifar10.get_config()
    config.device = torch.device("cpu")
    model = mutils.create_model(config)
    sde = sde_lib.VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales)
    state = {"model": model, "step": 0,
             "optimizer": losses.get_optimizer(config, model.parameters()),
             "ema": ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)}
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=True, continuous=False)
    x = torch.randn(batch, 3, 32, 32)
    params = sum(p.numel() for p in model.parameters())
    times = _time_steps(lambda: step_fn(state, x).item(), steps)
    return {"times_s": times, "threads": torch.get_num_threads(), "num_params": params,
            "torch_version": torch.__version__}


def _run_side(side: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.peer_pytorch", f"--side={side}",
           f"--batch={args.batch}", f"--steps={args.steps}", f"--threads={args.threads}"]
    if args.peer_dir:
        cmd.append(f"--peer_dir={args.peer_dir}")
    cmd += [f"--{mode}" for mode in ("kernels", "blocks") if getattr(args, mode)]
    start_cpu = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    end_cpu = os.times()
    if out.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["child_cpu_s"] = (end_cpu.children_user - start_cpu.children_user
                             + end_cpu.children_system - start_cpu.children_system)
    return result


def skip_reason(args: argparse.Namespace) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch)"
    if args.kernels:
        return None
    if not args.peer_dir:
        return "no --peer_dir (a checkout of github.com/yang-song/score_sde_pytorch)"
    if not os.path.isfile(os.path.join(args.peer_dir, "losses.py")):
        return f"--peer_dir={args.peer_dir} is not a score_sde_pytorch checkout (no losses.py)"
    return None


def compare(args: argparse.Namespace) -> dict:
    """Interleaved pairs; the ratio is median(ours) / median(theirs) per pair."""
    pairs = []
    for i in range(args.pairs):
        a, b = _run_side("ours", args), _run_side("theirs", args)
        ms_a, ms_b = (1e3 * statistics.median(r["times_s"]) for r in (a, b))
        pairs.append({"ours": a, "theirs": b, "ours_ms": ms_a, "theirs_ms": ms_b})
        print(f"pair {i}: ours {ms_a:.0f} ms/step ({a['devices']} XLA:CPU devices), "
              f"theirs {ms_b:.0f} ms/step ({b['threads']} torch threads), "
              f"ours/theirs {ms_a / ms_b:.2f}", flush=True)
    ratio = statistics.median(p["ours_ms"] / p["theirs_ms"] for p in pairs)
    print(f"median of pairs: ours/theirs = {ratio:.2f} (batch {args.batch})")
    return {"pairs": pairs, "ratio_median": ratio, "batch": args.batch}


def _interleaved_pairs(args: argparse.Namespace) -> list[dict]:
    """``--pairs`` times our side, then theirs, each a fresh process."""
    return [{"ours": _run_side("ours", args), "theirs": _run_side("theirs", args)}
            for _ in range(args.pairs)]


def compare_kernels(args: argparse.Namespace) -> dict:
    """Interleaved sides; each kernel's ms is the median over pairs of each side's median."""
    pairs = _interleaved_pairs(args)
    kernels = []
    for name, *_, gflop in kernel_shapes(args.batch):
        for op in KERNEL_OPS:
            ms = {side: statistics.median(p[side]["kernels_ms"][f"{name} {op}"] for p in pairs)
                  for side in ("ours", "theirs")}
            kernels.append({"kernel": name, "op": op, "gflop": gflop, "ours_ms": ms["ours"],
                            "theirs_ms": ms["theirs"], "ratio": ms["ours"] / ms["theirs"]})
    total = {side: sum(k[f"{side}_ms"] for k in kernels) for side in ("ours", "theirs")}
    for k in kernels:
        print(f"{k['kernel']:>20} {k['op']:<11} ours {k['ours_ms']:7.2f} ms, theirs "
              f"{k['theirs_ms']:7.2f} ms, ours/theirs {k['ratio']:.2f}", flush=True)
    ratio = total["ours"] / total["theirs"]
    print(f"all kernels: ours {total['ours']:.1f} ms, theirs {total['theirs']:.1f} ms, "
          f"ours/theirs = {ratio:.2f} (batch {args.batch})")
    return {"kernels": kernels, "pairs": pairs, "ours_total_ms": total["ours"],
            "theirs_total_ms": total["theirs"], "ratio_total": ratio, "batch": args.batch}


def compare_blocks(args: argparse.Namespace) -> dict:
    """Interleaved sides of ``peer_blocks``; per block the median over pairs."""
    pairs = _interleaved_pairs(args)
    result = peer_blocks.summarize(pairs, args.batch)
    peer_blocks.print_summary(result)
    return result


def _side(args: argparse.Namespace) -> dict:
    """This process's side: the train step, or the convolutions (--kernels), or the
    blocks (--blocks)."""
    if args.blocks:
        return (peer_blocks.ours_blocks(args.batch, args.steps) if args.side == "ours"
                else peer_blocks.theirs_blocks(args.peer_dir, args.batch, args.steps,
                                               args.threads))
    if args.kernels:
        return (ours_kernels(args.batch, args.steps) if args.side == "ours"
                else theirs_kernels(args.batch, args.steps, args.threads))
    if args.side == "ours":
        return ours(args.batch, args.steps, args.threads)
    return theirs(args.peer_dir, args.batch, args.steps, args.threads)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.side:
        print(json.dumps(_side(args)))
        return 0
    reason = skip_reason(args)
    if reason:
        print(f"peer comparison skipped: {reason}")
        return 0
    compare_mode = compare_blocks if args.blocks else compare_kernels if args.kernels else compare
    result = compare_mode(args)
    if args.out:
        from benchmarks import timing

        result["machine"] = timing.machine_info(argv, module="benchmarks.peer_pytorch")
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
