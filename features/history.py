"""The derived ``history`` table: for each impression, the user's clicked items strictly before its ``ts``,
newest last, capped at ``data.history_cap``.

It reuses the point-in-time count ``user_clicks_before`` (a feature already computed strictly before
``ts``): the history is the first ``user_clicks_before`` entries of the user's time-ordered clicks,
keeping the last ``cap`` of them. One count, one definition of "before", no second implementation.
"""

from __future__ import annotations

import polars as pl


def user_click_lists(impressions: pl.LazyFrame) -> pl.LazyFrame:
    """Every user's clicked item ids in time order (ties: impression, then position): ``user_id, clicks``."""
    return (
        impressions.filter(pl.col("clicked") == 1)
        .sort("ts", "impression_id", "position")
        .group_by("user_id")
        .agg(pl.col("item_id").alias("clicks"))
    )


def histories(impressions: pl.LazyFrame, counts: pl.LazyFrame, cap: int) -> pl.LazyFrame:
    """``counts`` rows (any keys + ``user_id``, ``user_clicks_before``) with a ``history: list[str]`` column.

    Offline, ``counts`` is one row per impression from the feature table; for the online snapshot it is
    the snapshot's users (their count after the last event).
    """
    clicks = user_click_lists(impressions)
    c = pl.col("user_clicks_before")
    start = pl.max_horizontal(c - cap, pl.lit(0))
    return (
        counts.join(clicks, on="user_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("clicks")
            .fill_null(pl.lit([], dtype=pl.List(pl.String)))
            .list.slice(start, c - start)
            .alias("history")
        )
        .drop("clicks")
    )


def impression_histories(impressions: pl.LazyFrame, features: pl.LazyFrame, cap: int) -> pl.LazyFrame:
    """``impression_id, user_id, ts, history`` for every impression of the feature table."""
    counts = features.select("impression_id", "user_id", "ts", "user_clicks_before").unique(
        "impression_id", keep="first", maintain_order=True
    )
    return histories(impressions, counts, cap).drop("user_clicks_before")
