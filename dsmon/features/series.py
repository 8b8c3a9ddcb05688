"""Numbers over time: counter rates and least-squares line fits, the one implementation.

A rate comes from two readings of a counter: when a reading is missing or the counter went
backwards (a reset), there is no rate -- None, never negative and never zero. A slope always
comes with its fit quality (r^2), so a caller can tell sustained growth from a noisy figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_FIT_POINTS = 3     # two points always lie on a line: a fit needs a third to mean anything


@dataclass(frozen=True)
class LineFit:
    slope: float           # value units per second
    intercept: float       # the fitted value at t = 0
    r_squared: float       # share of the values' variance the line explains, 0..1
    points: int
    span_s: float          # time covered by the points


def fit_line(points: Sequence[tuple[float, float]],
             min_points: int = MIN_FIT_POINTS) -> LineFit | None:
    """Least-squares line through (t, value) points; None with fewer than `min_points`
    points or no spread in time. Values that do not vary at all lie exactly on the (flat)
    line, r^2 = 1."""
    n = len(points)
    if n < max(min_points, 2):
        return None
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return None
    covariance = sum((t - mean_t) * (v - mean_v) for t, v in points)
    slope = covariance / var_t
    var_v = sum((v - mean_v) ** 2 for _, v in points)
    r_squared = 1.0 if var_v == 0 else min(1.0, covariance * covariance / (var_t * var_v))
    return LineFit(slope, mean_v - slope * mean_t, r_squared, n,
                   max(t for t, _ in points) - min(t for t, _ in points))


def linear_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """The slope of `fit_line(points)`, for callers that need only the slope."""
    fit = fit_line(points)
    return fit.slope if fit is not None else None


def rate(first: float | None, last: float | None, seconds: float) -> float | None:
    """Increase of a counter per second between two readings `seconds` apart."""
    if first is None or last is None or seconds <= 0 or last < first:
        return None
    return (last - first) / seconds


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def stddev(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
