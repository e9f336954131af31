"""The benchmark suites: which rows run, at which batch sizes, and row selection.

A row is named ``kind/scale/...``: ``train/<scale>/<family>`` (``<family>-bf16``: the same
step with bfloat16 compute and float32 parameters),
``sampler/<scale>/<method>/<family>`` and ``asym/<scale>/<family>``, with scale in
toy/digits/cifar and family in U, C, C-ResNet, QC (the four families of DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import fnmatch

# benchmark label -> config_base family
FAMILIES = {"U": "score", "C": "energy", "C-ResNet": "resnet_energy", "QC": "qc"}
SAMPLER_METHODS = ("pc", "ancestral", "mala")
MH_METHODS = ("mala",)  # need an energy: C only


@dataclasses.dataclass(frozen=True)
class Suite:
    """Batch sizes per data scale (a scale absent from a dict has no such rows; a train
    batch of None is the config's own ``training.batch_size``)."""

    name: str
    train_batch: dict[str, int | None]
    sampler_batch: dict[str, int]
    asym_batch: dict[str, int]
    sampler_steps: int
    asym_probes: tuple[int, ...]
    matmul: tuple[tuple[int, str], ...]
    repeats: int
    min_time: float
    # mixed precision (bf16 compute, float32 params): these scales' train rows again
    bf16_train_batch: dict[str, int] = dataclasses.field(default_factory=dict)


SUITES = {
    # 2 CPU cores: CIFAR trains at batch 8 (a GPU batch of 128 takes minutes per step); no
    # CIFAR sampler or Asym rows (minutes of compilation each for what digits already shows).
    "cpu": Suite(
        name="cpu",
        train_batch={"toy": None, "digits": None, "cifar": 8},
        sampler_batch={"toy": 512, "digits": 64},
        asym_batch={"toy": 512, "digits": 64},
        sampler_steps=20,
        asym_probes=(1, 4),
        matmul=((2048, "float32"),),
        repeats=5,
        min_time=0.5,
    ),
    "gpu": Suite(
        name="gpu",
        train_batch={"toy": None, "digits": 128, "cifar": 128},
        sampler_batch={"toy": 512, "digits": 128, "cifar": 128},
        asym_batch={"toy": 512, "digits": 128, "cifar": 128},
        sampler_steps=50,
        asym_probes=(1, 4),
        matmul=((8192, "float32"), (8192, "bfloat16")),
        repeats=10,
        min_time=0.5,
        bf16_train_batch={"cifar": 128},
    ),
}
BF16_FAMILIES = ("U", "C")  # the mixed-precision rows: the unconstrained and the energy model


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One row to measure."""

    name: str
    kind: str  # train | sampler | asym
    scale: str
    family: str  # U | C | C-ResNet | QC
    batch: int | None  # None: the config's training.batch_size
    method: str = ""
    dtype: str = "float32"  # model.dtype: compute dtype; parameters stay float32


def plan(suite: Suite) -> list[RowSpec]:
    """Every row of a suite, in the order they run."""
    rows = [RowSpec(f"train/{s}/{f}", "train", s, f, b)
            for s, b in suite.train_batch.items() for f in FAMILIES]
    rows += [RowSpec(f"train/{s}/{f}-bf16", "train", s, f, b, dtype="bfloat16")
             for s, b in suite.bf16_train_batch.items() for f in BF16_FAMILIES]
    for scale, batch in suite.sampler_batch.items():
        for method in SAMPLER_METHODS:
            for family in ("U", "C"):
                if method in MH_METHODS and family == "U":
                    continue
                rows.append(RowSpec(f"sampler/{scale}/{method}/{family}", "sampler", scale,
                                    family, batch, method))
    rows += [RowSpec(f"asym/{s}/{f}", "asym", s, f, b)
             for s, b in suite.asym_batch.items() for f in ("U", "C")]
    return rows


def matches(name: str, pattern: str) -> bool:
    """A pattern with ``/`` or a wildcard is a glob on the whole name, else a name part."""
    if "/" in pattern or any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name.split("/")


def select(rows: list[RowSpec], only: str | None) -> list[RowSpec]:
    """The rows matching any comma-separated pattern of ``only`` (all rows if empty)."""
    if not only:
        return rows
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [r for r in rows if any(matches(r.name, p) for p in patterns)]
    if not chosen:
        names = ", ".join(r.name for r in rows)
        raise ValueError(f"--only={only!r} selects no row; rows of this suite: {names}")
    return chosen
