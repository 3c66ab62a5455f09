"""The promotion gate's rule: does the evidence say the challenger is better than the champion?

The gate compares two ranker versions on the same test impressions and gets the paired 95% bootstrap interval
of the challenger's gain on ``mlflow.promotion_metric``. Its rule, in this order:

1. the interval's upper end is below ``mlflow.promotion_margin``: **refused** (not better by the margin even at
   the optimistic end);
2. its lower end is at least the margin: **promoted** (better beyond the noise, by the margin);
3. it spans the margin and is wider than ``mlflow.promotion_max_interval``: **not enough evidence** (too few
   impressions to tell the two apart); the champion stays, and the decision names the impressions and the
   interval (the replay judges such a challenger again on more days);
4. it spans the margin and is narrow: **refused** (the evidence is there, and it says: not better by the margin).

A point gain is never enough on its own: on 23 test impressions two of six challengers that differed from the
champion only by their ranker seed had point gains above the old margin (+0.0058 and +0.0043 nDCG@10) with
intervals reaching below zero. ``bench/promotion_gate.py`` measures the old rule and this one side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranker.compare import Interval

PROMOTED, REFUSED, INSUFFICIENT = "promoted", "refused", "not enough evidence"


@dataclass(frozen=True)
class GateRule:
    """The rule's parameters (``mlflow.promotion_*``)."""

    metric: str
    margin: float
    max_interval: float

    def describe(self) -> str:
        return (
            f"promote when the lower end of the paired 95% interval of the {self.metric} gain is >= {self.margin:g}, "
            f"deciding only on intervals at most {self.max_interval:g} wide"
        )

    def judge(self, gain: Interval, impressions: int) -> tuple[str, str]:
        """The verdict (:data:`PROMOTED`, :data:`REFUSED` or :data:`INSUFFICIENT`) and a one-line reason that
        names the figures it rests on."""
        figures = (
            f"{self.metric} gain {gain.mean:+.4f} (95% CI {gain.low:+.4f}, {gain.high:+.4f}) "
            f"on {impressions} test impressions"
        )
        width = gain.high - gain.low
        if not (np.isfinite(gain.low) and np.isfinite(gain.high)):  # no impression where the metric is defined
            return INSUFFICIENT, f"not enough evidence: {impressions} impressions, no interval; {figures}"
        if gain.high < self.margin:
            return REFUSED, f"refused: {figures}: upper end < margin {self.margin:g}"
        if gain.low >= self.margin:
            return PROMOTED, f"{figures}: lower end >= margin {self.margin:g}"
        if width > self.max_interval:
            return INSUFFICIENT, (
                f"not enough evidence: {impressions} impressions, interval [{gain.low:+.4f}, {gain.high:+.4f}] "
                f"({width:.4f} wide > {self.max_interval:g}); {figures}"
            )
        return REFUSED, f"refused: {figures}: lower end < margin {self.margin:g}"
