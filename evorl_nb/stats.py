"""Small statistics shared by experiments and re-scoring: means with 95% intervals.

>>> round(ci95([1.0, 2.0, 3.0])[1], 3)
2.484
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ci95", "paired_ci95"]

# two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond 30)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def ci95(values) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval of the mean; NaN for one value)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    df = len(x) - 1
    t = _T95.get(df) or next((v for k, v in sorted(_T95.items()) if k >= df), 1.96)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


def paired_ci95(a, b) -> tuple[float, float]:
    """Mean of ``a - b`` over paired samples (the same seeds) and its 95% half-width: the
    difference is outside the noise when ``|mean| > half-width``."""
    return ci95(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
