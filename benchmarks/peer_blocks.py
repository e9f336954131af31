"""The CIFAR U-Net's blocks, ours against score_sde_pytorch's, forward and backward.

    python -m benchmarks.peer_pytorch --blocks --peer_dir=PATH [--pairs=3] [--batch=8]
        [--steps=5] [--out=FILE.json]

Between ``peer_pytorch``'s whole step and its ``--kernels`` (the 3x3 convolutions alone)
sit the U-Net's residual and attention blocks (Ho et al. 2020, App. B): GroupNorm, swish,
the two convolutions, the time-embedding projection, dropout and the 1x1 skip; GroupNorm,
the q/k/v projections, softmax attention and the output projection. Each block kind of
the CIFAR DDPM U-Net (``BLOCKS``, with how many times one forward pass calls it) is timed
in train mode at ``--batch``: one forward pass and the backward pass of a fixed output
gradient, to the parameters, the input and the time embedding (what the step asks of
it). Ours is ``layers.ResnetBlock`` / ``layers.AttnBlock`` jitted under the kernels
``main`` chooses; theirs is the peer's ``ResnetBlockDDPM`` / ``AttnBlock`` with
``backward()``. Each side runs in a fresh process; sides alternate ``--pairs`` times.
The count-weighted sum is the blocks' share of a step (the stem, the resampling
convolutions, the embedding MLP, the loss and the optimizer are outside it).
"""

from __future__ import annotations

import statistics
import sys

import numpy as np

TEMB_DIM = 512  # 4 * ch, the time embedding's width in the DDPM CIFAR U-Net
# (kind, H = W, C_in, C_out): count of calls in one forward pass of the CIFAR U-Net
BLOCKS = {("res", 32, 128, 128): 2, ("res", 32, 256, 128): 2, ("res", 32, 384, 128): 1,
          ("res", 16, 128, 256): 1, ("res", 16, 256, 256): 1, ("res", 16, 384, 256): 1,
          ("res", 16, 512, 256): 2, ("res", 8, 256, 256): 2, ("res", 8, 512, 256): 3,
          ("res", 4, 256, 256): 4, ("res", 4, 512, 256): 3,
          ("attn", 16, 256, 256): 5, ("attn", 4, 256, 256): 1}


def block_name(kind: str, size: int, c_in: int, c_out: int) -> str:
    return f"{kind} {size}x{size}x{c_in}->{c_out}"


def block_arrays(batch: int, size: int, c_in: int, c_out: int):
    """x (NHWC), the time embedding, the output gradient (NHWC): same numbers both sides."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, size, size, c_in), np.float32),
            rng.standard_normal((batch, TEMB_DIM), np.float32),
            rng.standard_normal((batch, size, size, c_out), np.float32))


def our_block(kind: str, c_out: int):
    from ebm_vs_score.models import layers

    if kind == "res":
        return layers.ResnetBlock(out_ch=c_out, dropout=0.1, num_groups=32)
    return layers.AttnBlock(num_groups=32)


def our_forward_backward(module, kind: str):
    """``f(params, x, temb, g, key)``: the block's output and the gradients of <out, g>."""
    import jax

    def apply(params, x, temb, key):
        if kind == "res":
            return module.apply(params, x, temb, True, rngs={"dropout": key})
        return module.apply(params, x)

    def forward_backward(params, x, temb, g, key):
        out, pullback = jax.vjp(lambda p, a, e: apply(p, a, e, key), params, x, temb)
        return out, pullback(g)

    return forward_backward


def our_inputs(kind: str, size: int, c_in: int, c_out: int, batch: int):
    """(params, x, temb, g, key) for ``our_forward_backward`` of one block."""
    import jax
    import jax.numpy as jnp

    x, temb, g = map(jnp.asarray, block_arrays(batch, size, c_in, c_out))
    module, key = our_block(kind, c_out), jax.random.key(1)
    init_args = (x, temb, True) if kind == "res" else (x,)
    params = module.init({"params": jax.random.key(0), "dropout": key}, *init_args)
    return module, (params, x, temb, g, key)


