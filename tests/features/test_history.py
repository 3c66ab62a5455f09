"""The derived history table against a brute-force recomputation."""

from __future__ import annotations

import polars as pl

from features.behaviour import FeatureSpec, build_offline
from features.history import impression_histories

CAP = 4


def test_histories_are_the_last_clicks_strictly_before_ts(tiny_world) -> None:
    items, impressions = tiny_world
    spec = FeatureSpec(click_windows_days=(1,), ctr_prior_strength=5.0, history_cap=CAP)
    features = build_offline(impressions.lazy(), items.lazy(), spec).collect()
    hist = impression_histories(impressions.lazy(), features.lazy(), CAP).collect()
    assert hist["impression_id"].n_unique() == impressions["impression_id"].n_unique() == hist.height
    clicks = impressions.filter(pl.col("clicked") == 1).sort("ts", "impression_id", "position")
    checked_nonempty = 0
    for row in hist.sample(200, seed=1).iter_rows(named=True):
        before = clicks.filter((pl.col("user_id") == row["user_id"]) & (pl.col("ts") < row["ts"]))
        want = before["item_id"].to_list()[-CAP:]
        assert row["history"] == want, row
        checked_nonempty += bool(want)
    assert checked_nonempty >= 20
