"""Global time split: the last ``test_fraction`` of the time range is test, the ``val_fraction`` before it
validation, the rest training. Cut-offs are instants, so every row of an impression lands in one split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from features.io import write_json_atomic

SPLIT_FILE = "split.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TimeSplit:
    """The two cut-offs. train: ts < val_start; val: val_start <= ts < test_start; test: ts >= test_start."""

    val_start: datetime
    test_start: datetime

    def expr(self, ts: str = "ts") -> pl.Expr:
        """A polars expression naming the split of each row from its ``ts`` column."""
        return (
            pl.when(pl.col(ts) < self.val_start)
            .then(pl.lit("train"))
            .when(pl.col(ts) < self.test_start)
            .then(pl.lit("val"))
            .otherwise(pl.lit("test"))
            .alias("split")
        )

    def to_json(self) -> dict[str, str]:
        return {"val_start": self.val_start.isoformat(), "test_start": self.test_start.isoformat()}


def compute_split(impressions: pl.LazyFrame, val_fraction: float, test_fraction: float) -> TimeSplit:
    """Cut the observed time range [min ts, max ts] by fractions of its length."""
    lo, hi = impressions.select(pl.col("ts").min(), pl.col("ts").max()).collect().row(0)
    span = hi - lo
    test_start = hi - span * test_fraction
    val_start = test_start - span * val_fraction
    return TimeSplit(val_start=val_start, test_start=test_start)


def write_split(split: TimeSplit, data_dir: str | Path) -> Path:
    return write_json_atomic(split.to_json(), Path(data_dir) / SPLIT_FILE)


def read_split(data_dir: str | Path) -> TimeSplit:
    path = Path(data_dir) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found (run `recrank data prepare` first)")
    raw = json.loads(path.read_text())
    try:
        return TimeSplit(
            val_start=datetime.fromisoformat(raw["val_start"]), test_start=datetime.fromisoformat(raw["test_start"])
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: bad split file: {exc}") from None
