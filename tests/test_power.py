"""The study's statistics against independent references, and each verdict word on
synthetic per-seed numbers.

References: scipy.stats.ttest_rel's confidence interval (the paired t-interval), G*Power's
published sample sizes for a one-sample / paired t-test (two-sided, alpha 0.05, power
0.8: d = 0.2 -> 199, 0.5 -> 34, 0.8 -> 15, 1.0 -> 10), a Monte-Carlo power of
scipy.stats.ttest_1samp, and the finite-population variance of a sample mean.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from ebm_vs_score.study import power, verdicts


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_paired_interval_equals_scipy_ttest_rel(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(2.0, 1.0, n), rng.normal(1.5, 1.0, n)
    iv = power.paired_interval(a, b)
    ref = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    np.testing.assert_allclose([iv.low, iv.high], [ref.low, ref.high], rtol=1e-12)
    np.testing.assert_allclose(iv.mean, np.mean(a - b), rtol=1e-12)
    assert iv.n == n and iv.df == n - 1
    ref90 = scipy.stats.ttest_rel(a, b).confidence_interval(0.9)
    iv90 = power.paired_interval(a, b, level=0.9)
    np.testing.assert_allclose([iv90.low, iv90.high], [ref90.low, ref90.high], rtol=1e-12)


def test_paired_interval_of_one_seed_is_unbounded_and_nan_fails():
    iv = power.paired_interval([1.0], [0.5])
    assert iv.mean == 0.5 and iv.low == -math.inf and iv.high == math.inf
    with pytest.raises(ValueError, match="not finite"):
        power.paired_interval([1.0, np.nan], [0.5, 0.4])
    with pytest.raises(ValueError, match="equal-length"):
        power.paired_interval([1.0, 2.0], [0.5])


@pytest.mark.parametrize("d, expected", [(0.2, 199), (0.5, 34), (0.8, 15), (1.0, 10)])
def test_seeds_needed_matches_gpower(d, expected):
    assert power.seeds_needed(d, 1.0) == expected
    assert power.seeds_needed(-3 * d, 3.0) == expected  # only |effect| / sd matters


def test_seeds_needed_reaches_the_power_by_monte_carlo():
    """At the returned n, simulated paired t-tests reject in >= ~80% of trials; at n - 1
    in fewer (scipy.stats.ttest_1samp on the differences)."""
    effect, sd = 0.7, 1.0
    n = power.seeds_needed(effect, sd)
    rng = np.random.default_rng(0)
    rate = {}
    for m in (n - 1, n):
        d = rng.normal(effect, sd, size=(40_000, m))
        rate[m] = np.mean(scipy.stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05)
    assert rate[n] >= 0.79 and rate[n - 1] < 0.8, rate
    assert power.seeds_needed(0.0, 1.0) is None and power.seeds_needed(1.0, math.nan) is None


def test_real_floor_of_a_mean_difference_has_the_sampling_spread():
    """metric = mean(draw) - mean(pool): its floor is centred on 0 with the standard
    deviation of a mean of n draws without replacement, sigma sqrt((1 - n/N) / n)."""
    rng = np.random.default_rng(1)
    pool = rng.normal(0.0, 2.0, 1500)
    n, draws = 300, 4000
    floor = power.real_floor(lambda idx: {"diff": pool[idx].mean() - pool.mean()},
                             len(pool), n, draws, seed=3)["diff"]
    expected = pool.std(ddof=1) * math.sqrt((1 - n / len(pool)) / n)
    assert abs(floor.mean) < 4 * expected / math.sqrt(draws)
    np.testing.assert_allclose(floor.sd, expected, rtol=0.05)
    assert floor.low < 0 < floor.high and floor.n == n and floor.draws == draws
    with pytest.raises(ValueError, match="pool"):
        power.real_floor(lambda idx: {}, 10, 11, 2)


# ----------------------------------------------------------------------------------------
# Verdicts
# ----------------------------------------------------------------------------------------


def _iv(low, high):
    return power.PairedInterval((low + high) / 2, 0.1, low, high, 3, 0.2)


@pytest.mark.parametrize("claim_kw, interval, expected", [
    (dict(direction=-1), (-0.5, -0.1), verdicts.REPRODUCED),
    (dict(direction=-1), (0.1, 0.5), verdicts.NOT_REPRODUCED),
    (dict(direction=-1), (-0.5, 0.2), verdicts.UNDERPOWERED),
    (dict(direction=+1, size=0.5), (-0.1, 0.3), verdicts.NOT_REPRODUCED),  # below the size
    (dict(direction=+1, size=0.5), (-0.1, 0.8), verdicts.UNDERPOWERED),
    (dict(direction=+1, size=0.5), (0.05, 0.2), verdicts.REPRODUCED),  # right side, smaller
    (dict(direction=0, size=0.05), (-0.04, 0.03), verdicts.REPRODUCED),  # inside +-5% of 1
    (dict(direction=0, size=0.05), (0.06, 0.3), verdicts.NOT_REPRODUCED),
    (dict(direction=0, size=0.05), (-0.2, 0.3), verdicts.UNDERPOWERED),
])
def test_verdict_rules(claim_kw, interval, expected):
    claim = verdicts.Claim("k", "s", "src", "fd", "energy", **claim_kw)
    assert verdicts.verdict(claim, _iv(*interval), baseline=1.0) == expected
    assert verdicts.verdict(claim, None, baseline=1.0) == verdicts.NOT_TESTABLE


def _study(u, others):
    """per-seed dicts: U's values and {variant: (family, values)} for metrics fd, nasym."""
    per_seed = {"score": {s: {"fd": f, "nasym": n} for s, (f, n) in enumerate(u)}}
    families, labels = {"score": "score"}, {"score": "U"}
    for variant, (family, values) in others.items():
        per_seed[variant] = {s: {"fd": f, "nasym": n} for s, (f, n) in enumerate(values)}
        families[variant], labels[variant] = family, variant
    return verdicts.study_values(per_seed, families, labels, None, scale="digits")


