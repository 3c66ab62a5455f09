"""The online snapshot is the offline state as of just after the last event, by the same code."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from features.behaviour import FeatureSpec, build_offline, build_snapshot, online_rows

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)


@pytest.fixture(scope="module")
def snapshot(tiny_world):
    items, impressions = tiny_world
    return build_snapshot(impressions.lazy(), items.lazy(), SPEC)


def test_snapshot_totals_match_the_log(tiny_world, snapshot) -> None:
    items, impressions = tiny_world
    assert snapshot.as_of == impressions["ts"].max() + timedelta(microseconds=1)
    assert snapshot.global_impressions == impressions.height
    assert snapshot.global_clicks == impressions["clicked"].sum()
    per_item = impressions.group_by("item_id").agg(pl.len().alias("n"), pl.col("clicked").sum().alias("c"))
    got = snapshot.items.join(per_item, on="item_id", how="left").with_columns(
        pl.col("n").fill_null(0), pl.col("c").fill_null(0)
    )
    assert got.height == items.height  # every catalogue item, shown or not
    assert (got["item_impressions_before"] == got["n"]).all()
    assert (got["item_clicks_before"] == got["c"]).all()
    last_day = impressions.filter(pl.col("ts") >= snapshot.as_of - timedelta(days=1))
    per_item_1d = last_day.group_by("item_id").agg(pl.col("clicked").sum().alias("c1"))
    check = snapshot.items.join(per_item_1d, on="item_id", how="left").with_columns(pl.col("c1").fill_null(0))
    assert (check["item_clicks_1d"] == check["c1"]).all()
    per_user = (
        impressions.filter(pl.col("clicked") == 1)
        .group_by("user_id")
        .agg(pl.len().alias("c"), pl.col("ts").max().alias("last"))
    )
    users = snapshot.users.join(per_user, on="user_id", how="left")
    assert (users["user_clicks_before"] == users["c"].fill_null(0)).all()
    seen = users.filter(pl.col("last").is_not_null())
    assert (seen["user_last_click_ts"] == seen["last"]).all()


def test_online_rows_equal_offline_rows_for_a_request_at_snapshot_time(tiny_world, snapshot) -> None:
    """A request served from the snapshot gets exactly the features the offline build gives the same
    request appended to the log as a new impression at that time (that is the train/serve contract)."""
    items, impressions = tiny_world
    user = impressions["user_id"][0]
    candidates = ["i3", "i50", "i7", "i119", "i0"]
    at = snapshot.as_of
    request = pl.DataFrame(
        {
            "impression_id": ["probe"] * len(candidates),
            "user_id": [user] * len(candidates),
            "ts": pl.Series([at] * len(candidates)).cast(impressions.schema["ts"]),
            "item_id": candidates,
            "position": pl.Series(range(len(candidates)), dtype=pl.Int32),
            "clicked": pl.Series([0] * len(candidates), dtype=pl.Int8),
        }
    )
    offline = (
        build_offline(pl.concat([impressions, request]).lazy(), items.lazy(), SPEC)
        .filter(pl.col("impression_id") == "probe")
        .collect()
    )
    online = online_rows(snapshot, user, candidates, at, SPEC)
    cols = SPEC.feature_columns
    off = offline.select("item_id", *cols).sort("item_id")
    on = online.select("item_id", *cols).sort("item_id").cast(off.schema)
    assert on.equals(off), (on, off)


def test_unknown_user_and_item_get_cold_start_rows(snapshot) -> None:
    rows = online_rows(snapshot, "never-seen-user", ["never-seen-item", "i1"], snapshot.as_of, SPEC)
    cold = rows.row(0, named=True)
    assert cold["item_impressions_before"] == 0
    assert cold["user_clicks_before"] == 0
    assert cold["hours_since_last_click"] is None
    assert cold["item_ctr_smoothed"] == pytest.approx((snapshot.global_clicks + 1) / (snapshot.global_impressions + 2))
    assert rows["impression_size"].to_list() == [2, 2]
    assert rows["position"].to_list() == [0, 1]
