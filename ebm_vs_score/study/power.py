"""What a study's seeds can show: paired intervals, seeds needed, real-vs-real floors.

* :func:`paired_interval`: the mean of per-seed differences d_i = a_i - b_i between two
  variants trained with the same seeds, and its two-sided t-interval,
  mean ± t_{1-alpha/2, n-1} · sd(d) / sqrt(n) (Student 1908; the paired t-interval of
  any statistics text, e.g. Wasserman 2004, "All of Statistics", Sec. 10.3).
* :func:`seeds_needed`: the smallest number of seeds at which a two-sided paired t-test
  at level alpha detects a true mean difference ``effect`` with probability ``power``
  when the per-seed differences have standard deviation ``sd``: power from the noncentral
  t distribution with noncentrality effect · sqrt(n) / sd (Cohen 1988, "Statistical Power
  Analysis for the Behavioral Sciences", Ch. 2).
* :func:`real_floor`: the value a metric takes between two sets of REAL data of the
  sample size a model is scored at (held-out draws, resampled): what a perfect model
  would score, and how much it varies from draw to draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import scipy.stats


class PairedInterval(NamedTuple):
    """Mean of the paired differences, its standard error, the interval and n (seeds)."""

    mean: float
    se: float
    low: float
    high: float
    n: int
    sd: float

    @property
    def df(self) -> int:
        return self.n - 1


def paired_interval(a: Sequence[float], b: Sequence[float],
                    level: float = 0.95) -> PairedInterval:
    """Paired t-interval of mean(a - b) over the seeds both have (a[i], b[i] share seed i).

    With one pair the interval is (-inf, inf): one seed says nothing about the spread.
    Raises ValueError for unequal lengths, no pairs or non-finite values.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_interval needs two equal-length 1-D sequences, got "
                         f"shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired_interval: a value is not finite; a diverged run has no "
                         "difference to report")
    d = a - b
    n, mean = len(d), float(np.mean(d))
    if n < 2:
        return PairedInterval(mean, math.inf, -math.inf, math.inf, n, math.nan)
    sd = float(np.std(d, ddof=1))
    se = sd / math.sqrt(n)
    half = float(scipy.stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return PairedInterval(mean, se, mean - half, mean + half, n, sd)


def paired_power(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with n pairs against a true mean ``effect``."""
    if n < 2:
        return 0.0
    if sd == 0.0:
        return 1.0 if effect != 0.0 else alpha
    df, nc = n - 1, abs(effect) * math.sqrt(n) / sd
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    return float(scipy.stats.nct.sf(crit, df, nc) + scipy.stats.nct.cdf(-crit, df, nc))


def seeds_needed(effect: float, sd: float, *, alpha: float = 0.05, power: float = 0.8,
                 max_seeds: int = 100_000) -> int | None:
    """Smallest n >= 2 whose paired t-test reaches ``power`` at ``effect``; None above
    ``max_seeds`` (an effect of zero, or one far inside the spread)."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0.0:
        return None
    if sd == 0.0:
        return 2
    z = scipy.stats.norm.ppf(1 - alpha / 2) + scipy.stats.norm.ppf(power)
    guess = max(2, int((z * sd / abs(effect)) ** 2))  # normal approximation, a lower bound
    if guess > max_seeds:
        return None
    n = max(2, guess - 2)
    while paired_power(n, effect, sd, alpha) < power:
        n += 1
        if n > max_seeds:
            return None
    return n


class Floor(NamedTuple):
    """A metric between held-out real draws: mean, sd and the 2.5/97.5% quantiles over
    ``draws`` resamples, at ``n`` points per set."""

    mean: float
    sd: float
    low: float
    high: float
    n: int
    draws: int


def real_floor(metrics_fn: Callable[[np.ndarray], Mapping[str, float]], pool_size: int,
               n: int, draws: int, seed: int = 0) -> dict[str, Floor]:
    """Each metric of ``metrics_fn(indices)`` over ``draws`` draws of ``n`` indices into a
    pool of ``pool_size`` real points, without replacement. ``metrics_fn`` scores the real
    points it is given against held-out real data (e.g. a train-split draw against the test
    split): the floor a perfect model would reach at this sample size, and its spread.
    """
    if not 2 <= n <= pool_size:
        raise ValueError(f"real_floor: n={n} must be between 2 and the pool of {pool_size} "
                         "real points")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(int(draws)):
        for name, value in metrics_fn(rng.choice(pool_size, size=n, replace=False)).items():
            values.setdefault(name, []).append(float(value))
    out = {}
    for name, v in values.items():
        v = np.asarray(v)
        low, high = np.quantile(v, [0.025, 0.975])
        out[name] = Floor(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                          float(low), float(high), int(n), len(v))
    return out
