"""The guard that ships a candidate model only when it beats its reference beyond the noise (hand-built cases)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from conf import GuardConfig
from ranker.guard import GuardDecision, decide


def _frame(impressions: int, size: int = 4, clicked_first: bool = True) -> pl.DataFrame:
    """``impressions`` impressions of ``size`` rows each; the first row of each is the click."""
    return pl.DataFrame(
        {
            "impression_id": [f"i{k}" for k in range(impressions) for _ in range(size)],
            "item_id": [f"x{j}" for _ in range(impressions) for j in range(size)],
            "clicked": [int(j == 0 and clicked_first) for _ in range(impressions) for j in range(size)],
        }
    )


def test_a_perfect_candidate_beats_a_reversed_reference_on_every_resample() -> None:
    frame = _frame(20)
    clicked = frame["clicked"].to_numpy().astype(float)
    out = decide(
        frame, clicked, -clicked, GuardConfig(metric="auc", min_gain=0.0), 200, 0, ("adapted", "probe"), "selection"
    )
    # every impression: AUC 1 against 0, so every resample's gain is exactly 1
    assert (out.candidate_value, out.reference_value) == (1.0, 0.0)
    assert (out.gain.mean, out.gain.low, out.gain.high) == (1.0, 1.0, 1.0)
    assert out.accepted and out.chosen == "adapted" and out.impressions == 20
    assert "lower end above +0.0000" in out.reason and "20 selection impressions" in out.reason


def test_equal_scores_keep_the_reference() -> None:
    """A gain of exactly zero is not a gain: the reference stays (a tie never ships the candidate)."""
    frame = _frame(10)
    scores = np.random.default_rng(0).random(frame.height)
    out = decide(frame, scores, scores, GuardConfig(metric="ndcg_at_10", min_gain=0.0), 200, 0)
    assert (out.gain.mean, out.gain.low, out.gain.high) == (0.0, 0.0, 0.0)
    assert not out.accepted and out.chosen == "reference"
    # a margin below zero lets a candidate through that is no worse beyond the noise
    assert decide(frame, scores, scores, GuardConfig(metric="ndcg_at_10", min_gain=-0.01), 200, 0).accepted


def test_a_point_gain_inside_the_noise_keeps_the_reference() -> None:
    """The reference ranks each click 2nd of 4 (AUC 2/3 everywhere); the candidate ranks it 1st on 14
    impressions and last on 6 (AUC 0.7 on average): a positive point gain that resampling the 20 impressions
    erases, so the reference is kept."""
    frame = _frame(20)
    reference = np.where(frame["clicked"].to_numpy() == 1, 0.5, 0.0) + np.tile([0.0, 1.0, 0.0, 0.0], 20)
    good = np.tile([2.0, 1.0, 0.0, 0.0], 14)  # click first: AUC 1
    bad = np.tile([-1.0, 1.0, 0.0, 0.5], 6)  # click last: AUC 0
    out = decide(frame, np.concatenate([good, bad]), reference, GuardConfig(metric="auc", min_gain=0.0), 500, 0)
    assert out.reference_value == pytest.approx(2 / 3)
    assert out.candidate_value == pytest.approx(0.7)
    assert out.gain.mean == pytest.approx(0.7 - 2 / 3) and out.gain.low < 0 < out.gain.high
    assert not out.accepted and out.chosen == "reference" and "lower end not above" in out.reason


def test_impressions_without_a_click_do_not_count() -> None:
    frame = pl.concat([_frame(6), _frame(4, clicked_first=False).with_columns(pl.col("impression_id") + "n")])
    clicked = frame["clicked"].to_numpy().astype(float)
    out = decide(frame, clicked, -clicked, GuardConfig(metric="auc", min_gain=0.0), 100, 0)
    assert out.impressions == 6 and out.gain.mean == 1.0


def test_a_decision_round_trips_through_json() -> None:
    frame = _frame(8)
    clicked = frame["clicked"].to_numpy().astype(float)
    out = decide(
        frame, clicked, -clicked, GuardConfig(metric="auc", min_gain=0.0), 100, 0, ("ranker", "features"), "val"
    )
    assert GuardDecision.from_json(out.to_json()) == out
    assert out.to_json()["chosen"] == "ranker" and out.to_json()["on"] == "val"
