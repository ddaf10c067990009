"""Cost-accuracy frontiers: the upper envelope of a method's points, its area, matching points.

Pure functions over `(cost, accuracy)` points; `jisi_graph.sweep` produces the points.

**Envelope.** A method evaluated at several knob values gives points (cost_i, acc_i). With a
budget c, the best it offers is `f(c) = max { acc_i : cost_i <= c }`, and `f(c) = 0` below its
cheapest point (it cannot run under that budget). f is a non-decreasing step function: the upper
envelope (staircase) of the points.

**Area.** Between `low` and `high` (the cheapest and the dearest single model's cost):
`AUC = (1 / (high - low)) * integral_low^high f(c) dc`, the mean accuracy the method offers over
budgets spread evenly on that range, in [0, 1]. The log variant integrates over log c instead
(`integral f(c) dlog c / log(high / low)`), weighing each factor of cost alike, as the log-scale
plot shows it; it needs `low > 0`. If `low == high`, both are `f(low)`.

**Match.** For a target accuracy a (a single model's), the cheapest point whose accuracy is at
least `a - tolerance`; none if no point reaches it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MATCH_TOLERANCE = 1e-9
"""Accuracies closer than this count as equal (they are means of the same recorded scores)."""


@dataclass(frozen=True)
class Point:
    """One evaluated setting of a method: its knobs, total cost (USD) and accuracy in [0, 1]."""

    cost: float
    accuracy: float
    knobs: Mapping[str, Any] = field(default_factory=dict)
    accuracy_micro: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        record: dict[str, Any] = {
            "knobs": dict(self.knobs),
            "cost_usd": self.cost,
            "accuracy_macro": self.accuracy,
        }
        if self.accuracy_micro is not None:
            record["accuracy_micro"] = self.accuracy_micro
        record.update({k: v for k, v in self.extra.items() if v is not None})
        return record


def envelope(points: Sequence[Point]) -> list[Point]:
    """The points on the upper staircase, by increasing cost: each more accurate than all cheaper.

    Of points with equal cost, the most accurate; a point no more accurate than a cheaper (or
    equally cheap) one is dropped.
    """
    ordered = sorted(points, key=lambda p: (p.cost, -p.accuracy))
    kept: list[Point] = []
    for point in ordered:
        if not kept or point.accuracy > kept[-1].accuracy:
            if kept and kept[-1].cost == point.cost:
                continue
            kept.append(point)
    return kept


def best_within(points: Sequence[Point], budget: float) -> float:
    """f(budget): the best accuracy among points costing at most `budget`, else 0."""
    return max((p.accuracy for p in points if p.cost <= budget), default=0.0)


def area_under(
    points: Sequence[Point], low: float, high: float, *, log: bool = False
) -> float | None:
    """The normalised area under the staircase f between `low` and `high` (module docstring).

    Returns None for the log variant when `low <= 0`. Raises ValueError if `high < low`.
    """
    if high < low:
        raise ValueError(f"empty cost range: high {high} < low {low}")
    if log and low <= 0:
        return None
    if high == low:
        return best_within(points, low)

    def position(cost: float) -> float:
        return math.log(cost) if log else cost

    steps = [p for p in envelope(points) if p.cost < high]
    cuts = sorted({low, high, *(p.cost for p in steps if p.cost > low)})
    total = 0.0
    for left, right in zip(cuts, cuts[1:], strict=False):
        total += best_within(steps, left) * (position(right) - position(left))
    return total / (position(high) - position(low))


def cheapest_match(
    points: Sequence[Point], accuracy: float, *, tolerance: float = MATCH_TOLERANCE
) -> Point | None:
    """The cheapest point at least as accurate as `accuracy` (ties of cost: the more accurate)."""
    reaching = [p for p in points if p.accuracy >= accuracy - tolerance]
    if not reaching:
        return None
    return min(reaching, key=lambda p: (p.cost, -p.accuracy))
