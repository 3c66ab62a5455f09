"""The snapshot's features at its own time, derived once per entity, so that a request only gathers them.

A request at the snapshot's time (the API's: no ``at``, no per-row ``ts``) over items the snapshot knows has
features that depend on the item alone (its counts, CTR, age), on the user alone (counts, history length,
hours since the last click), on the user and the item's category (affinity), or on the request (position,
size). Deriving them per request (:func:`features.behaviour.snapshot_features`) costs a state gather and a
query, ~0.3 ms for ~100 rows, most of it fixed cost; here :func:`features.behaviour.derived_rows` runs once per
snapshot over every item, every user and every (user, category) row, and a request gathers its rows.

Why the bits are the same: the derivation is row-wise (it has to be: the offline table and a request's rows
agree only so), so a derived value depends on its row's inputs alone, and each column here is evaluated on rows
that carry exactly the inputs it reads, the index's state (:class:`features.online.SnapshotIndex`) at the
snapshot's time, through the request path's own :func:`~features.behaviour.derived_rows`. Which side a column
belongs to is read from its expression's input columns (``meta.root_names``): a feature spec with a column that
reads anything else (the position, say) gets no table, and its requests take the general path.
``tests/features/test_snapshot_table.py`` holds the two paths equal bit for bit, every item and user.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from features.behaviour import TS, FeatureSpec, OnlineSnapshot, _derived, _utc_micros, derived_rows, request_positions
from features.online import UCAT, SnapshotIndex

GLOBAL = ("global_impressions_before", "global_clicks_before")
REQUEST = ("position", "impression_size")


def _constants(snapshot: OnlineSnapshot, n: int) -> list[pl.Series]:
    """The request time (the snapshot's) and the global counts of ``n`` rows, built as the request path builds them."""
    return [
        pl.Series(TS, np.full(n, _utc_micros(snapshot.as_of), dtype=np.int64)).cast(pl.Datetime("us", "UTC")),
        pl.Series(GLOBAL[0], np.full(n, snapshot.global_impressions, dtype=np.int64)),
        pl.Series(GLOBAL[1], np.full(n, snapshot.global_clicks, dtype=np.int64)),
    ]


def _sides(index: SnapshotIndex, spec: FeatureSpec) -> dict[str, str] | None:
    """Each feature column's side, ``item``, ``user``, ``pair`` (user x category) or ``request``, from what it
    reads; None when one reads inputs of two sides (or of none), and cannot be tabled by entity."""
    fixed = {TS, *GLOBAL}
    items, users = set(index.items.columns) | fixed, set(index.users.columns) | fixed
    reads = {expr.meta.output_name(): set(expr.meta.root_names()) for expr in _derived(spec)}
    sides = {}
    for column in ("category", *spec.feature_columns):
        inputs = reads.get(column, {column})
        if column in REQUEST and column not in reads:
            sides[column] = "request"
        elif inputs <= items:
            sides[column] = "item"
        elif inputs <= users:
            sides[column] = "user"
        elif inputs <= users | {UCAT}:
            sides[column] = "pair"
        else:
            return None
    return sides


@dataclass(frozen=True)
class SnapshotFeatureTable:
    """Every feature of a request at the snapshot's time, by side: one row per item of the index, per user of the
    index, and per (user, category) row of the index followed by one per user for a category without a row."""

    index: SnapshotIndex
    key: tuple[int, int, int]  # (as_of in µs, global impressions, global clicks) it was derived at
    columns: tuple[str, ...]  # the output: item_id, category, the feature columns
    sides: dict[str, str]
    items: pl.DataFrame
    users: pl.DataFrame
    pairs: pl.DataFrame

    @staticmethod
    def key_of(snapshot: OnlineSnapshot) -> tuple[int, int, int]:
        return _utc_micros(snapshot.as_of), snapshot.global_impressions, snapshot.global_clicks

    @classmethod
    def build(cls, snapshot: OnlineSnapshot, spec: FeatureSpec) -> SnapshotFeatureTable | None:
        """The table of ``snapshot`` under ``spec``; None when a feature cannot be tabled by entity (see
        :func:`_sides`)."""
        index = snapshot.index()
        sides = _sides(index, spec)
        if sides is None:
            return None
        of: dict[str, list[str]] = {}
        for column, side in sides.items():
            of.setdefault(side, []).append(column)
        n_items, n_users = index.items.height, index.users.height
        items = pl.DataFrame([*index.items.get_columns(), *_constants(snapshot, n_items)])
        users = pl.DataFrame([*index.users.get_columns(), *_constants(snapshot, n_users)])
        # A (user, category) row's user; a row of a user outside the index (a negative key, never matched) reads
        # the unknown user's row.
        owner = index.ucat_keys // (len(index.category_code) + 1)
        owner = np.where(owner < 0, n_users - 1, owner)
        no_row = np.full(n_users, -1, dtype=np.int64)
        pairs = pl.concat(
            [
                pl.DataFrame([*index.users[owner].get_columns(), *_constants(snapshot, len(owner))]),
                users,
            ]
        ).with_columns(index.category_clicks(np.concatenate([index.ucat_sorted_clicks, no_row])))
        empty = pl.DataFrame()
        return cls(
            index=index,
            key=cls.key_of(snapshot),
            columns=("item_id", "category", *spec.feature_columns),
            sides=sides,
            items=derived_rows(items, spec, of["item"]) if "item" in of else empty,
            users=derived_rows(users, spec, of["user"]) if "user" in of else empty,
            pairs=derived_rows(pairs, spec, of["pair"]) if "pair" in of else empty,
        )

    def positions(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each candidate row's row in ``items``, ``users`` and ``pairs`` (every item in the snapshot; a user outside
        it reads the unknown user's row): what :meth:`rows` gathers, and :mod:`ranker.request_matrix` too."""
        index, n = self.index, len(item_ids)
        item_at = np.fromiter(map(index.item_row.__getitem__, item_ids), np.int64, n)
        unknown_user = itertools.repeat(index.users.height - 1, n)
        user_at = np.fromiter(map(index.user_row.get, user_ids, unknown_user), np.int64, n)
        pos, hit = index.category_rows(user_at, index.item_code[item_at])
        pair_at = np.where(hit, pos, len(index.ucat_keys) + user_at)
        return item_at, user_at, pair_at

    def rows(
        self,
        request_ids: Sequence[str],
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        item_column: pl.Series | None = None,
    ) -> pl.DataFrame:
        """The feature rows of candidate rows (display order within each request; every item in the snapshot),
        requests at the snapshot's time: what :func:`features.behaviour.snapshot_features` gives them.
        ``item_column``: ``item_ids`` as a String Series already (the rows' own column, not built again)."""
        n = len(item_ids)
        item_at, user_at, pair_at = self.positions(user_ids, item_ids)
        if item_column is None or item_column.dtype != pl.String or item_column.name != "item_id":
            item_column = pl.Series("item_id", list(item_ids), dtype=pl.String)
        columns = {"item_id": item_column}
        columns.update(_gather(self.items, item_at))
        if n and user_ids.count(user_ids[0]) == n:  # one user (a request): repeat its row
            columns.update((c.name, c.new_from_index(int(user_at[0]), n)) for c in self.users.get_columns())
        else:
            columns.update(_gather(self.users, user_at))
        columns.update(_gather(self.pairs, pair_at))
        if n and request_ids.count(request_ids[0]) == n:  # one request
            columns["position"], columns["impression_size"] = _one_request(n)
        else:
            position, size = request_positions(request_ids)
            columns["position"], columns["impression_size"] = (
                pl.Series("position", position),
                pl.Series("impression_size", size),
            )
        return pl.DataFrame([columns[c] for c in self.columns])


@functools.lru_cache(maxsize=256)
def _one_request(n: int) -> tuple[pl.Series, pl.Series]:
    """``position`` and ``impression_size`` of a request of ``n`` candidates (what :func:`request_positions` gives
    one request), built once per size: polars shares a column's buffers copy-on-write, so a frame holding these
    Series cannot change them."""
    return pl.Series("position", np.arange(n, dtype=np.int32)), pl.Series("impression_size", np.full(n, n, np.int32))


def _gather(table: pl.DataFrame, at: np.ndarray) -> dict[str, pl.Series]:
    """``table``'s rows ``at`` by column name: one gather by a UInt32 Series (polars' index type). Indexing by the
    numpy array itself would first convert and check it in Python, three times the cost for ~100 rows."""
    return {c.name: c for c in table[pl.Series("", at.astype(np.uint32))].get_columns()} if table.width else {}
