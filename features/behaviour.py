"""Behavioural features, point-in-time: offline for every impression row, online as a snapshot.

Two layers, each written once:

* **state** (:mod:`features.state`): counts of earlier events per item, user, (user, category) and
  globally, taken strictly before each row's time;
* **derivation** (:func:`derive`): the model features computed from state plus the request itself
  (its time, its size, the candidate's position) — smoothed CTR, affinity, recency, age.

Offline, every impression row asks for its own state; for the snapshot, one probe row per user / item
asks for the state just after the last event (same function), and at request time :func:`online_rows`
joins that state by key and runs :func:`derive` on the request. Same state code, same derivation
code: serving and training cannot disagree on what a feature means.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from conf import Config
from features.online import USER_STATE, SnapshotIndex
from features.state import EVENT, T, check_composite_fits, encode_time, entity_state, key_code

TS = "ts"


@dataclass(frozen=True)
class FeatureSpec:
    """The feature definition: saved with every model trained on it (changing it changes the features)."""

    click_windows_days: tuple[int, ...]
    ctr_prior_strength: float
    history_cap: int

    @classmethod
    def from_config(cls, cfg: Config) -> FeatureSpec:
        return cls(
            click_windows_days=tuple(cfg.features.click_windows_days),
            ctr_prior_strength=cfg.features.ctr_prior_strength,
            history_cap=cfg.data.history_cap,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "click_windows_days": list(self.click_windows_days),
            "ctr_prior_strength": self.ctr_prior_strength,
            "history_cap": self.history_cap,
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> FeatureSpec:
        return cls(
            click_windows_days=tuple(int(d) for d in raw["click_windows_days"]),
            ctr_prior_strength=float(raw["ctr_prior_strength"]),
            history_cap=int(raw["history_cap"]),
        )

    @property
    def feature_columns(self) -> list[str]:
        """The model inputs produced here, in a fixed order."""
        return [
            "item_impressions_before",
            "item_clicks_before",
            "item_ctr_smoothed",
            *[f"item_clicks_{d}d" for d in self.click_windows_days],
            "item_age_days",
            "user_impressions_before",
            "user_clicks_before",
            "user_history_len",
            "hours_since_last_click",
            "user_category_affinity",
            "impression_size",
            "position",
        ]


# ---- derivation ---------------------------------------------------------------------------------------


def derive(frame: pl.LazyFrame, spec: FeatureSpec) -> pl.LazyFrame:
    """Model features from state columns plus ``ts``, ``published_at``, ``impression_size``, ``position``.

    The CTR prior is the global click rate before ``ts`` (Laplace-smoothed), so nothing from the
    future leaks in through the prior either.
    """
    return frame.with_columns(*_derived(spec))


@functools.cache
def _derived(spec: FeatureSpec) -> tuple[pl.Expr, ...]:
    """:func:`derive`'s expressions, built once per spec (building them is a fair part of a request's time)."""
    global_ctr = (pl.col("global_clicks_before") + 1) / (pl.col("global_impressions_before") + 2)
    m = spec.ctr_prior_strength
    clicks = pl.col("user_clicks_before")
    return (
        ((pl.col("item_clicks_before") + m * global_ctr) / (pl.col("item_impressions_before") + m)).alias(
            "item_ctr_smoothed"
        ),
        # Times a reciprocal, not a division: polars divides a column by a float literal as a multiplication by
        # its reciprocal, except in a one-row column, where it divides (1 ulp apart). Written as the
        # multiplication, a one-candidate request gets the same bits as the offline table and a batch.
        ((pl.col(TS) - pl.col("published_at")).dt.total_microseconds() * (1 / 86_400e6)).alias("item_age_days"),
        pl.min_horizontal(clicks, pl.lit(spec.history_cap)).alias("user_history_len"),
        ((pl.col(TS) - pl.col("user_last_click_ts")).dt.total_microseconds() * (1 / 3_600e6)).alias(
            "hours_since_last_click"
        ),
        pl.when(clicks > 0)
        .then(pl.col("user_category_clicks_before").fill_null(0) / clicks)
        .otherwise(None)
        .alias("user_category_affinity"),
    )


def derived_rows(frame: pl.DataFrame, spec: FeatureSpec, columns: Sequence[str]) -> pl.DataFrame:
    """:func:`derive` of a frame in memory, then its ``columns``: one eager ``select`` of derive's own expressions.

    For request-sized frames: a lazy query on the default engine plans with every optimisation and starts the
    streaming engine, ~0.4 ms for ~100 rows, where this costs ~0.15 ms. The same expressions evaluated element
    by element, so the same bits (``tests/features/test_online.py`` holds the two equal on frames of 1 to
    1,000 rows with nulls; the divisions by a float literal that once rounded apart are multiplications now).
    """
    return frame.select(_derived_selection(spec, tuple(columns)))


@functools.cache
def _derived_selection(spec: FeatureSpec, columns: tuple[str, ...]) -> tuple[pl.Expr, ...]:
    """``columns`` as expressions: derive's own for the columns it makes, the input column for the others."""
    derived = {expr.meta.output_name(): expr for expr in _derived(spec)}
    return tuple(derived.get(c, pl.col(c)) for c in columns)


