"""Global time split: the last ``test_fraction`` of the time range is test, the ``val_fraction`` before it
validation, the rest training. Cut-offs are instants, so every row of an impression lands in one split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

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


def split_from_range(lo: datetime, hi: datetime, val_fraction: float, test_fraction: float) -> TimeSplit:
    """Cut the observed time range [lo, hi] by fractions of its length."""
    span = hi - lo
    test_start = hi - span * test_fraction
    return TimeSplit(val_start=test_start - span * val_fraction, test_start=test_start)


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


def write_split(data_dir: str | Path, split: TimeSplit) -> None:
    """Move the folder's cut-offs (continual training: the training window follows the data).

    Every reader recomputes a row's split from its ``ts`` and these cut-offs, so nothing else is rewritten.
    """
    from features.io import write_json_atomic

    if split.val_start > split.test_start:
        raise ValueError(f"split: val_start {split.val_start} is after test_start {split.test_start}")
    write_json_atomic(split.to_json(), Path(data_dir) / SPLIT_FILE)
