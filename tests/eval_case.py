"""A hand-built evaluation case small enough to compute every slice metric by hand (see tests/ranker/test_evaluate.py).

Cut-off at ts 10. Train: one impression (ts 1) of the old items a, b, c. Test: three impressions with the new
items n1, n2 (first shown at ts 11) among old ones. Systems: item_ctr (the smoothed CTR column, tied on the new
items), interest_score (ranks every impression perfectly) and lightgbm_features_only (the ``fo`` column).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from conf import EvaluationConfig, load_config

CUTOFF = datetime(2024, 1, 1) + timedelta(hours=10)
COLUMNS = ["impression_id", "item_id", "clicked", "item_ctr_smoothed", "interest_score", "fo"]
COLUMNS += ["item_clicks_before", "item_impressions_before", "user_history_len", "hour", "split"]
ROWS = [
    # impression, item, y, ctr, interest, fo, clicks_before, impressions_before, user_history_len, hour, split
    ("i0", "a", 1, 0.5, 0.9, 0.5, 0, 0, 0, 1, "train"),
    ("i0", "b", 0, 0.5, 0.1, 0.5, 0, 0, 0, 1, "train"),
    ("i0", "c", 0, 0.5, 0.2, 0.5, 0, 0, 0, 1, "train"),
    ("i1", "a", 1, 0.5, 0.6, 0.5, 3, 9, 0, 11, "test"),
    ("i1", "n1", 1, 0.1, 0.9, 0.2, 0, 0, 0, 11, "test"),
    ("i1", "n2", 0, 0.1, 0.2, 0.3, 0, 0, 0, 11, "test"),
    ("i1", "b", 0, 0.3, 0.1, 0.4, 0, 9, 0, 11, "test"),
    ("i2", "n1", 0, 0.1, 0.6, 0.1, 1, 1, 3, 12, "test"),
    ("i2", "n2", 1, 0.1, 0.7, 0.2, 0, 1, 3, 12, "test"),
    ("i2", "a", 0, 0.5, 0.2, 0.6, 4, 10, 3, 12, "test"),
    ("i2", "c", 1, 0.4, 0.8, 0.3, 1, 9, 3, 12, "test"),
    ("i3", "n1", 1, 0.1, 0.5, 0.1, 1, 2, 0, 13, "test"),
    ("i3", "a", 0, 0.5, 0.3, 0.6, 4, 11, 0, 13, "test"),
    ("i3", "b", 0, 0.3, 0.4, 0.2, 0, 10, 0, 13, "test"),
]
SYSTEMS = {
    "item_ctr": pl.col("item_ctr_smoothed"),
    "interest_score": pl.col("interest_score"),
    "lightgbm_features_only": pl.col("fo"),
}


def features() -> pl.DataFrame:
    """The whole feature table of the case (train and test)."""
    frame = pl.DataFrame(ROWS, schema=COLUMNS, orient="row")
    ts = pl.datetime(2024, 1, 1) + pl.duration(hours=pl.col("hour"))
    return frame.with_columns(ts.alias("ts"), pl.col("clicked").cast(pl.Int8)).drop("hour")


def config() -> EvaluationConfig:
    return load_config(None).evaluation.model_copy(
        update={"bootstrap_samples": 200, "seed": 0, "cold_item_max_impressions": 0, "cold_item_max_clicks": 1}
    )