# ---- offline features and the snapshot, in one pass ---------------------------------------------------

PROBE = "\x00probe"  # id of the dummy side of a probe row; cannot collide with a real (validated) id


@dataclass
class OnlineSnapshot:
    """The latest state of every user and item, just after the last event; what serving reads."""

    as_of: datetime
    users: pl.DataFrame  # user_id, user_impressions_before, user_clicks_before, user_last_click_ts[, history]
    items: pl.DataFrame  # item_id, category, published_at, item_* counts
    user_categories: pl.DataFrame  # user_id, category, user_category_clicks_before
    global_impressions: int
    global_clicks: int
    # Lineage, read back from ``online_meta.json`` (None for a snapshot built in memory): what it was built
    # with and from, and its content id (a hash of its tables), so a ranker is never paired with a snapshot
    # of another feature definition or another data set.
    feature_spec: FeatureSpec | None = None
    data_fingerprint: str | None = None
    snapshot_id: str | None = None
    _index: SnapshotIndex | None = field(default=None, init=False, repr=False, compare=False)

    def index(self) -> SnapshotIndex:
        """The tables indexed by key for request-time lookups: built on first use, rebuilt if a table is replaced."""
        index = self._index
        if index is None or not index.indexes(self.items, self.users, self.user_categories):
            index = self._index = SnapshotIndex.build(self.items, self.users, self.user_categories)
        return index

    def meta(self) -> dict[str, object]:
        return {
            "as_of": self.as_of.isoformat(),
            "global_impressions_before": self.global_impressions,
            "global_clicks_before": self.global_clicks,
            "users": self.users.height,
            "items": self.items.height,
        }


def time_ordered_events(impressions: pl.LazyFrame, items: pl.LazyFrame) -> pl.DataFrame:
    """Impression rows with item attributes, in time order (a stable sort: input order breaks ties)."""
    return (
        impressions.join(
            items.select("item_id", "category", "published_at"), on="item_id", how="left", maintain_order="left"
        )
        .sort(TS, maintain_order=True)
        .with_columns(encode_time(TS), pl.lit(1, dtype=pl.Int8).alias(EVENT))
        .collect()
    )


