"""Where a frame of candidate rows gets its behavioural features: two sources behind one interface.

* :class:`SnapshotFeatures`: the online snapshot (the API, batch scoring, the freshness evaluation): every
  row's state is the user's and item's state just after the snapshot's last event, at the request time (one
  time for the frame, or each row's own ``ts``).
* :class:`PointInTimeFeatures`: the offline feature table (evaluation, promotion): each impression row's
  own features, computed strictly before its impression, so nothing from after it can leak in.

Both answer the same two questions for a frame of rows keyed by ``request_id, user_id, item_id``: the
feature rows (row for row) and each request's click history (for the text model's user tower). What comes
after the features (interest score, its rank, the model matrix, the booster) is one code path
(:meth:`ranker.pipeline.RankingPipeline.score_rows`), whichever source fed it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np
import polars as pl

from features.behaviour import TS, FeatureSpec, OnlineSnapshot, _utc_micros, group_codes, snapshot_features
from features.snapshot_table import SnapshotFeatureTable

REQUEST_KEYS = ("request_id", "user_id", "item_id")


class FeatureSourceError(ValueError):
    """A frame of rows the source cannot give features for; the message names the column or the row."""


class FeatureSource(Protocol):
    def features(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``item_id``, ``category`` and the feature columns of ``rows``, row for row."""
        ...

    def histories(self, rows: pl.DataFrame) -> tuple[list[list[str]], np.ndarray]:
        """(one click history per group of rows, oldest first; each row's group index)."""
        ...


def _check_keys(rows: pl.DataFrame, keys: tuple[str, ...]) -> list[str]:
    """``rows``' columns; a FeatureSourceError naming the first of ``keys`` missing."""
    columns = rows.columns
    missing = [c for c in keys if c not in columns]
    if missing:
        raise FeatureSourceError(f"rows: column {missing[0]!r} missing (needs {', '.join(keys)})")
    return columns


