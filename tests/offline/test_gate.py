"""The promotion gate's rule on hand-made intervals: evidence, not a point gain, moves the champion."""

from __future__ import annotations

import math

import pytest

from offline.gate import INSUFFICIENT, PROMOTED, REFUSED, GateRule
from ranker.compare import Interval

RULE = GateRule(metric="ndcg_at_10", margin=0.002, max_interval=0.05)


@pytest.mark.parametrize(
    ("gain", "verdict"),
    [
        (Interval(0.0245, 0.0200, 0.0280), PROMOTED),  # a combined ranker over features-only on 9,032 impressions
        (Interval(0.0050, 0.0020, 0.0080), PROMOTED),  # the lower end exactly at the margin
        (Interval(0.0058, -0.0016, 0.0155), REFUSED),  # a same-config challenger the old rule promoted (23 imps)
        (Interval(0.0043, -0.0029, 0.0140), REFUSED),  # the other one
        (Interval(0.0030, 0.0019, 0.0041), REFUSED),  # better, but not by the margin beyond the noise
        (Interval(-0.0300, -0.0500, -0.0100), REFUSED),
        (Interval(-0.3000, -0.3600, -0.2500), REFUSED),  # wide, but worse even at its upper end
        (Interval(0.0000, -0.0400, 0.0019), REFUSED),  # wide, the upper end just below the margin
        (Interval(0.0400, 0.0100, 0.0700), PROMOTED),  # wide, but better by the margin even at its lower end
        (Interval(0.0100, -0.0200, 0.0400), INSUFFICIENT),  # 0.06 wide across the margin: too few impressions
        (Interval(math.nan, math.nan, math.nan), INSUFFICIENT),  # no impression where the metric is defined
    ],
)
def test_the_rule_decides_on_the_lower_end_and_the_width(gain: Interval, verdict: str) -> None:
    got, reason = RULE.judge(gain, impressions=23)
    assert got == verdict
    assert "23" in reason and f"{gain.low:+.4f}" in reason and "ndcg_at_10" in reason


def test_not_enough_evidence_names_the_impressions_and_the_interval() -> None:
    verdict, reason = RULE.judge(Interval(0.01, -0.02, 0.04), impressions=12)
    assert verdict == INSUFFICIENT
    assert reason.startswith("not enough evidence: 12 impressions, interval [-0.0200, +0.0400] (0.0600 wide > 0.05)")


def test_the_rule_describes_itself() -> None:
    assert RULE.describe() == (
        "promote when the lower end of the paired 95% interval of the ndcg_at_10 gain is >= 0.002, "
        "deciding only on intervals at most 0.05 wide"
    )