def _probes(events: pl.DataFrame, catalogue: pl.DataFrame, as_of_t: int) -> pl.DataFrame:
    """Probe rows just after the last event: one per catalogue item, one per seen (user, category).

    A probe does not count as an event (``_e = 0``); its dummy side (user of an item probe, item of a
    user probe) is a key no event has, so it disturbs nothing. Every (user, category) probe also
    answers the state of its user.
    """
    common = [
        pl.lit(as_of_t, dtype=pl.Int64).alias(T),
        pl.lit(0, dtype=pl.Int8).alias("clicked"),
        pl.lit(0, dtype=pl.Int8).alias(EVENT),
    ]
    item_probes = catalogue.select("item_id", "category", pl.lit(PROBE).alias("user_id"), *common)
    # Distinct (user, category) pairs via their integer code: far cheaper than hashing two string columns.
    first = events.select(key_code("user_id", "category", alias="_k")).with_row_index("_r").unique("_k")
    pair_probes = (
        events[first["_r"].sort()].select("user_id", "category").with_columns(pl.lit(PROBE).alias("item_id"), *common)
    )
    return pl.concat([item_probes, pair_probes.select(item_probes.columns)])


def _state_columns(rows: pl.DataFrame, spec: FeatureSpec, bounds: tuple[int, int], n_items: int) -> pl.DataFrame:
    """Item, user, (user, category) and global state of every row, computed one entity after another
    (sequential collects: on small machines parallel sorts only fight over the cores)."""
    if spec.click_windows_days:
        check_composite_fits(n_items, bounds)
    coded = (
        rows.lazy()
        .with_columns(
            key_code("item_id", alias="_item"),
            key_code("user_id", alias="_user"),
            key_code("user_id", "category", alias="_ucat"),
        )
        .select("_item", "_user", "_ucat", T, "clicked", EVENT)
        .collect()
    )
    states = [
        entity_state(coded.lazy(), "_item", "item", spec.click_windows_days, time_bounds=bounds),
        entity_state(coded.lazy(), "_user", "user", last_click=True),
        entity_state(coded.lazy(), "_ucat", "user_category").select("user_category_clicks_before"),
        entity_state(coded.lazy(), None, "global"),
    ]
    frame = pl.concat([state.collect() for state in states], how="horizontal")
    return frame.with_columns(
        pl.from_epoch("user_last_click_t", time_unit="us").dt.replace_time_zone("UTC").alias("user_last_click_ts")
    ).drop("user_last_click_t")


def offline_frame(
    events: pl.DataFrame, state: pl.DataFrame, spec: FeatureSpec, split_expr: pl.Expr | None
) -> pl.LazyFrame:
    """Offline feature rows from time-ordered events and their state, row for row (the full build and an
    append, :mod:`features.incremental`, both finish here: one derivation of the stored rows)."""
    frame = pl.concat([events, state], how="horizontal").lazy()
    frame = derive(frame.with_columns(pl.len().over("impression_id").cast(pl.Int32).alias("impression_size")), spec)
    keys = ["impression_id", "item_id", "user_id", TS, "clicked"]
    if split_expr is not None:
        frame = frame.with_columns(split_expr)
        keys.append("split")
    return frame.select(*keys, *spec.feature_columns)


def _snapshot(probes: pl.DataFrame, state: pl.DataFrame, catalogue: pl.DataFrame, as_of_t: int) -> OnlineSnapshot:
    answered = pl.concat([probes.select("item_id", "user_id", "category"), state], how="horizontal")
    item_rows = answered.filter(pl.col("user_id") == PROBE)
    pair_rows = answered.filter(pl.col("user_id") != PROBE)
    item_cols = [c for c in state.columns if c.startswith("item_")]
    first = answered.row(0, named=True)
    return OnlineSnapshot(
        as_of=datetime.fromtimestamp(0, tz=UTC) + timedelta(microseconds=as_of_t),
        items=catalogue.join(item_rows.select("item_id", *item_cols), on="item_id", how="left").sort("item_id"),
        users=pair_rows.select("user_id", *USER_STATE).unique("user_id").sort("user_id"),
        user_categories=pair_rows.select("user_id", "category", "user_category_clicks_before").sort(
            "user_id", "category"
        ),
        global_impressions=int(first["global_impressions_before"]),
        global_clicks=int(first["global_clicks_before"]),
    )