@dataclass
class SnapshotFeatures:
    """Features from the online snapshot at time ``at`` (default: the snapshot's ``as_of``).

    Rows that carry a ``ts`` column are each a request at their own ``ts`` (``at`` then only fills a null):
    how evaluation replays test impressions against a stale snapshot (:mod:`ranker.freshness`). Items the
    snapshot does not know take their ``category`` from the rows (column ``category``, when
    present) and get zero counts; users it does not know get zero counts and an empty history.
    """

    snapshot: OnlineSnapshot
    spec: FeatureSpec
    at: datetime | None = None
    _history: dict[str, list[str]] = field(init=False, repr=False)
    # [(index, key, table)]: the snapshot's feature table and what it was built from (see feature_table); one
    # list shared with at_time copies, so a copy per request does not build its own
    _table: list[tuple[object, tuple[int, int, int], SnapshotFeatureTable | None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._table = []
        users = self.snapshot.users
        self._history = (
            dict(zip(users["user_id"].to_list(), users["history"].to_list(), strict=True))
            if "history" in users.columns
            else {}
        )

    def history(self, user_id: str) -> list[str]:
        return self._history.get(user_id) or []

    def shares_histories(self, other: object) -> bool:
        """True when ``other`` is a snapshot source reading this one's history table (``at_time`` copies do): the
        same user id has the same history in both, whatever their request times."""
        return type(other) is SnapshotFeatures and other._history is self._history

    def at_time(self, at: datetime) -> SnapshotFeatures:
        """The same source read at request time ``at`` (the history table is shared, not rebuilt); rows with
        their own ``ts`` still use it."""
        other = copy.copy(self)
        other.at = at
        return other

    def features(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Rows at the snapshot's own time over items it knows (the API's requests) gather the snapshot's
        features, derived once per entity (:class:`features.snapshot_table.SnapshotFeatureTable`); any other
        rows (another time, per-row times, new items) are derived from the gathered state here. The same bits
        either way."""
        columns = _check_keys(rows, REQUEST_KEYS)
        item = rows.get_column("item_id")
        items = item.to_list()
        new_items = self._new_items(rows, items)
        if new_items is None and items and TS not in columns:
            table = self.feature_table()
            if table is not None and (self.at is None or table.key[0] == _utc_micros(self.at)):
                ids = [rows.get_column(c).to_list() for c in ("request_id", "user_id")]
                return table.rows(*ids, items, item)
        return snapshot_features(self.snapshot, rows, self.at or self.snapshot.as_of, self.spec, new_items)

    def feature_table(self) -> SnapshotFeatureTable | None:
        """The snapshot's features at its own time under this spec (None when they cannot be tabled by entity),
        built on first use and again whenever the snapshot's tables, time or global counts change."""
        index, key = self.snapshot.index(), SnapshotFeatureTable.key_of(self.snapshot)
        built = self._table[0] if self._table else None
        if built is None or built[0] is not index or built[1] != key:
            built = (index, key, SnapshotFeatureTable.build(self.snapshot, self.spec))
            self._table[:] = [built]
        return built[2]

    def _new_items(self, rows: pl.DataFrame, items: list[str]) -> pl.DataFrame | None:
        """Attributes of the rows' items (``items``: their ids) the snapshot does not know (None when every item
        is known)."""
        known = self.snapshot.index().item_row
        if known.keys() >= set(items):
            return None
        unknown = [i for i, item in enumerate(items) if item not in known]
        category = rows["category"][unknown] if "category" in rows.columns else pl.Series([None] * len(unknown))
        return pl.DataFrame(
            {
                "item_id": rows["item_id"][unknown],
                "category": category.cast(pl.String),
                "published_at": pl.Series([None] * len(unknown), dtype=pl.Datetime("us", "UTC")),
            }
        )

    def histories(self, rows: pl.DataFrame) -> tuple[list[list[str]], np.ndarray]:
        """One history per distinct user (a user's requests share one user-tower pass)."""
        _check_keys(rows, REQUEST_KEYS)
        group, users = group_codes(rows["user_id"].to_list())
        return [self.history(u) for u in users], group


@dataclass
class PointInTimeFeatures:
    """Features of impression rows from the offline table: ``request_id`` is the ``impression_id``.

    ``table``: the feature rows (``impression_id``, ``item_id``, ``category`` and the feature columns, as
    :func:`ranker.frame.ranking_frame` builds them); ``histories``: ``impression_id, history`` (the clicks
    strictly before each impression, :func:`features.history.impression_histories`).
    """

    table: pl.DataFrame
    histories_table: pl.DataFrame
    spec: FeatureSpec

    def features(self, rows: pl.DataFrame) -> pl.DataFrame:
        _check_keys(rows, REQUEST_KEYS)
        keyed = rows.select(pl.col("request_id").alias("impression_id"), "item_id").with_row_index("_row")
        columns = ["item_id", "category", *self.spec.feature_columns]
        table = self.table
        if "category" not in table.columns:  # a frame built for a ranker without categorical inputs
            table = table.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
        missing = [c for c in ("impression_id", *columns) if c not in table.columns]
        if missing:
            raise FeatureSourceError(f"point-in-time features: column {missing[0]!r} missing")
        joined = keyed.join(
            table.select("impression_id", *columns), on=["impression_id", "item_id"], how="left", coalesce=True
        )
        if joined.height != rows.height:
            raise FeatureSourceError("point-in-time features: an (impression_id, item_id) pair has several rows")
        joined = joined.sort("_row")
        absent = joined.filter(pl.col("item_impressions_before").is_null())
        if absent.height:
            first = absent.row(0, named=True)
            raise FeatureSourceError(
                f"point-in-time features: no row for impression {first['impression_id']!r}, "
                f"item {first['item_id']!r} ({absent.height} row(s) without features)"
            )
        return joined.select(columns)

    def histories(self, rows: pl.DataFrame) -> tuple[list[list[str]], np.ndarray]:
        """One history per impression: its user's clicks strictly before it."""
        _check_keys(rows, REQUEST_KEYS)
        group, codes = group_codes(rows["request_id"].to_list())
        found = pl.DataFrame({"impression_id": codes}, schema={"impression_id": pl.String}).join(
            self.histories_table.select("impression_id", "history"), on="impression_id", how="left"
        )
        lookup = dict(zip(found["impression_id"].to_list(), found["history"].to_list(), strict=True))
        lost = [r for r in codes if lookup.get(r) is None]
        if lost:
            raise FeatureSourceError(f"point-in-time histories: no history for impression {lost[0]!r}")
        return [lookup[r] for r in codes], group