def _verdict_of(values, key, variant):
    return next(c["verdict"] for c in values["claims"]
                if c["key"] == key and c["variant"] == variant)


def test_each_verdict_from_synthetic_seeds():
    u = [(2.0, 1e-3), (2.6, 1.1e-3), (1.6, 0.9e-3), (3.1, 1.05e-3)]
    values = _study(u, {
        # C within 1% of U every seed: "matches" reproduced (gap 5% of U's mean FD).
        "energy": ("energy", [(f * 1.005, 1e-9) for f, _ in u]),
        # QC: NAsym halved every seed (reproduced), FD 1.0 worse every seed (not reproduced).
        "qc_lam1e-01": ("qc", [(f + 1.0 + 0.01 * i, n / 2) for i, (f, n) in enumerate(u)]),
        # C-ResNet: FD differences of both signs, spread large: underpowered.
        "resnet_energy": ("resnet_energy", [(f + d, n) for (f, n), d in
                                            zip(u, [1.5, -1.2, 0.9, -0.4], strict=True)]),
    })
    assert _verdict_of(values, "c_matches_u", "energy") == verdicts.REPRODUCED
    assert _verdict_of(values, "qc_nasym", "qc_lam1e-01") == verdicts.REPRODUCED
    assert _verdict_of(values, "qc_quality", "qc_lam1e-01") == verdicts.NOT_REPRODUCED
    assert _verdict_of(values, "no_shortcuts", "resnet_energy") == verdicts.UNDERPOWERED
    assert _verdict_of(values, "c_matches_u_fid", "energy") == verdicts.NOT_TESTABLE
    qc = next(c for c in values["claims"] if c["key"] == "qc_quality")
    d = np.asarray([1.0 + 0.01 * i for i in range(4)])
    ref = scipy.stats.ttest_rel(d + np.asarray(u)[:, 0], np.asarray(u)[:, 0])
    np.testing.assert_allclose([qc["low"], qc["high"]],
                               list(ref.confidence_interval(0.95)), rtol=1e-9)
    assert qc["n"] == 4
    c = next(c for c in values["claims"] if c["key"] == "c_matches_u")
    effect = 0.05 * np.mean(np.asarray(u)[:, 0])
    assert c["seeds_needed"] == power.seeds_needed(effect, c["sd"])
    assert set(c["verdict"] for c in values["claims"]) <= set(verdicts.VERDICTS)