def build_offline_and_snapshot(
    impressions: pl.LazyFrame, items: pl.LazyFrame, spec: FeatureSpec, split_expr: pl.Expr | None = None
) -> tuple[pl.LazyFrame, OnlineSnapshot]:
    """Offline features of every impression row and the online snapshot, from one state computation.

    The events and the snapshot's probe rows go through :func:`features.state.entity_state` together,
    so the snapshot is, by construction, the state an impression at the snapshot time would see.
    """
    events = time_ordered_events(impressions, items)
    catalogue = items.select("item_id", "category", "published_at").collect()
    t_min, t_max = int(events[T].min()), int(events[T].max())
    probes = _probes(events, catalogue, t_max + 1)
    rows = pl.concat([events.select(probes.columns), probes])
    state = _state_columns(rows, spec, (t_min, t_max + 1), catalogue.height)
    offline = offline_frame(events, state.slice(0, events.height), spec, split_expr)
    snapshot = _snapshot(probes, state.slice(events.height), catalogue, t_max + 1)
    return offline, snapshot


def build_offline(
    impressions: pl.LazyFrame, items: pl.LazyFrame, spec: FeatureSpec, split_expr: pl.Expr | None = None
) -> pl.LazyFrame:
    """One row per impression row (time order): keys, label, split and every feature from events before ``ts``."""
    events = time_ordered_events(impressions, items)
    state = _state_columns(events, spec, (int(events[T].min()), int(events[T].max())), _height(items))
    return offline_frame(events, state, spec, split_expr)


def build_snapshot(impressions: pl.LazyFrame, items: pl.LazyFrame, spec: FeatureSpec) -> OnlineSnapshot:
    """State of every user and item one microsecond after the last event (see build_offline_and_snapshot)."""
    return build_offline_and_snapshot(impressions, items, spec)[1]


