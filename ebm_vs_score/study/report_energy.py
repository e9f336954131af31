"""The report's energy table: AIS of exp(-E(x, eps)) next to the ODE on the same points.

Its columns and the note under it (``report._energy_table`` renders them): whether exp(-E)
can be normalized at all (``likelihood.energy_tail``), AIS's log Z with its effective
sample size, the AIS and ODE NLL, and the log Z the ODE implies (Gao et al. 2021, Table 4,
set AIS next to other likelihoods).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ebm_vs_score.evaluate.nll import AIS_MIN_ESS, ais_converged

# A run is an energy row when its eval has either of these (the tail test runs first; AIS
# only when it passes).
ROW_KEYS = ("ais_log_z", "energy_tail_rising_fraction")

NOTE = (
    "AIS scores the points under exp(-E(x, eps)) / Z; the ODE under the probability-flow "
    "density of s = -grad E. ODE-implied log Z = -mean(log p_ODE + E(x, eps)): for one "
    "density it would be log Z and the spread of log p_ODE + E ~0 (probe noise aside). "
    "Z-hat is unbiased, so P(log Z-hat > log Z + a) <= exp(-a): an AIS log Z far above the "
    "ODE-implied one means the densities differ, not that AIS is unconverged. ESS: the "
    "chains' effective sample size (Kong 1992); at a few chains the ± over chains says "
    "nothing and log Z-hat is only a stochastic lower bound that a longer anneal raises. "
    "Rays not falling: the share of rays through the test points along which exp(-E(r u)) "
    "r^(D-1) still rises at 8-16x their median radius (likelihood.energy_tail); above 0, Z "
    "is infinite (or its mass lies that far out): AIS is skipped. Unconverged: some seed's "
    f"ESS is below {AIS_MIN_ESS:g} chains or its AIS NLL below 0 bits/dim (impossible for a "
    "normalized density on dequantized data): its AIS values are not shown "
    "(evaluate.nll.ais_converged), but its NLL's 99% lower bound is (≥: log Z-hat exceeds "
    "log Z by more than ln 100 nats with probability at most 1%, converged or not).")

# The AIS numbers an unconverged run does not show (its ESS and acceptance are shown).
AIS_VALUE_KEYS = ("ais_log_z", "ais_log_z_stderr", "ais_nll_bpd", "ais_nll_bpd_stderr",
                  "ais_nll_nats", "ais_nll_nats_stderr")


def unconverged_cell(runs: Sequence[dict[str, Any]], key: str) -> str | None:
    """The cell of AIS value ``key`` over seeds ``runs`` when some seed's AIS did not
    converge (``evaluate.nll.ais_converged``), naming their ESS; else None. An NLL cell
    keeps what an unconverged AIS still shows: the smallest over seeds of the NLL's 99%
    lower bound (``<key>_lower99``, ``evaluate.nll``), where every seed has one."""
    failed = [m for m in runs if not ais_converged(m)]
    if key not in AIS_VALUE_KEYS or not failed:
        return None
    ess = ", ".join(f"{float(m['ais_ess']):.2g}" for m in failed)
    text = f"unconverged (ESS {ess} of {int(failed[0].get('ais_chains', 0))})"
    bounds = [m.get(f"{key}_lower99") for m in runs]
    if key.startswith("ais_nll") and all(b is not None for b in bounds):
        return f"≥ {min(float(b) for b in bounds):.3g} (99%), {text}"
    return text


def columns(toy: bool) -> list[tuple[str, str]]:
    """(title, metric key) of every candidate column, in order (nats on toys, bits/dim on
    images); the report keeps those some run has."""
    unit, name = ("nats", "nats") if toy else ("bpd", "bits/dim")
    return [("rays not falling", "energy_tail_rising_fraction"), ("AIS log Z", "ais_log_z"),
            ("ESS (chains)", "ais_ess"), ("± (chains)", "ais_log_z_stderr"),
            (f"AIS NLL {name}", f"ais_nll_{unit}"),
            ("± (examples)", f"ais_nll_{unit}_stderr"), (f"ODE NLL {name}", f"nll_{unit}"),
            ("± (examples)", f"nll_{unit}_stderr"), ("ODE-implied log Z", "ode_log_z"),
            ("spread of log p_ODE + E (nats)", "energy_ode_spread_nats")]
