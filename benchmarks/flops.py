"""Model FLOPs of a program, counted on its jaxpr, and MFU for harness records.

    python -m benchmarks.flops --fill=benchmarks/results/gpu_h200_2026-12-04_train_u.json

MFU (model FLOPs utilization; Chowdhery et al. 2022, PaLM, Appendix B) is the arithmetic a
step needs over its time and the hardware's peak. The arithmetic is counted here on the
jaxpr, not by XLA's cost analysis, because that depends on the backend: on the GPU it
counted 194.9 GFLOP for the CIFAR U step at batch 128 (2026-11-25, jax 0.11.2), which
needs 4,777 (its convolutions are cuDNN calls there), and in a later run it gave none. On
the CPU it counts the convolutions but skips the kernel taps that fall in the padding
(4,484 GFLOP for the same step).

Counted: every ``dot_general`` and convolution (``conv_general_dilated`` and
``models/conv.py``'s tangent primitive) at 2 FLOPs per multiply-add of the kernel's
nominal taps (padding taps counted, as MFU's convention does; the zeros inserted by input
dilation not, so a strided convolution's input gradient counts as its forward), in every sub-jaxpr
(jit, custom derivatives, remat), a ``scan`` body times its length, the largest branch of a
``cond``. Elementwise work is not counted (MFU's convention). A ``while`` body's trip count
is unknown before running: a program with one counts as None.

``--fill`` adds ``flops``, ``flops_per_s`` and ``peak_fraction`` to the train rows of a
record made on any backend (the harness's own count kept as ``xla_flops``), tracing each
row's step here with the layers the record's platform traces (``channelwise.layers_for``),
and ``flops_count`` (this command, commit, date) to the record.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable

import jax
from jax.extend import core as jex_core

CONVOLUTIONS = ("conv_general_dilated", "canonical_conv_tangent")


class UncountedLoop(Exception):
    """A ``while`` loop: its trip count is unknown before running."""


def dot_general_flops(eqn) -> int:
    """2 x (output elements) x (contracted elements per output)."""
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def conv_flops(eqn) -> int:
    """2 x (output elements) x (kernel elements per output feature): feature and batch
    groups, strides and kernel dilations included, since the kernel holds exactly the
    weights each output element sums over; divided by the input dilation's product, since
    with ``lhs_dilation`` d only one in d input positions per dimension holds a number (the
    rest are the zeros a strided convolution's input gradient is written with: counting
    their taps would charge that gradient d^2 times its forward convolution)."""
    kernel = eqn.invars[1].aval.shape
    if eqn.primitive.name == "conv_general_dilated":
        out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    else:  # models/conv.py: an HWIO kernel
        out_feature_dim = len(kernel) - 1
    holes = math.prod(eqn.params.get("lhs_dilation") or (1,))
    per_output = math.prod(kernel) // kernel[out_feature_dim]
    return 2 * math.prod(eqn.outvars[0].aval.shape) * per_output // holes


def jaxpr_flops(jaxpr) -> int:
    """Model FLOPs of one run of ``jaxpr`` (a Jaxpr or ClosedJaxpr); raises UncountedLoop."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "while":
            raise UncountedLoop("a while loop's trip count is unknown before running")
        if name == "dot_general":
            total += dot_general_flops(eqn)
        elif name in CONVOLUTIONS:
            total += conv_flops(eqn)
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        else:
            total += sum(jaxpr_flops(sub) for sub in jex_core.jaxprs_in_params(eqn.params))
    return total


def model_flops(fn: Callable, *args) -> int | None:
    """Model FLOPs of one call ``fn(*args)``; None where it runs a ``while`` loop."""
    try:
        return jaxpr_flops(jax.make_jaxpr(fn)(*args))
    except UncountedLoop:
        return None


QC_FIELDS = ("qc_weight", "qc_probes", "qc_fraction", "qc_every")


def train_step_flops(row: dict, platform: str) -> int | None:
    """Model FLOPs of a record's train row, its step traced as ``platform`` traces it, with
    the row's L_QC settings. None for a QC row that does not record them all (its share of
    the batch and cadence changed default on 2026-11-29) and where the network traced here
    has another parameter count than the row's (the record measured another architecture).
    """
    from benchmarks import rows, suites
    from ebm_vs_score import train
    from ebm_vs_score.models import channelwise

    qc = {f: row[f] for f in QC_FIELDS if f in row} if row["family"] == "QC" else {}
    if row["family"] == "QC" and len(qc) < len(QC_FIELDS):
        return None
    spec = suites.RowSpec(row["name"], "train", row["scale"], row["family"], row["batch"],
                          dtype=row.get("dtype", "float32"))
    with channelwise.layers_for(platform):
        _, state, step, batch = rows._train_inputs(spec, qc)
        if row.get("num_params") not in (None, train.num_params(state.params)):
            return None
        return model_flops(step, state, batch)


def fill(record: dict, argv: list[str]) -> dict:
    """``record`` with model FLOPs, FLOP/s and peak fractions in its timed train rows."""
    from benchmarks.run import _add_peak_fractions
    from ebm_vs_score import results as records

    platform = record["machine"]["platform"]
    for row in record["rows"]:
        if row.get("kind") != "train" or not row.get("time_s"):
            continue
        row.setdefault("xla_flops", row.get("flops"))  # what the harness counted there
        row["flops"] = train_step_flops(row, platform)
        row["flops_per_s"] = row["peak_fraction"] = None
        if row["flops"] is not None:
            row["flops_per_s"] = row["flops"] / row["time_s"]
    _add_peak_fractions(record)  # the harness's own: over each matmul peak of the run
    record["flops_count"] = {
        "what": "model FLOPs on the jaxpr (benchmarks/flops.py), layers traced as on "
                f"{platform}", "command": "python -m benchmarks.flops " + " ".join(argv),
        "commit": records.commit()[0], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_model": records.cpu_model(), "jax_version": jax.__version__}
    return record


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fill", required=True, help="a harness record (JSON), rewritten")
    args = p.parse_args(argv)
    with open(args.fill) as f:
        record = fill(json.load(f), argv)
    from benchmarks.run import _write_json
    _write_json(args.fill, record)
    for row in record["rows"]:
        if row.get("flops"):
            print(f"{row['name']}: {row['flops'] / 1e9:,.1f} GFLOP/step, "
                  f"{row['flops_per_s'] / 1e12:.1f} TFLOP/s, "
                  + ", ".join(f"{100 * v:.1f}% of the {d} peak"
                              for d, v in row["peak_fraction"].items()))


if __name__ == "__main__":
    main()