def test_a_family_the_study_did_not_run_is_not_testable_and_nan_seeds_are_left_out():
    u = [(2.0, 1e-3), (2.5, 1e-3), (np.nan, 1e-3)]
    values = _study(u, {"energy": ("energy", [(2.0, 0.0), (2.5, 0.0), (2.2, 0.0)])})
    assert _verdict_of(values, "qc_nasym", "qc") == verdicts.NOT_TESTABLE
    assert values["differences"]["energy"]["fd"]["n"] == 2  # the NaN seed is not paired
    lines = verdicts.power_lines(values)
    assert any(verdicts.NOT_TESTABLE in line for line in lines)
    assert not any("nan" in line.lower() for line in lines)


# ----------------------------------------------------------------------------------------
# Claims against other baselines: a named model, a constant, another metric of the same
# runs (Equilibrium Matching's claims on the time-invariant families)
# ----------------------------------------------------------------------------------------


def _sweep(nfe: float, fd_adaptive: float, fd_fixed: float | None, n: int = 200,
           nag: float = 5.0, gd: float = 6.0) -> list[dict]:
    """NFE-sweep rows shaped as evaluate/time_invariant.nfe_sweep writes them."""
    rows = [{"sampler": f"gd_{n}", "method": "gd", "num_steps": n, "tol": 0.0,
             "sample_nfe": float(n), "fd": gd},
            {"sampler": f"nag_eqm_{n}", "method": "nag", "nag_form": "eqm", "num_steps": n,
             "tol": 0.0, "sample_nfe": float(n), "fd": nag},
            {"sampler": "nag_tol2", "method": "nag", "nag_form": "nesterov", "num_steps": n,
             "tol": 2.0, "sample_nfe": float(n), "sample_nfe_mean": nfe, "fd": fd_adaptive}]
    if fd_fixed is not None:
        rows.append({"sampler": f"nag_{n}", "method": "nag", "nag_form": "nesterov",
                     "num_steps": n, "tol": 0.0, "sample_nfe": float(n), "fd": fd_fixed})
    return rows


def _ti_values(runs: dict[str, list[dict]]) -> dict:
    """Study values of per-seed eval results {variant: [results of seed 0, 1, ...]}, through
    the same per-seed extraction as the study (verdicts.per_seed_metrics)."""
    import types

    from ebm_vs_score.study import plan

    records = [types.SimpleNamespace(variant=v, seed=s, done={"results": r})
               for v, seeds in runs.items() for s, r in enumerate(seeds)]
    per_seed = verdicts.per_seed_metrics(records)
    families = {v: plan.parse_variant(v)[0] for v in per_seed}
    return verdicts.study_values(per_seed, families, {v: v for v in per_seed}, None,
                                 scale="digits")


def _claim(values, key, variant):
    return next(c for c in values["claims"] if c["key"] == key and c["variant"] == variant)


def test_explicit_energy_against_the_implicit_field_is_paired_by_seed():
    eqm = [4.0, 5.5, 3.2, 6.1]
    values = _ti_values({
        "eqm": [{"fd": f} for f in eqm],
        # dot: 0.5 worse every seed (+-0.02): the paper's direction, reproduced.
        "eqm_energy_dot": [{"fd": f + 0.5 + 0.02 * (-1) ** i} for i, f in enumerate(eqm)],
        # l2: 0.5 better every seed: the other side, not reproduced.
        "eqm_energy_l2": [{"fd": f - 0.5 - 0.01 * i} for i, f in enumerate(eqm)]})
    dot = _claim(values, "eqm_explicit_worse", "eqm_energy_dot")
    assert dot["verdict"] == verdicts.REPRODUCED and dot["baseline"] == "eqm"
    ref = scipy.stats.ttest_rel([f + 0.5 + 0.02 * (-1) ** i for i, f in enumerate(eqm)],
                                eqm).confidence_interval(0.95)
    np.testing.assert_allclose([dot["low"], dot["high"]], [ref.low, ref.high], rtol=1e-9)
    np.testing.assert_allclose(dot["baseline_value"], np.mean(eqm))
    assert _claim(values, "eqm_explicit_worse", "eqm_energy_l2")["verdict"] == \
        verdicts.NOT_REPRODUCED
    spread = _ti_values({"eqm": [{"fd": f} for f in eqm],
                         "eqm_energy_dot": [{"fd": f + d} for f, d in
                                            zip(eqm, [0.9, -0.7, 0.4, -0.1], strict=True)]})
    assert _claim(spread, "eqm_explicit_worse", "eqm_energy_dot")["verdict"] == \
        verdicts.UNDERPOWERED
    # No implicit EqM runs: nothing to pair with.
    alone = _ti_values({"eqm_energy_dot": [{"fd": f} for f in eqm]})
    entry = _claim(alone, "eqm_explicit_worse", "eqm_energy_dot")
    assert entry["verdict"] == verdicts.NOT_TESTABLE and "low" not in entry


