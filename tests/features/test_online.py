"""Request-time rows through the snapshot's key index equal a plain join of the snapshot tables (the oracle)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from features.behaviour import (
    TS,
    FeatureSpec,
    OnlineSnapshot,
    build_snapshot,
    derive,
    derived_rows,
    online_rows,
    request_positions,
    snapshot_features,
)

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)
NEW = pl.DataFrame(
    {
        "item_id": ["n1", "i3", "n1", "n2"],  # a repeated id (first row wins), a snapshot id (the snapshot wins)
        "category": ["music", "food", "sports", "no-such-category"],
        "published_at": [datetime(2023, 12, 1, tzinfo=UTC), None, None, None],
    }
)


@pytest.fixture(scope="module")
def snapshot(tiny_world) -> OnlineSnapshot:
    items, impressions = tiny_world
    return build_snapshot(impressions.lazy(), items.lazy(), SPEC)


def joined(
    snapshot: OnlineSnapshot, user_id: str, item_ids: list[str], ts: datetime, new_items: pl.DataFrame | None
) -> pl.DataFrame:
    """The request as a query: filter and left-join the snapshot tables, fill unknown counts with 0, derive."""
    n = len(item_ids)
    request = pl.LazyFrame({"item_id": item_ids, "position": pl.Series(range(n), dtype=pl.Int32)}).with_columns(
        pl.lit(user_id).alias("user_id"),
        pl.lit(ts).cast(pl.Datetime("us", "UTC")).alias(TS),
        pl.lit(n, dtype=pl.Int32).alias("impression_size"),
    )
    catalogue = snapshot.items.lazy().filter(pl.col("item_id").is_in(item_ids))
    if new_items is not None:
        fresh = new_items.select("item_id", "category", pl.col("published_at").cast(pl.Datetime("us", "UTC")))
        catalogue = pl.concat([catalogue, fresh.lazy()], how="diagonal_relaxed").unique("item_id", keep="first")
    counts = [c for c in snapshot.items.columns if c.startswith("item_") and c != "item_id"]
    frame = (
        request.join(catalogue, on="item_id", how="left", maintain_order="left")
        .join(snapshot.users.lazy(), on="user_id", how="left", maintain_order="left")
        .join(snapshot.user_categories.lazy(), on=["user_id", "category"], how="left", maintain_order="left")
        .with_columns(
            *[pl.col(c).fill_null(0) for c in [*counts, "user_impressions_before", "user_clicks_before"]],
            pl.lit(snapshot.global_impressions).alias("global_impressions_before"),
            pl.lit(snapshot.global_clicks).alias("global_clicks_before"),
        )
    )
    return derive(frame, SPEC).select("item_id", "category", *SPEC.feature_columns).collect()


CASES = {
    "known user, known items": ("u0", ["i3", "i50", "i7", "i119", "i0"], 0, None),
    "user without clicks": ("u102", ["i1", "i2", "i3"], 0, None),
    "user with one category": ("u187", ["i4", "i5", "i6", "i8"], -30, None),
    "unknown user and item": ("nobody", ["i9", "unknown", "i10"], 2, None),
    "new items": ("u1", ["n2", "i3", "nope", "n1", "i11"], 0, NEW),
    "one candidate": ("u13", ["i12"], -1, None),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_online_rows_equal_a_join_of_the_snapshot(snapshot, case) -> None:
    user, items, hours, new_items = CASES[case]
    at = snapshot.as_of + timedelta(hours=hours)
    got = online_rows(snapshot, user, items, at, SPEC, new_items)
    want = joined(snapshot, user, items, at, new_items)
    assert got.schema == want.schema
    assert got.equals(want), (got, want)


@pytest.mark.parametrize(
    "at",
    [datetime(2024, 1, 5, 12), datetime(2024, 1, 5, 12, tzinfo=timezone(timedelta(hours=2)))],
    ids=["naive", "+02:00"],
)
def test_request_time_reads_like_polars_casts_it(snapshot, at) -> None:
    """A naive time is UTC; an aware one is converted: as ``pl.lit(ts).cast(Datetime("us", "UTC"))`` does."""
    items = ["i1", "i2"]
    assert online_rows(snapshot, "u0", items, at, SPEC).equals(joined(snapshot, "u0", items, at, None))


def test_new_items_keep_their_attributes_and_get_zero_counts(snapshot) -> None:
    rows = online_rows(snapshot, "u1", ["n1", "i3", "n2"], snapshot.as_of, SPEC, NEW)
    own = snapshot.items.filter(pl.col("item_id") == "i3")["category"].item()
    assert rows["category"].to_list() == ["music", own, "no-such-category"]
    assert rows["item_impressions_before"].to_list()[::2] == [0, 0]
    assert rows["item_age_days"][0] > 0 and rows["item_age_days"][2] is None


def test_the_index_follows_a_replaced_table(snapshot) -> None:
    """``build_features`` replaces ``snapshot.users`` after building the snapshot: the index must not go stale."""
    copy = OnlineSnapshot(
        snapshot.as_of,
        snapshot.users,
        snapshot.items,
        snapshot.user_categories,
        snapshot.global_impressions,
        snapshot.global_clicks,
    )
    before = online_rows(copy, "u0", ["i1"], copy.as_of, SPEC)["user_clicks_before"].item()
    copy.users = copy.users.with_columns(pl.col("user_clicks_before") + 1)
    after = online_rows(copy, "u0", ["i1"], copy.as_of, SPEC)["user_clicks_before"].item()
    assert after == before + 1


@pytest.mark.parametrize("interleave", [False, True], ids=["contiguous", "interleaved"])
def test_snapshot_features_of_many_requests_equal_online_rows_request_by_request(snapshot, interleave) -> None:
    """The batched gather (one frame, every case at once) gives each request exactly its own online_rows."""
    rows = [(case, user, item) for case, (user, items, _hours, _new) in CASES.items() for item in items]
    if interleave:  # requests need not be contiguous: row order within a request is its display order
        rows = rows[::2] + rows[1::2]
    requests = pl.DataFrame(rows, schema=["request_id", "user_id", "item_id"], orient="row")
    got = snapshot_features(snapshot, requests, snapshot.as_of, SPEC, NEW)
    for case, (user, _items, _hours, _new) in CASES.items():
        mine = requests.with_row_index("_r").filter(pl.col("request_id") == case)
        want = online_rows(snapshot, user, mine["item_id"].to_list(), snapshot.as_of, SPEC, NEW)
        part = got[mine["_r"].to_list()]
        assert part.schema == want.schema
        assert part.equals(want), (case, part, want)


@pytest.mark.parametrize("n", [1, 2, 3, 100, 1000])
def test_derived_rows_equal_the_lazy_derive_bit_for_bit(n: int) -> None:
    """The eager select of the request path against derive as a lazy query on the default engine (the offline
    build's), on random state with nulls and times microseconds apart over years: every column, every bit."""
    rng = np.random.default_rng(n)

    def times(null_share: float) -> pl.Series:
        micros = rng.integers(1_500_000_000_000_000, 1_700_000_000_000_000, n)
        return (
            pl.Series(micros).cast(pl.Datetime("us", "UTC")).scatter(np.flatnonzero(rng.random(n) < null_share), None)
        )

    def counts(high: int, null_share: float = 0.0) -> pl.Series:
        return pl.Series(rng.integers(0, high, n), dtype=pl.Int64).scatter(
            np.flatnonzero(rng.random(n) < null_share), None
        )

    impressions = counts(10**6)
    frame = pl.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n)],
            "category": rng.choice(["a", "b", None], n).tolist(),
            "published_at": times(0.2),
            "item_impressions_before": impressions,
            "item_clicks_before": (impressions * rng.random(n)).cast(pl.Int64),
            "item_clicks_1d": counts(50),
            "item_clicks_7d": counts(500),
            "user_impressions_before": counts(10**4),
            "user_clicks_before": counts(30).scatter(np.flatnonzero(rng.random(n) < 0.3), 0),
            "user_last_click_ts": times(0.3),
            "user_category_clicks_before": counts(30, 0.3),
            "position": pl.Series(np.arange(n), dtype=pl.Int32),
            "ts": times(0.0),
            "impression_size": pl.Series(np.full(n, n), dtype=pl.Int32),
            "global_impressions_before": np.full(n, int(rng.integers(10**5, 10**8))),
            "global_clicks_before": np.full(n, int(rng.integers(10**3, 10**5))),
        }
    )
    columns = ("item_id", "category", *SPEC.feature_columns)
    want = derive(frame.lazy(), SPEC).select(columns).collect()
    got = derived_rows(frame, SPEC, columns)
    assert got.schema == want.schema
    for name in columns:
        assert got[name].equals(want[name]), name
        if got[name].dtype.is_numeric():
            assert got[name].to_numpy().tobytes() == want[name].to_numpy().tobytes(), name


def test_request_positions_count_within_each_request() -> None:
    position, size = request_positions(["a", "b", "a", "a", "c", "b"])
    assert position.tolist() == [0, 0, 1, 2, 0, 1]
    assert size.tolist() == [3, 2, 3, 3, 1, 2]
    assert request_positions(["x", "x"])[0].tolist() == [0, 1]


def test_snapshot_features_name_a_missing_column(snapshot) -> None:
    with pytest.raises(ValueError, match="column 'request_id' missing"):
        snapshot_features(snapshot, pl.DataFrame({"user_id": ["u0"], "item_id": ["i1"]}), snapshot.as_of, SPEC)
