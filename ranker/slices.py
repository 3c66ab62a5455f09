"""Evaluation slices: the parts of a split where behaviour is thin and the text model has to carry the ranking.

One small table of named definitions (:data:`SLICES`), applied by one function (:func:`slice_rows`), so a new
slice is one line. Two kinds, because they answer different questions:

* **item slices** (``keeps="rows"``) keep, within each impression, only the candidates in the slice, and an
  impression counts only where both a click and a non-click remain: the question is "how well does a system
  order these items against each other", and AUC / nDCG need both labels to say anything;
* **user slices** (``keeps="impressions"``) keep whole impressions, treated exactly as on the whole split, so
  ``users_no_history`` and ``users_with_history`` partition the split's impressions.

The definitions hold on sampled-negative data too (every item shown often, so "shown <= 5 times before" is
empty there): ``new_items`` asks about time, ``few_clicks`` about clicks, the user slices about history.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import polars as pl

from conf import EvaluationConfig

GROUP, LABEL = "impression_id", "clicked"
NEW_ITEM = "_item_is_new"  # the column evaluate_systems adds from the new-item ids it is handed


class SliceError(ValueError):
    """A slice cannot be computed on the frame given; the message names the slice and the missing column."""


@dataclass(frozen=True)
class SliceDef:
    """A named slice: which rows (or impressions) it keeps, and the sentence the report prints for it."""

    name: str
    keeps: Literal["rows", "impressions"]
    needs: tuple[str, ...]  # columns the predicate reads
    predicate: Callable[[EvaluationConfig], pl.Expr]
    describe: Callable[[EvaluationConfig], str]


SLICES: tuple[SliceDef, ...] = (
    SliceDef(
        "new_items",
        "rows",
        (NEW_ITEM,),
        lambda cfg: pl.col(NEW_ITEM),
        lambda cfg: (
            f"items new at the training cut-off: first shown at most {cfg.new_item_days:g} day(s) before the "
            "validation start, or later (their earliest impression in the whole feature table)"
        ),
    ),
    SliceDef(
        "few_clicks",
        "rows",
        ("item_clicks_before",),
        lambda cfg: pl.col("item_clicks_before") <= cfg.cold_item_max_clicks,
        lambda cfg: (
            f"items clicked at most {cfg.cold_item_max_clicks} times before the impression (item_clicks_before)"
        ),
    ),
    SliceDef(
        "cold_items",
        "rows",
        ("item_impressions_before",),
        lambda cfg: pl.col("item_impressions_before") <= cfg.cold_item_max_impressions,
        lambda cfg: (
            f"items shown at most {cfg.cold_item_max_impressions} times before the impression "
            "(item_impressions_before; empty where every item is shown often, e.g. sampled negatives)"
        ),
    ),
    SliceDef(
        "users_no_history",
        "impressions",
        ("user_history_len",),
        lambda cfg: pl.col("user_history_len") == 0,
        lambda cfg: "impressions of users with no click before them (user_history_len == 0), whole impressions",
    ),
    SliceDef(
        "users_with_history",
        "impressions",
        ("user_history_len",),
        lambda cfg: pl.col("user_history_len") > 0,
        lambda cfg: (
            "impressions of users with at least one click before them (user_history_len > 0), whole impressions"
        ),
    ),
)
SLICE_NAMES = tuple(s.name for s in SLICES)


def new_item_ids(
    features: pl.DataFrame | pl.LazyFrame, cutoff: datetime, item: str = "item_id", ts: str = "ts"
) -> pl.Series:
    """Ids of the items whose earliest impression in ``features`` is at or after ``cutoff``.

    ``features`` must be the *whole* feature table (all splits), not the split evaluated: an item shown in
    train and again in test is not new, and only the whole table says so. With ``cutoff`` the training
    cut-off (``TimeSplit.val_start``) the same ids define the slice on val and test alike (and it is empty on
    train). Equivalently: the item's impression count taken at the cut-off is 0.
    """
    lazy = features.lazy() if isinstance(features, pl.DataFrame) else features
    missing = [c for c in (item, ts) if c not in lazy.collect_schema().names()]
    if missing:
        raise SliceError(f"new_items: column(s) {missing} not in the feature table")
    first = lazy.group_by(item).agg(pl.col(ts).min().alias("_first_ts"))
    return first.filter(pl.col("_first_ts") >= cutoff).select(item).collect()[item].sort()


def with_new_item_flag(
    frame: pl.DataFrame, new_items: Collection[str] | pl.Series, item: str = "item_id"
) -> pl.DataFrame:
    """``frame`` with the boolean column the ``new_items`` slice reads."""
    ids = new_items if isinstance(new_items, pl.Series) else pl.Series(list(new_items), dtype=frame.schema[item])
    return frame.with_columns(pl.col(item).is_in(ids.implode()).alias(NEW_ITEM))


def slice_rows(frame: pl.DataFrame, definition: SliceDef, cfg: EvaluationConfig) -> tuple[pl.DataFrame, int]:
    """The rows of ``frame`` that count in the slice (see the module docstring for the two kinds), and how
    many rows matched the slice's definition before impressions without both labels were dropped."""
    missing = [c for c in definition.needs if c not in frame.columns]
    if missing:
        raise SliceError(f"slice {definition.name!r}: column(s) {missing} not in the frame")
    keep = definition.predicate(cfg)
    if definition.keeps == "impressions":
        # user columns hold one value per impression; .all() keeps "whole impressions" true even if one did not
        kept = frame.filter(keep.all().over(GROUP))
        return kept, kept.height
    rows = frame.filter(keep)
    both = (pl.col(LABEL).max().over(GROUP) == 1) & (pl.col(LABEL).min().over(GROUP) == 0)
    return rows.filter(both), rows.height
