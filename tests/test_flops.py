"""Model FLOPs counted on the jaxpr (benchmarks/flops.py), against hand counts."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops, timing
from ebm_vs_score.models import channelwise
from ebm_vs_score.models import conv as conv_lib

DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, padding="SAME", groups=1):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DN,
                                        feature_group_count=groups)


def test_a_batched_matmul_is_two_flops_per_multiply_add():
    a, b = jnp.ones((4, 3, 5)), jnp.ones((4, 5, 7))
    assert flops.model_flops(jnp.matmul, a, b) == 2 * 4 * 3 * 5 * 7


def test_a_valid_convolution_matches_xla_and_the_hand_count():
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    valid = lambda x, w: _conv(x, w, "VALID")
    expected = 2 * (2 * 6 * 6 * 4) * (3 * 3 * 3)
    assert flops.model_flops(valid, x, w) == expected
    assert timing.cost_flops(jax.jit(valid).lower(x, w)) == expected


def test_same_padding_counts_every_tap_and_groups_divide_the_inputs():
    x = jnp.ones((2, 8, 8, 4))
    assert flops.model_flops(_conv, x, jnp.ones((3, 3, 4, 6))) == 2 * (2 * 8 * 8 * 6) * 36
    grouped = flops.model_flops(lambda x, w: _conv(x, w, groups=2), x, jnp.ones((3, 3, 2, 6)))
    assert grouped == 2 * (2 * 8 * 8 * 6) * 18


def test_both_gradients_of_a_convolution_cost_its_forward_each():
    """The input gradient (a convolution with the flipped kernel) and the weight gradient
    (activations against output gradients) each take the forward's multiply-adds."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
    forward = flops.model_flops(_conv, x, w)
    loss = lambda x, w: jnp.sum(_conv(x, w) ** 2)
    assert flops.model_flops(jax.grad(loss, argnums=(0, 1)), x, w) == 3 * forward


def test_a_strided_convolutions_gradients_cost_its_forward_each():
    """At stride 2 the input gradient is a convolution over the output gradient dilated by 2
    (three zeros in four positions): only the taps on its numbers are counted."""
    x, w = jnp.ones((2, 32, 32, 4)), jnp.ones((3, 3, 4, 6))
    strided = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                                       dimension_numbers=DN)
    forward = flops.model_flops(strided, x, w)
    assert forward == 2 * (2 * 16 * 16 * 6) * (3 * 3 * 4)
    loss = lambda x, w: jnp.sum(strided(x, w) ** 2)
    assert flops.model_flops(jax.grad(loss, argnums=(0, 1)), x, w) == 3 * forward
    transposed = lambda y, w: conv_lib.conv(y, w, (1, 1), ((1, 2), (1, 2)), (2, 2))
    y = jnp.ones((2, 16, 16, 4))
    assert flops.model_flops(transposed, y, w) == 2 * (2 * 16 * 16 * 6) * (3 * 3 * 4)


def test_the_canonical_convolution_counts_like_jaxs():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
    ours = lambda x, w: conv_lib.conv(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
    tangent = lambda x, w: jax.jvp(lambda y: ours(y, w), (x,), (x,))[1]
    assert flops.model_flops(ours, x, w) == flops.model_flops(_conv, x, w)
    assert flops.model_flops(tangent, x, w) == 2 * flops.model_flops(_conv, x, w)


def test_loops_scan_counts_every_step_cond_its_dearest_branch_while_none():
    m = jnp.ones((4, 4))
    one = 2 * 4 * 4 * 4
    scanned = lambda m: jax.lax.scan(lambda c, _: (c @ m, None), m, None, length=5)[0]
    assert flops.model_flops(scanned, m) == 5 * one
    branches = lambda p, m: jax.lax.cond(p, lambda m: m @ m @ m, lambda m: m, m)
    assert flops.model_flops(branches, True, m) == 2 * one
    looped = lambda n, m: jax.lax.fori_loop(0, n, lambda _, c: c @ m, m)
    assert flops.model_flops(looped, 3, m) is None


def test_layers_for_traces_another_platforms_layers():
    with channelwise.layers_for("gpu"):
        assert not channelwise.canonical_convs() and not channelwise.sums_as_products()
    with channelwise.layers_for("cpu"):
        assert channelwise.canonical_convs() and channelwise.sums_as_products()
    assert channelwise.canonical_convs() == (jax.default_backend() == "cpu")


def _record(platform: str, **row) -> dict:
    train_row = {"name": "train/toy/U", "kind": "train", "scale": "toy", "family": "U",
                 "batch": 16, "time_s": 0.01, **row}
    return {"machine": {"platform": platform},
            "peak": {"float32": {"flops_per_s": 1e12}}, "rows": [train_row]}


def test_fill_writes_model_flops_mfu_and_where_they_came_from(tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps(_record("gpu", flops=123.0)))
    flops.main([f"--fill={path}"])
    record = json.loads(path.read_text())
    row = record["rows"][0]
    assert row["flops"] > 0 and row["flops_per_s"] == pytest.approx(row["flops"] / 0.01)
    assert row["xla_flops"] == 123.0  # the count the record had is kept beside it
    assert row["peak_fraction"]["float32"] == pytest.approx(row["flops_per_s"] / 1e12)
    assert "benchmarks.flops" in record["flops_count"]["command"]
    assert "gpu" in record["flops_count"]["what"] and record["flops_count"]["date"]


def test_fill_refuses_rows_it_cannot_reproduce():
    """Another network (parameter count) or a QC row without its L_QC settings: no count."""
    other = flops.fill(_record("gpu", num_params=1), ["--fill=x"])["rows"][0]
    assert other["flops"] is None and other["peak_fraction"] is None
    qc = _record("gpu", name="train/toy/QC", family="QC", qc_weight=1e-4, qc_probes=1)
    assert flops.fill(qc, ["--fill=x"])["rows"][0]["flops"] is None
