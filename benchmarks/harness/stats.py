"""Statistics of repetitions: median, min, max, percentiles, ledgerflow's ratio to an anchor."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    min: float
    max: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    return Summary(statistics.median(values), min(values), max(values), len(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in 0..100 (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def advantage(ledgerflow: float, anchor: float, higher_is_better: bool) -> float | None:
    """ledgerflow's ratio to an anchor, oriented so that > 1 means ledgerflow is better.

    Throughput (higher is better): ledgerflow / anchor. Time, latency, memory (lower is better):
    anchor / ledgerflow. None when a value is zero, negative or not finite.
    """
    if not (ledgerflow > 0 and anchor > 0 and math.isfinite(ledgerflow + anchor)):
        return None
    return ledgerflow / anchor if higher_is_better else anchor / ledgerflow


def number(value: float | None) -> str:
    """Compact, fixed-width-friendly formatting: 12,345 / 123.4 / 1.23 / 0.0123."""
    if value is None or not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
