"""How sure a comparison is: mean, sample spread and Student-t intervals of repeated runs, and the difference
of two groups of runs with its interval and p-value (paired over shared seeds, Welch's test otherwise).

All distributions come from ``scipy.stats``; a group of one run has a mean but no spread.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """``n`` values: their mean, sample standard deviation and the Student-t interval of the mean."""

    n: int
    mean: float
    std: float | None  # None for a single value: no spread is known
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Difference:
    """``other - baseline``: mean difference, its interval, the p-value of "no difference" and the test used."""

    mean: float
    low: float
    high: float
    p_value: float
    test: Literal["paired", "welch"]
    n: int  # pairs for the paired test, runs of both groups for Welch's

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def spread(values: list[float], confidence: float = CONFIDENCE) -> Spread:
    """Mean, sample std (ddof=1) and ``mean ± t(n-1) * std / sqrt(n)``."""
    n = len(values)
    if n == 0:
        raise ValueError("spread of no values")
    mean = sum(values) / n
    if n == 1:
        return Spread(1, mean, None, None, None)
    std = statistics.stdev(values)
    half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half_width, mean + half_width)


def difference(baseline: dict[int, float], other: dict[int, float],
               confidence: float = CONFIDENCE) -> Difference | None:
    """``other - baseline`` by seed: a paired t-test over the seeds both have (two or more), else Welch's
    t-test of the two groups (two or more runs each); None when neither is possible."""
    shared = sorted(baseline.keys() & other.keys())
    if len(shared) >= 2:
        result = stats.ttest_rel([other[s] for s in shared], [baseline[s] for s in shared])
        test, n = "paired", len(shared)
        mean = sum(other[s] - baseline[s] for s in shared) / n
    elif len(baseline) >= 2 and len(other) >= 2:
        result = stats.ttest_ind(list(other.values()), list(baseline.values()), equal_var=False)
        test, n = "welch", len(baseline) + len(other)
        mean = sum(other.values()) / len(other) - sum(baseline.values()) / len(baseline)
    else:
        return None
    interval = result.confidence_interval(confidence)
    return Difference(mean, float(interval.low), float(interval.high), float(result.pvalue), test, n)