def ours_blocks(batch: int, calls: int) -> dict:
    """Each block's median ms (forward + backward) and model GFLOP, as ``main`` runs it."""
    import jax

    from benchmarks import flops
    from benchmarks.peer_pytorch import _median_ms
    from ebm_vs_score import hostcpu

    hostcpu.use_fast_cpu_kernels()  # as main does
    ms, gflop = {}, {}
    for kind, size, c_in, c_out in BLOCKS:
        module, args = our_inputs(kind, size, c_in, c_out, batch)
        fn = our_forward_backward(module, kind)
        compiled = jax.jit(fn).lower(*args).compile()
        name = block_name(kind, size, c_in, c_out)
        ms[name] = _median_ms(lambda c=compiled, a=args: jax.block_until_ready(c(*a)), calls)
        gflop[name] = flops.model_flops(fn, *args) / 1e9
    return {"blocks_ms": ms, "gflop": gflop, "devices": jax.device_count(),
            "jax_version": jax.__version__}


def their_block(peer_dir: str, kind: str, c_in: int, c_out: int):
    """The peer's module in train mode (its DDPM model builds them with these arguments)."""
    import torch

    if peer_dir not in sys.path:
        sys.path.insert(0, peer_dir)
    from models import layers as peer_layers

    if kind == "res":
        block = peer_layers.ResnetBlockDDPM(torch.nn.SiLU(), c_in, c_out, temb_dim=TEMB_DIM,
                                            dropout=0.1)
    else:
        block = peer_layers.AttnBlock(c_in)
    return block.train()


def their_inputs(torch, kind: str, size: int, c_in: int, c_out: int, batch: int):
    """``block_arrays`` as NCHW tensors; x and temb require their gradients."""
    x, temb, g = block_arrays(batch, size, c_in, c_out)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    g = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(temb).requires_grad_(), g


def their_forward_backward(block, kind: str, x, temb, g):
    """One forward pass and ``backward(g)``, gradients reset as the peer's optimizer does."""
    def call():
        block.zero_grad(set_to_none=True)
        x.grad = temb.grad = None
        out = block(x, temb) if kind == "res" else block(x)
        out.backward(g)

    return call


def theirs_blocks(peer_dir: str, batch: int, calls: int, threads: int) -> dict:
    import torch

    from benchmarks.peer_pytorch import _median_ms

    if threads:
        torch.set_num_threads(threads)
    ms = {}
    for kind, size, c_in, c_out in BLOCKS:
        block = their_block(peer_dir, kind, c_in, c_out)
        x, temb, g = their_inputs(torch, kind, size, c_in, c_out, batch)
        call = their_forward_backward(block, kind, x, temb, g)
        ms[block_name(kind, size, c_in, c_out)] = _median_ms(call, calls)
    return {"blocks_ms": ms, "threads": torch.get_num_threads(),
            "torch_version": torch.__version__}


def summarize(pairs: list[dict], batch: int) -> dict:
    """Per block: median over pairs of each side's median; the count-weighted sums."""
    blocks = []
    for (kind, size, c_in, c_out), count in BLOCKS.items():
        name = block_name(kind, size, c_in, c_out)
        ms = {side: statistics.median(p[side]["blocks_ms"][name] for p in pairs)
              for side in ("ours", "theirs")}
        blocks.append({"block": name, "count": count, "gflop": pairs[0]["ours"]["gflop"][name],
                       "ours_ms": ms["ours"], "theirs_ms": ms["theirs"],
                       "ratio": ms["ours"] / ms["theirs"]})
    total = {side: sum(b["count"] * b[f"{side}_ms"] for b in blocks)
             for side in ("ours", "theirs")}
    return {"blocks": blocks, "pairs": pairs, "ours_total_ms": total["ours"],
            "theirs_total_ms": total["theirs"], "ratio_total": total["ours"] / total["theirs"],
            "batch": batch}


def print_summary(result: dict) -> None:
    for b in result["blocks"]:
        print(f"{b['block']:>22} x{b['count']}: ours {b['ours_ms']:7.2f} ms, theirs "
              f"{b['theirs_ms']:7.2f} ms, ours/theirs {b['ratio']:.2f}", flush=True)
    print(f"blocks of one step (count-weighted): ours {result['ours_total_ms']:.0f} ms, "
          f"theirs {result['theirs_total_ms']:.0f} ms, ours/theirs = "
          f"{result['ratio_total']:.2f} (batch {result['batch']})")
