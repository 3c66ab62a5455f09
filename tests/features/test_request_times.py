"""Snapshot features at each row's own request time equal one call per request time, to the bit.

Why it matters: the freshness evaluation replays every test impression against a stale snapshot at that
impression's own time; if the per-row path rounded a single float differently from the one-time path
(the API's), the evaluation would not be measuring what serving computes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features.behaviour import FeatureSpec, OnlineSnapshot, build_snapshot, online_rows, snapshot_features
from features.sources import SnapshotFeatures

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)
# request: (user, candidates, hours after the snapshot's as_of; None: no ts on the rows, the frame's time)
REQUESTS = {
    "r0": ("u0", ["i3", "i50", "i7", "i119", "i0"], -200),
    "r1": ("u102", ["i1", "i2", "i3"], 5),
    "r2": ("u187", ["i4", "i5", "i6", "i8"], -30),
    "r3": ("nobody", ["i9", "unknown", "i10"], 48),
    "r4": ("u0", ["i12"], -1),  # the same user again, at another time, one candidate
    "r5": ("u13", ["i11", "i3"], None),
}
FRAME_HOURS = 7  # the frame's one request time: what a row without its own ts is read at


@pytest.fixture(scope="module")
def snapshot(tiny_world) -> OnlineSnapshot:
    items, impressions = tiny_world
    return build_snapshot(impressions.lazy(), items.lazy(), SPEC)


def _at(snapshot: OnlineSnapshot, hours: int | None) -> datetime:
    return snapshot.as_of + timedelta(hours=FRAME_HOURS if hours is None else hours)


def _rows(snapshot: OnlineSnapshot, zone: str | None = "UTC") -> pl.DataFrame:
    """Every request in one frame, interleaved (requests need not be contiguous), each row with its own ts
    (in time zone ``zone``; ``None``: naive, its wall clock in UTC)."""
    rows = []
    for rid, (user, items, hours) in REQUESTS.items():
        at = None if hours is None else _at(snapshot, hours)
        rows += [(rid, user, item, at) for item in items]
    rows = rows[::2] + rows[1::2]
    schema = {"request_id": pl.String, "user_id": pl.String, "item_id": pl.String, "ts": pl.Datetime("us", "UTC")}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    ts = pl.col("ts").dt.replace_time_zone(None) if zone is None else pl.col("ts").dt.convert_time_zone(zone)
    return frame.with_columns(ts)


def assert_bitwise_equal(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Same schema, same nulls, same values; float columns compared as their bit patterns (not ``==``)."""
    assert got.schema == want.schema
    for name in want.columns:
        a, b = got[name], want[name]
        assert a.is_null().to_list() == b.is_null().to_list(), name
        if a.dtype.is_float():
            bits_a = a.fill_null(0.0).to_numpy().view(np.uint64)
            bits_b = b.fill_null(0.0).to_numpy().view(np.uint64)
            assert np.array_equal(bits_a, bits_b), name
        else:
            assert a.equals(b), name


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", None], ids=["utc", "new-york", "naive"])
def test_per_row_request_times_equal_the_one_time_path_request_by_request(snapshot, zone: str | None) -> None:
    rows = _rows(snapshot, zone)
    got = snapshot_features(snapshot, rows, _at(snapshot, None), SPEC)
    assert got.height == rows.height
    for rid, (user, _items, hours) in REQUESTS.items():
        mine = rows.with_row_index("_r").filter(pl.col("request_id") == rid)
        at = _at(snapshot, hours)
        one_time = snapshot_features(snapshot, mine.drop("_r", "ts"), at, SPEC)  # the frame-wide time path
        assert_bitwise_equal(got[mine["_r"].to_list()], one_time)
        # and the API's own path for one request
        assert_bitwise_equal(one_time, online_rows(snapshot, user, mine["item_id"].to_list(), at, SPEC))


def test_request_times_really_move_the_time_features(snapshot) -> None:
    """The per-row times are not ignored: u0's two requests, 199 hours apart, age every item by that much."""
    rows = _rows(snapshot)
    got = snapshot_features(snapshot, rows, _at(snapshot, None), SPEC).with_columns(rows["request_id"])
    r0 = got.filter(pl.col("request_id") == "r0")["hours_since_last_click"].unique().to_list()
    r4 = got.filter(pl.col("request_id") == "r4")["hours_since_last_click"].unique().to_list()
    assert len(r0) == len(r4) == 1 and r0[0] is not None
    assert r4[0] - r0[0] == pytest.approx(199.0, abs=1e-9)


def test_the_snapshot_source_uses_the_rows_times(snapshot) -> None:
    """``SnapshotFeatures.features`` passes the rows' ts through: equal to ``at_time`` request by request."""
    rows = _rows(snapshot)
    source = SnapshotFeatures(snapshot, SPEC, at=_at(snapshot, None))
    got = source.features(rows)
    for rid, (_user, _items, hours) in REQUESTS.items():
        mine = rows.with_row_index("_r").filter(pl.col("request_id") == rid)
        want = source.at_time(_at(snapshot, hours)).features(mine.drop("_r", "ts"))
        assert_bitwise_equal(got[mine["_r"].to_list()], want)
    # without a ts column nothing changed: every row at the source's one time
    plain = source.features(rows.drop("ts"))
    assert_bitwise_equal(plain, snapshot_features(snapshot, rows.drop("ts"), _at(snapshot, None), SPEC))


def test_a_ts_column_that_is_not_a_datetime_is_named(snapshot) -> None:
    rows = pl.DataFrame({"request_id": ["r"], "user_id": ["u0"], "item_id": ["i1"], "ts": ["2024-01-01"]})
    with pytest.raises(ValueError, match="column 'ts' has type String"):
        snapshot_features(snapshot, rows, snapshot.as_of, SPEC)
