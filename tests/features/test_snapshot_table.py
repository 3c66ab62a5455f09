"""The snapshot's features tabled by entity: a request at the snapshot's time gathers the very bits the general
path (state gather + derive per request) gives, and any other request takes the general path."""

from __future__ import annotations

import copy
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

import features.snapshot_table as snapshot_table
from features.behaviour import FeatureSpec, OnlineSnapshot, build_snapshot, snapshot_features
from features.snapshot_table import SnapshotFeatureTable
from features.sources import SnapshotFeatures

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)


@pytest.fixture(scope="module")
def snapshot(tiny_world) -> OnlineSnapshot:
    items, impressions = tiny_world
    return build_snapshot(impressions.lazy(), items.lazy(), SPEC)


def assert_same_bits(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.schema == want.schema
    assert got.equals(want)
    for name in want.columns:
        if want[name].dtype.is_numeric():
            assert got[name].to_numpy().tobytes() == want[name].to_numpy().tobytes(), name
        assert got[name].is_null().to_list() == want[name].is_null().to_list(), name


def general(snapshot: OnlineSnapshot, rows: pl.DataFrame, spec: FeatureSpec = SPEC) -> pl.DataFrame:
    return snapshot_features(snapshot, rows, snapshot.as_of, spec)


def test_every_user_and_item_gathers_the_general_paths_bits(snapshot) -> None:
    """Every user (and an unknown one) with every item, as one frame of requests and as single requests."""
    source = SnapshotFeatures(snapshot, SPEC)
    assert source.feature_table() is not None
    users = [*snapshot.users["user_id"].to_list(), "never-seen"]
    items = snapshot.items["item_id"].to_list()
    rows = pl.DataFrame(
        [(f"r-{u}", u, i) for u in users for i in items], schema=["request_id", "user_id", "item_id"], orient="row"
    )
    assert_same_bits(source.features(rows), general(snapshot, rows))
    rng = np.random.default_rng(0)
    for user in [*users[:20], "never-seen"]:
        for n in (1, 2, 3, 40):
            one = pl.DataFrame(
                {"request_id": ["request"] * n, "user_id": [user] * n, "item_id": rng.choice(items, n, replace=False)}
            )
            assert_same_bits(source.features(one), general(snapshot, one))


def test_a_prior_of_zero_keeps_its_nan(snapshot) -> None:
    """``ctr_prior_strength = 0``: an item never shown has a CTR of 0 / 0, NaN (not null), on both paths."""
    spec = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=0.0, history_cap=2)
    unseen = copy.copy(snapshot)
    unseen.items = snapshot.items.with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(0).otherwise(pl.col(c)).alias(c)
        for c in ("item_impressions_before", "item_clicks_before")
    )
    rows = pl.DataFrame(
        {"request_id": "r", "user_id": unseen.users["user_id"][0], "item_id": unseen.items["item_id"].to_list()}
    )
    got = SnapshotFeatures(unseen, spec).features(rows)
    assert got["item_ctr_smoothed"].is_nan().sum() == 3
    assert_same_bits(got, general(unseen, rows, spec))


def test_requests_at_another_time_or_with_new_items_take_the_general_path(snapshot) -> None:
    items = snapshot.items["item_id"].to_list()[:5]
    user = snapshot.users["user_id"][0]
    rows = pl.DataFrame({"request_id": "r", "user_id": user, "item_id": items})
    later = snapshot.as_of + timedelta(days=3)
    want = snapshot_features(snapshot, rows, later, SPEC)
    assert_same_bits(SnapshotFeatures(snapshot, SPEC).at_time(later).features(rows), want)
    assert not want["item_age_days"].equals(general(snapshot, rows)["item_age_days"])  # the time matters
    timed = rows.with_columns(pl.lit(later).dt.replace_time_zone("UTC").alias("ts"))
    assert_same_bits(SnapshotFeatures(snapshot, SPEC).features(timed), want)
    fresh = pl.concat([rows, pl.DataFrame({"request_id": "r", "user_id": user, "item_id": ["brand-new"]})])
    got = SnapshotFeatures(snapshot, SPEC).features(fresh)
    new_items = pl.DataFrame(
        {"item_id": ["brand-new"], "category": [None], "published_at": [None]},
        schema={"item_id": pl.String, "category": pl.String, "published_at": pl.Datetime("us", "UTC")},
    )
    assert_same_bits(got, snapshot_features(snapshot, fresh, snapshot.as_of, SPEC, new_items))


def test_the_table_follows_a_changed_snapshot(snapshot) -> None:
    changed = copy.copy(snapshot)
    source = SnapshotFeatures(changed, SPEC)
    rows = pl.DataFrame(
        {"request_id": "r", "user_id": changed.users["user_id"][3], "item_id": changed.items["item_id"].to_list()}
    )
    before = source.feature_table()
    changed.users = changed.users.with_columns(pl.col("user_clicks_before") + 1)
    changed.global_clicks += 7
    assert source.feature_table() is not before
    assert_same_bits(source.features(rows), general(changed, rows))
    assert source.at_time(changed.as_of).feature_table() is source.feature_table()  # copies share it


def test_a_feature_reading_two_sides_leaves_the_spec_without_a_table(snapshot, monkeypatch) -> None:
    """A derived column of item and user state together cannot be tabled by entity: no table, the general path."""
    mixed = (pl.col("item_clicks_before") * pl.col("user_clicks_before")).alias("item_ctr_smoothed")
    original = snapshot_table._derived(SPEC)
    monkeypatch.setattr(snapshot_table, "_derived", lambda spec: (mixed, *original[1:]))
    assert SnapshotFeatureTable.build(snapshot, SPEC) is None
    monkeypatch.setattr(
        snapshot_table, "_derived", lambda spec: (*original, pl.col("position").alias("user_history_len"))
    )
    assert SnapshotFeatureTable.build(snapshot, SPEC) is None
