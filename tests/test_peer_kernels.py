"""``benchmarks.peer_pytorch --kernels``: our convolutions against torch's, one call each."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _render import render_table

from benchmarks import flops, peer_pytorch
from benchmarks.experiments import _conv_fns, _conv_labels


def test_each_timed_call_is_one_convolution_of_the_counted_flops():
    """kernel_shapes' GFLOP is benchmarks.flops' count of the forward; a gradient's vjp
    traces the forward too (twice the count), and XLA keeps one convolution of each call."""
    for name, size, c_in, c_out, stride, gflop in peer_pytorch.kernel_shapes(2):
        args = [jnp.asarray(a) for a in peer_pytorch.kernel_arrays(2, size, c_in, c_out, stride)]
        for op, fn in _conv_fns(stride).items():
            traced = 1 if op == "forward" else 2
            assert flops.model_flops(fn, *args) == traced * round(gflop * 1e9), (name, op)
            compiled = jax.jit(fn).lower(*args).compile()
            assert _conv_labels(compiled)["convolutions"] == 1, (name, op)


def _side(ms_by_call: dict) -> dict:
    return {"kernels_ms": ms_by_call, "torch_version": "2.13.0+cpu"}


def test_the_comparison_takes_each_calls_median_over_pairs_and_sums_them(monkeypatch, tmp_path):
    names = [f"{k[0]} {op}" for k in peer_pytorch.kernel_shapes(1)
             for op in peer_pytorch.KERNEL_OPS]
    ours = iter([_side({n: m for n in names}) for m in (2.0, 9.0, 4.0)])
    theirs = iter([_side({n: m for n in names}) for m in (2.0, 2.0, 1.0)])
    monkeypatch.setattr(peer_pytorch, "_run_side",
                        lambda side, args: next(ours if side == "ours" else theirs))
    args = peer_pytorch.parse_args(["--kernels", "--pairs=3", "--batch=1"])
    out = peer_pytorch.compare_kernels(args)
    assert len(out["kernels"]) == 15 and len(out["pairs"]) == 3
    assert {(k["ours_ms"], k["theirs_ms"], k["ratio"]) for k in out["kernels"]} == {(4.0, 2.0, 2.0)}
    assert out["ours_total_ms"] == 60.0 and out["ratio_total"] == 2.0

    out["machine"] = {"jax_version": "0.10.2", "cpu_model": "Some CPU",
                      "load_average_start": [1.5]}
    text = render_table(tmp_path, "bench_peer_kernels", out)
    assert "| 32x32x128->128/s1 | weight grad | 0.30 | 4.00 | 2.00 | 2.00 |" in text
    assert ("All 15 calls: ours 60.0 ms, theirs 30.0 ms, ours/theirs 2.000 (batch 1; medians "
            "over 3 interleaved pairs; 1-minute load 1.5; torch 2.13.0+cpu; jax 0.10.2; "
            "Some CPU).") in text


def test_our_side_times_every_call_of_every_shape():
    out = peer_pytorch.ours_kernels(batch=1, calls=1)
    assert len(out["kernels_ms"]) == 15 and min(out["kernels_ms"].values()) > 0


def test_the_kernel_comparison_needs_torch_not_the_peers_checkout():
    reason = peer_pytorch.skip_reason(peer_pytorch.parse_args(["--kernels"]))
    has_torch = importlib.util.find_spec("torch") is not None
    assert reason == (None if has_torch else "torch is not installed (pip install torch)")
    if has_torch:  # the step comparison still needs the checkout
        assert "no --peer_dir" in peer_pytorch.skip_reason(peer_pytorch.parse_args([]))


def test_torchs_calls_compute_our_convolutions():
    """The torch side times the same arithmetic: values match ours (where torch is here)."""
    torch = pytest.importorskip("torch")
    for name, size, c_in, c_out, stride, _ in peer_pytorch.kernel_shapes(1):
        x, w, g = peer_pytorch.kernel_arrays(1, size, c_in, c_out, stride)
        tx, tw, tg = peer_pytorch.torch_inputs(torch, 1, size, c_in, c_out, stride)
        calls = peer_pytorch.torch_conv_calls(torch, tx, tw, tg, stride)
        theirs = {"forward": calls["forward"]().permute(0, 2, 3, 1),
                  "input_grad": calls["input_grad"]()[0].permute(0, 2, 3, 1)[:, :size, :size],
                  "weight_grad": calls["weight_grad"]()[1].permute(2, 3, 1, 0)}
        for op, fn in _conv_fns(stride).items():
            ours = np.asarray(fn(*map(jnp.asarray, (x, w, g))))
            np.testing.assert_allclose(theirs[op].numpy(), ours, rtol=0,
                                       atol=1e-5 * np.abs(ours).max(), err_msg=f"{name} {op}")