def _height(frame: pl.LazyFrame) -> int:
    return frame.select(pl.len()).collect().item()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc_micros(ts: datetime) -> int:
    """``ts`` as µs since the epoch, a naive time read as UTC (as polars casts it to ``Datetime("us", "UTC")``).

    Plain integer arithmetic: converting a zoned Python datetime through polars costs ~0.1 ms a request.
    """
    aware = ts if ts.utcoffset() is not None else ts.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def online_rows(
    snapshot: OnlineSnapshot,
    user_id: str,
    item_ids: Sequence[str],
    ts: datetime,
    spec: FeatureSpec,
    new_items: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Feature rows for one request (candidates in the given order) from the snapshot, via :func:`derive`.

    Unknown users and items get zero counts (cold start); ``new_items`` (item_id, category, published_at)
    describes candidates the snapshot does not know. The position is the candidate's index.
    Returns ``item_id``, ``category`` and the feature columns.

    The snapshot's state is gathered through its key index (:meth:`OnlineSnapshot.index`), not joined:
    one request is ~100 rows, and per-request query planning and joins cost more than the rows.
    """
    n = len(item_ids)
    request = [
        pl.Series("position", np.arange(n, dtype=np.int32)),
        pl.Series(TS, np.full(n, _utc_micros(ts), dtype=np.int64)).cast(pl.Datetime("us", "UTC")),
        pl.Series("impression_size", np.full(n, n, dtype=np.int32)),
        pl.Series("global_impressions_before", np.full(n, snapshot.global_impressions, dtype=np.int64)),
        pl.Series("global_clicks_before", np.full(n, snapshot.global_clicks, dtype=np.int64)),
    ]
    frame = snapshot.index().state(user_id, item_ids, new_items).hstack(request)
    # Lazy on the default engine, like the offline build (and the join this replaced): an eager
    # ``with_columns`` rounds ``x / 86_400e6`` differently for some rows (1 ulp), a lazy one does not.
    return derive(frame.lazy(), spec).select("item_id", "category", *spec.feature_columns).collect()


def group_codes(keys: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(each row's group index, the distinct keys in order of first appearance): rows grouped by key."""
    if keys and keys.count(keys[0]) == len(keys):  # one group (a request): no dict
        return np.zeros(len(keys), dtype=np.int64), [keys[0]]
    codes: dict[str, int] = {}
    code = np.fromiter((codes.setdefault(k, len(codes)) for k in keys), np.int64, len(keys))
    return code, list(codes)


def request_positions(request_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(position of each row within its request, size of each row's request), requests given by row.

    A request's rows need not be contiguous; their order in the frame is their display order.
    """
    code, distinct = group_codes(request_ids)
    if len(distinct) <= 1:  # the API's case: one request
        n = len(request_ids)
        return np.arange(n, dtype=np.int32), np.full(n, n, dtype=np.int32)
    sizes = np.bincount(code)
    order = np.argsort(code, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(len(code), dtype=np.int64)
    position[order] = np.arange(len(code)) - np.repeat(starts, sizes)
    return position.astype(np.int32), sizes[code].astype(np.int32)


def request_times(requests: pl.DataFrame, ts: datetime) -> pl.Series:
    """Each row's request time as ``Datetime("us", "UTC")``: its own ``ts`` when the frame has one, else ``ts``.

    Why per row: evaluating the served path replays test impressions against a snapshot, each at its own
    time, so item age and hours since the last click must be measured from that impression, not from one
    instant for the whole frame. A naive ``ts`` column is read as UTC (as :func:`_utc_micros` reads a naive
    ``ts``); a null falls back to ``ts``. Built from integer microseconds either way, so a row gets the same
    bits as the one-time path would give it.
    """
    fallback = _utc_micros(ts)
    if TS not in requests.columns:
        micros = np.full(requests.height, fallback, dtype=np.int64)
    else:
        column = requests.get_column(TS)
        if not isinstance(column.dtype, pl.Datetime):
            raise ValueError(f"requests: column {TS!r} has type {column.dtype} (expected a datetime, UTC)")
        # The physical value of a zoned datetime is UTC already; of a naive one, its wall clock read as UTC.
        micros = column.dt.cast_time_unit("us").to_physical().fill_null(fallback).to_numpy().astype(np.int64)
    return pl.Series(TS, micros).cast(pl.Datetime("us", "UTC"))


def snapshot_features(
    snapshot: OnlineSnapshot,
    requests: pl.DataFrame,
    ts: datetime,
    spec: FeatureSpec,
    new_items: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Feature rows of many requests at once from the snapshot: :func:`online_rows` over a whole frame.

    ``requests`` has ``request_id, user_id, item_id`` (one row per candidate, display order within each
    request) and optionally ``ts``, each row's own request time (:func:`request_times`; without it every
    row is a request at ``ts``). Returns ``item_id``, ``category`` and the feature columns, row for row. One
    state gather and one :func:`derive` over the frame, whatever the number of requests; tests hold it equal
    to :func:`online_rows` request by request, and the per-row times equal to one call per request time.
    """
    missing = [c for c in ("request_id", "user_id", "item_id") if c not in requests.columns]
    if missing:
        raise ValueError(f"requests: column {missing[0]!r} missing (needs request_id, user_id, item_id)")
    n = requests.height
    position, size = request_positions(requests["request_id"].to_list())
    state = snapshot.index().state_rows(requests["user_id"].to_list(), requests["item_id"].to_list(), new_items)
    request = [
        pl.Series("position", position),
        request_times(requests, ts),
        pl.Series("impression_size", size),
        pl.Series("global_impressions_before", np.full(n, snapshot.global_impressions, dtype=np.int64)),
        pl.Series("global_clicks_before", np.full(n, snapshot.global_clicks, dtype=np.int64)),
    ]
    return derived_rows(state.hstack(request), spec, ("item_id", "category", *spec.feature_columns))
