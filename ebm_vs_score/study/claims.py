"""The claims the study tests: what each paper reports, about which metric and model,
against which baseline (``verdicts`` turns them into verdicts).

Seed papers: Salimans & Ho 2021 (energy vs score U-Nets) and Chao et al. 2023 (the QC
regularizer), each against U. Equilibrium Matching (Wang & Du 2025, arXiv 2510.02300) on the
time-invariant families: EqM-E against the implicit EqM field, the energy's OOD AUROC
against chance (0.5), the adaptive sampler's NFE against its fixed step count (with no loss
of FD as its condition) and NAG-GD against GD at the same step count, each on the same runs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

SELF = "self"  # Claim.baseline: another metric of the variant's own runs


class Claim(NamedTuple):
    """A claim of a paper about ``metric`` of ``family`` against a baseline.

    ``direction``: the sign of (family − baseline) the paper reports (+1 higher, −1 lower),
    or 0 for "no difference". ``size``: the paper's effect relative to the baseline's value
    (for direction 0: the gap within which the two count as equal); None when the paper
    gives no size. ``scales``: the data scales the claim is about (None: any).
    ``baseline``: the family whose runs with the same seeds are subtracted ("score": U), or
    :data:`SELF` (the variant's own runs); ``baseline_metric``: the baseline's metric
    (default ``metric``); ``reference``: a constant subtracted instead of any runs (e.g.
    0.5, an AUROC at chance). ``guard``: a second claim that states a violation of the
    claim's condition (e.g. "quality is lost"); when its interval shows it, the verdict is
    "not reproduced". ``{set}``, ``{tol}`` and ``{n}`` in a metric name stand for every
    OOD set, adaptive sweep row and the largest sweep step count the runs report
    (:data:`_EXPANSIONS`).
    """

    key: str
    statement: str
    source: str
    metric: str
    family: str
    direction: int
    size: float | None = None
    scales: tuple[str, ...] | None = None
    baseline: str = "score"
    baseline_metric: str | None = None
    reference: float | None = None
    guard: Any = None  # Claim | None


_EQM = "Wang & Du 2025"
CLAIMS = (
    # Salimans & Ho 2021, Table 1: CIFAR-10 FIDs of the energy and score U-Nets about 5%
    # apart (6.5 vs 6.8): "can perform just as well".
    Claim("c_matches_u", "C matches U's sample quality", "Salimans & Ho 2021, Table 1",
          "fd", "energy", 0, 0.05),
    Claim("c_matches_u_fid", "C matches U's FID", "Salimans & Ho 2021, Table 1", "fid",
          "energy", 0, 0.05, scales=("cifar",)),
    Claim("no_shortcuts", "an energy without short-cuts to its input samples worse than U",
          "Salimans & Ho 2021, Table 1", "fd", "resnet_energy", +1),
    Claim("qc_nasym", "the QC regularizer lowers NAsym", "Chao et al. 2023, Table 2",
          "nasym", "qc", -1),
    Claim("qc_quality", "QC improves sample quality", "Chao et al. 2023, Table 3", "fd",
          "qc", -1),
    # Equilibrium Matching (arXiv 2510.02300): the explicit energy (EqM-E, dot and l2
    # forms) samples slightly worse than the implicit field; no size at this scale.
    Claim("eqm_explicit_worse", "the explicit energy samples slightly worse than the "
          "implicit field", f"{_EQM}, explicit energy (EqM-E)", "fd", "eqm_energy", +1,
          baseline="eqm"),
    # The energy of EqM-E detects OOD inputs: AUROC of E(x) above chance on each OOD set.
    Claim("eqm_ood_energy", "the energy detects OOD inputs ({set}) better than chance",
          f"{_EQM}, OOD detection", "ood_auroc_energy_{set}", "eqm_energy", +1,
          scales=("digits", "cifar"), reference=0.5),
) + tuple(
    claim for family in ("eqm", "eqm_energy") for claim in (
        # Adaptive compute: stopping each example at ||f|| < tol takes fewer evaluations
        # than the fixed step count, without losing sample quality (the guard).
        Claim(f"{family}_adaptive_nfe", "adaptive stops ({tol}) save NFE against the fixed "
              "step count at no loss of FD", f"{_EQM}, adaptive compute",
              "nfe_sweep.{tol}.sample_nfe_mean", family, -1, baseline=SELF,
              baseline_metric="nfe_sweep.{tol}.num_steps",
              guard=Claim(f"{family}_adaptive_fd", "FD lost by the stop", _EQM,
                          "nfe_sweep.{tol}.fd", family, +1, baseline=SELF,
                          baseline_metric="nfe_sweep.{tol}.fixed.fd")),
        # Nesterov accelerated descent (NAG-GD, the EqM code's form) samples better than
        # plain gradient descent at the same number of steps.
        Claim(f"{family}_nag_beats_gd", "NAG-GD samples better than GD at {n} steps",
              f"{_EQM}, NAG-GD sampling", "nfe_sweep.nag_eqm_{n}.fd", family, -1,
              baseline=SELF, baseline_metric="nfe_sweep.gd_{n}.fd"),
    )) + (
    # The same EqM-E claim after the sweep's largest step count of the study's sampler
    # (textbook NAG), paired with the field's runs of the same seeds: continued descent on
    # an energy moves its samples between modes (docs/notes/eqm_energy_matching.md).
    Claim("eqm_explicit_worse_long", "the explicit energy samples slightly worse than the "
          "implicit field, after {n} descent steps", f"{_EQM}, explicit energy (EqM-E)",
          "nfe_sweep.nag_{n}.fd", "eqm_energy", +1, baseline="eqm"),
)


def _ood_sets(keys: set[str]) -> list[str]:
    prefix = "ood_auroc_energy_"
    return sorted(k[len(prefix):] for k in keys if k.startswith(prefix))


def _adaptive_rows(keys: set[str]) -> list[str]:
    """The sweep's adaptive rows (``nag_tol<tol>``, evaluate/time_invariant.sweep_settings)."""
    return sorted({k.split(".")[1] for k in keys if k.startswith("nfe_sweep.nag_tol")})


def _largest_gd(keys: set[str]) -> list[str]:
    steps = [int(k.split(".")[1][3:]) for k in keys
             if k.startswith("nfe_sweep.gd_") and k.split(".")[1][3:].isdigit()]
    return [str(max(steps))] if steps else []


# placeholder -> the values it takes in the runs' metric names (none found: the claim is
# kept once, unexpanded, and is not testable).
_EXPANSIONS = {"set": _ood_sets, "tol": _adaptive_rows, "n": _largest_gd}
# What a placeholder reads as where the runs report no value for it (the family is not in
# the study, or its runs did not measure that): the claim is then "not testable here".
_UNFILLED = {"set": "an OOD set", "tol": "a tolerance", "n": "N"}


def expand(claim: Claim, keys: set[str]) -> list[Claim]:
    """``claim`` once per value of the placeholder in its metric (:data:`_EXPANSIONS`)
    among the metric names ``keys`` of its family's runs; with no value, once, the
    placeholder written as words (:data:`_UNFILLED`)."""
    names = [p for p in _EXPANSIONS if "{" + p + "}" in claim.metric]
    if not names:
        return [claim]
    name = names[0]
    values = _EXPANSIONS[name](keys)

    def fill(c: Claim | None, value: str, suffix: bool) -> Claim | None:
        if c is None:
            return None
        sub = lambda text: None if text is None else text.replace("{" + name + "}", value)
        return c._replace(key=f"{c.key}_{value}" if suffix else c.key,
                          statement=sub(c.statement), metric=sub(c.metric),
                          baseline_metric=sub(c.baseline_metric),
                          guard=fill(c.guard, value, suffix))

    if not values:
        return [fill(claim, _UNFILLED[name], False)]
    return [fill(claim, v, True) for v in values]
