"""``benchmarks.peer_pytorch --blocks``: the U-Net's blocks, ours against the peer's."""

import collections
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _render import render_table

from benchmarks import peer_blocks, peer_pytorch, rows
from benchmarks.suites import RowSpec
from ebm_vs_score.models import layers

PEER_DIR = os.environ.get("SCORE_SDE_PYTORCH", "/work/peer/score_sde_pytorch")


def test_the_block_list_is_the_cifar_unets_census():
    """BLOCKS holds each block the cifar_score U-Net calls, with its count (fails when the
    U-Net changes and the list does not)."""
    _, model, params, x, _ = rows.model_and_params(RowSpec("t", "train", "cifar", "U", 1))
    census = collections.Counter()

    def spy(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, layers.ResnetBlock):
            channels = args[0].shape[-1]
            census["res", args[0].shape[1], channels, module.out_ch or channels] += 1
            assert module.dropout == 0.1 and module.num_groups == 32
        if context.method_name == "__call__" and isinstance(module, layers.AttnBlock):
            census["attn", args[0].shape[1], args[0].shape[-1], args[0].shape[-1]] += 1
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        jax.eval_shape(lambda p: model.net.apply({"params": p}, x, jnp.zeros((1,))), params)
    assert dict(census) == peer_blocks.BLOCKS


def test_our_side_times_each_block_and_counts_its_flops():
    out = peer_blocks.ours_blocks(batch=1, calls=1)
    assert set(out["blocks_ms"]) == {peer_blocks.block_name(*k) for k in peer_blocks.BLOCKS}
    assert min(out["blocks_ms"].values()) > 0
    # a 3x3 conv's forward is 2 * 9 * C_in * C_out per pixel; backward twice that
    res = out["gflop"]["res 4x4x256->256"] * 1e9
    assert res > 3 * 2 * 2 * 9 * 256 * 256 * 16


def _side(ms: float) -> dict:
    names = [peer_blocks.block_name(*k) for k in peer_blocks.BLOCKS]
    return {"blocks_ms": {n: ms for n in names}, "gflop": {n: 0.5 for n in names},
            "torch_version": "2.13.0+cpu"}


def test_the_summary_takes_medians_over_pairs_and_weights_by_count(tmp_path):
    pairs = [{"ours": _side(a), "theirs": _side(b)} for a, b in ((2.0, 2.0), (9.0, 2.0),
                                                                  (4.0, 1.0))]
    out = peer_blocks.summarize(pairs, batch=1)
    calls = sum(peer_blocks.BLOCKS.values())
    assert {(b["ours_ms"], b["theirs_ms"], b["ratio"]) for b in out["blocks"]} == {(4.0, 2.0, 2.0)}
    assert out["ours_total_ms"] == 4.0 * calls and out["ratio_total"] == 2.0

    out["machine"] = {"jax_version": "0.10.2", "cpu_model": "Some CPU",
                      "load_average_start": [1.5]}
    text = render_table(tmp_path, "bench_peer_blocks", out)
    assert "| attn 16x16x256->256 | 5 | 0.50 | 4.00 | 2.00 | 2.00 |" in text
    assert (f"Count-weighted: ours {4 * calls} ms, theirs {2 * calls} ms, ours/theirs 2.000 "
            "(batch 1; forward + backward; medians over 3 interleaved pairs; 1-minute load "
            "1.5; torch 2.13.0+cpu; jax 0.10.2; Some CPU).") in text


def test_blocks_and_kernels_are_one_mode_at_a_time(capsys):
    with pytest.raises(SystemExit):
        peer_pytorch.parse_args(["--blocks", "--kernels"])
    assert "not allowed with" in capsys.readouterr().err


def _copy_into_peer(torch, block, params, kind):
    """Our block's parameters into the peer's module (OIHW convolutions, (out, in) Linear,
    the peer's NIN keeps (in, out))."""
    p = {k: np.asarray(v) for k, v in _flat(params["params"]).items()}
    t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
    names = ({"GroupNorm_0": "GroupNorm_0", "GroupNorm_1": "GroupNorm_1", "Conv_0": "Conv_0",
              "Conv_1": "Conv_1", "Dense_0": "Dense_0", "skip": "NIN_0"} if kind == "res" else
             {"GroupNorm_0": "GroupNorm_0", "q": "NIN_0", "k": "NIN_1", "v": "NIN_2",
              "proj_out": "NIN_3"})
    with torch.no_grad():
        for ours, theirs in names.items():
            if f"{ours}/bias" not in p:
                continue
            module = getattr(block, theirs)
            kernel = p.get(f"{ours}/kernel", p.get(f"{ours}/scale"))
            if theirs.startswith("NIN"):
                module.W.copy_(t(kernel))
                module.b.copy_(t(p[f"{ours}/bias"]))
                continue
            if kernel.ndim == 4:
                kernel = kernel.transpose(3, 2, 0, 1)
            elif kernel.ndim == 2:
                kernel = kernel.T
            module.weight.copy_(t(kernel))
            module.bias.copy_(t(p[f"{ours}/bias"]))


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("key", [("res", 4, 512, 256), ("res", 8, 256, 256),
                                 ("attn", 4, 256, 256)])
def test_the_peers_blocks_compute_ours(key):
    """Same parameters, dropout off: the peer's block gives our block's output (so both
    sides time the same arithmetic), where torch and the peer's checkout are here."""
    torch = pytest.importorskip("torch")
    if not os.path.isfile(os.path.join(PEER_DIR, "models", "layers.py")):
        pytest.skip("no score_sde_pytorch checkout ($SCORE_SDE_PYTORCH)")
    kind, size, c_in, c_out = key
    module, (params, x, temb, _, key_) = peer_blocks.our_inputs(kind, size, c_in, c_out, 2)
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(key_, a.shape), params)
    ours = (module.apply(params, x, temb, False) if kind == "res" else module.apply(params, x))
    block = peer_blocks.their_block(PEER_DIR, kind, c_in, c_out).eval()
    _copy_into_peer(torch, block, params, kind)
    tx, ttemb, _ = peer_blocks.their_inputs(torch, kind, size, c_in, c_out, 2)
    with torch.no_grad():
        theirs = (block(tx, ttemb) if kind == "res" else block(tx)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours), rtol=0,
                               atol=1e-4 * np.abs(np.asarray(ours)).max())