def test_the_explicit_energy_after_the_longest_sweep_is_paired_with_the_field():
    """eqm_explicit_worse_long reads nag_<n>.fd at the largest step count, EqM-E minus the
    EqM run of the same seed (appended last, so earlier claims keep their indices)."""
    eqm_fd, dot_fd = [2.7, 3.1, 2.4, 2.9], [4.2, 5.0, 3.6, 4.8]
    values = _ti_values({
        "eqm": [{"fd": 2.0, "nfe_sweep": _sweep(90.0, 2.0, f)} for f in eqm_fd],
        "eqm_energy_dot": [{"fd": 2.0, "nfe_sweep": _sweep(90.0, 2.0, f)} for f in dot_fd]})
    entry = _claim(values, "eqm_explicit_worse_long_200", "eqm_energy_dot")
    assert entry["metric"] == "nfe_sweep.nag_200.fd" and entry["baseline"] == "eqm"
    assert "after 200 descent steps" in entry["statement"]
    ref = scipy.stats.ttest_rel(dot_fd, eqm_fd).confidence_interval(0.95)
    np.testing.assert_allclose([entry["low"], entry["high"]], [ref.low, ref.high], rtol=1e-9)
    assert entry["verdict"] == verdicts.REPRODUCED
    assert values["claims"][-1]["key"] == "eqm_explicit_worse_long_200"


def test_ood_auroc_of_the_energy_against_chance():
    aurocs = {"noise": [0.91, 0.95, 0.88], "inverted": [0.31, 0.27, 0.35],
              "patches": [0.45, 0.72, 0.55]}
    values = _ti_values({"eqm_energy_dot": [
        {f"ood_auroc_energy_{s}": v[i] for s, v in aurocs.items()} for i in range(3)]})
    expected = {"noise": verdicts.REPRODUCED, "inverted": verdicts.NOT_REPRODUCED,
                "patches": verdicts.UNDERPOWERED}
    for ood_set, word in expected.items():
        c = _claim(values, f"eqm_ood_energy_{ood_set}", "eqm_energy_dot")
        assert c["verdict"] == word, (ood_set, c)
        ref = scipy.stats.ttest_1samp(aurocs[ood_set], 0.5).confidence_interval(0.95)
        np.testing.assert_allclose([c["low"] + 0.5, c["high"] + 0.5], [ref.low, ref.high],
                                   rtol=1e-9)
        assert c["n"] == 3 and c["baseline_label"] == "0.5"
    # A run without OOD scores: the claim stays, unexpanded, not testable, and its text
    # says the placeholder in words (a report showed "({set})").
    none = _ti_values({"eqm_energy_dot": [{"fd": 1.0}, {"fd": 1.1}]})
    entry = _claim(none, "eqm_ood_energy", "eqm_energy_dot")
    assert entry["verdict"] == verdicts.NOT_TESTABLE
    assert "{" not in entry["statement"] + entry["metric"] and "an OOD set" in entry["statement"]


@pytest.mark.parametrize("nfe, fd_adaptive, fd_fixed, expected", [
    ([61.0, 70.0, 66.0], [5.02, 5.11, 4.93], [5.0, 5.1, 5.0], verdicts.REPRODUCED),
    # fewer evaluations, but FD 1.0 worse every seed: the condition is violated.
    ([61.0, 70.0, 66.0], [6.0, 6.12, 5.95], [5.0, 5.1, 5.0], verdicts.NOT_REPRODUCED),
    # the stop never fires: 200 of 200 evaluations every seed, nothing saved.
    ([200.0, 200.0, 200.0], [5.0, 5.1, 5.0], [5.0, 5.1, 5.0], verdicts.NOT_REPRODUCED),
    ([100.0, 199.0], [5.0, 5.1], [5.0, 5.1], verdicts.UNDERPOWERED),  # two far-apart seeds
    ([61.0, 70.0, 66.0], [5.0, 5.1, 5.0], None, verdicts.NOT_TESTABLE),  # no fixed-step row
])
def test_adaptive_compute_against_the_fixed_step_count(nfe, fd_adaptive, fd_fixed, expected):
    fixed = fd_fixed or [None] * len(nfe)
    runs = [{"fd": 5.0, "nfe_sweep": _sweep(a, b, c)}
            for a, b, c in zip(nfe, fd_adaptive, fixed, strict=True)]
    values = _ti_values({"eqm": runs})
    c = _claim(values, "eqm_adaptive_nfe_nag_tol2", "eqm")
    assert c["verdict"] == expected, c
    if expected != verdicts.NOT_TESTABLE and np.std(nfe) > 0:
        ref = scipy.stats.ttest_1samp(nfe, 200.0).confidence_interval(0.95)
        np.testing.assert_allclose([c["low"] + 200, c["high"] + 200], [ref.low, ref.high],
                                   rtol=1e-9)
        guard = c["guard"]
        ref = scipy.stats.ttest_rel(fd_adaptive, fd_fixed).confidence_interval(0.95)
        np.testing.assert_allclose([guard["low"], guard["high"]], [ref.low, ref.high],
                                   rtol=1e-9)


def test_nag_against_gd_and_the_claims_table():
    runs = [{"fd": 5.0, "nfe_sweep": _sweep(60.0, 5.0, 5.0, nag=5.0 + 0.1 * s, gd=6.0)}
            for s in range(3)]
    values = _ti_values({"eqm": runs, "eqm_energy_dot": runs})
    for variant in ("eqm", "eqm_energy_dot"):
        family = "eqm" if variant == "eqm" else "eqm_energy"
        c = _claim(values, f"{family}_nag_beats_gd_200", variant)
        assert c["verdict"] == verdicts.REPRODUCED
        np.testing.assert_allclose(c["value"], -0.9)
    lines = verdicts.claims_table(values)
    row = next(line for line in lines if "NAG-GD samples better than GD at 200 steps" in line)
    assert "eqm: FD ↓ (nag_eqm_200) − FD ↓ (gd_200)" in row and "**reproduced**" in row
    row = next(line for line in lines if "adaptive stops (nag_tol2)" in line)
    assert "NFE (nag_tol2) − steps (nag_tol2)" in row
    assert "FD ↓ (nag_tol2) − FD ↓ (nag_tol2 without the stop)" in row
    # The four words, and the U-less study leaves the seed papers' claims not testable.
    assert {c["verdict"] for c in values["claims"]} <= set(verdicts.VERDICTS)
    assert _claim(values, "c_matches_u", "energy")["verdict"] == verdicts.NOT_TESTABLE


def test_a_record_written_before_claims_had_baselines_still_renders():
    """Claims entries of older study records have no baseline fields: they were all
    against U, and their rows read as those of the same claims in a new record."""
    values = _study([(2.0, 1e-3), (2.6, 1.1e-3), (1.6, 0.9e-3)],
                    {"energy": ("energy", [(2.1, 0.0), (2.5, 0.0), (1.7, 0.0)])})
    u_claims = [c for c in values["claims"] if c["baseline_label"] == "U"]
    assert {c["key"] for c in u_claims} == {"c_matches_u", "c_matches_u_fid",
                                            "no_shortcuts", "qc_nasym", "qc_quality"}
    new = ("baseline", "baseline_metric", "baseline_label", "reference", "per_seed", "guard")
    old = [{k: v for k, v in c.items() if k not in new} for c in u_claims]
    rows = verdicts.claims_table(dict(values, claims=old))
    assert rows == verdicts.claims_table(dict(values, claims=u_claims))
    assert any(row.split(" | ")[1] == "energy − U" for row in rows[2:])
