"""MIND-format folders (``news.tsv`` + ``behaviors.tsv``, Microsoft News Dataset layout).

``news.tsv``: news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities.
``behaviors.tsv``: impression_id, user_id, time (``M/D/YYYY h:mm:ss AM``), history (space-separated ids),
impressions (space-separated ``id-1`` / ``id-0``).

The history column holds clicks from before the logged period, with no time. They become one
synthetic impression per user, ``hist-<user_id>``, all clicked, timed one second before the first logged
impression: point-in-time features and the user history then see them as the earliest clicks.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from features.adapters.base import SourceTables
from features.schema import UTC_DATETIME, DataValidationError, read_user_file

NEWS_COLUMNS = ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities"]
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
HISTORY_PREFIX = "hist-"


def _read_tsv(path: Path, names: list[str], required: int) -> pl.DataFrame:
    frame = read_user_file(
        path,
        lambda f: pl.read_csv(
            f, separator="\t", has_header=False, quote_char=None, infer_schema=False, truncate_ragged_lines=True
        ),
        "tab-separated",
        "a MIND folder has news.tsv and behaviors.tsv",
    )
    if frame.width < required:
        raise DataValidationError(
            path, names[frame.width], f"missing column (file has {frame.width} columns, MIND needs {required})"
        )
    frame = frame.select(frame.columns[: min(frame.width, len(names))])
    return frame.rename(dict(zip(frame.columns, names, strict=False)))


def _require_ids(frame: pl.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    for name in columns:
        bad = frame.select((pl.col(name).is_null() | (pl.col(name).str.strip_chars() == "")).sum()).item()
        if bad:
            raise DataValidationError(path, name, f"{bad} null or empty id(s)")


def read_news(path: Path) -> pl.DataFrame:
    """Canonical items from ``news.tsv`` (title and abstract are the text; no publication time in MIND)."""
    news = _read_tsv(path, NEWS_COLUMNS, required=4)
    _require_ids(news, path, ("news_id",))
    dupes = news.filter(pl.col("news_id").is_duplicated())
    if dupes.height:
        raise DataValidationError(
            path, "news_id", f"{dupes.height} rows share a duplicate id, e.g. {dupes['news_id'][0]!r}"
        )
    body = pl.col("abstract") if "abstract" in news.columns else pl.lit("")
    return news.select(
        pl.col("news_id").alias("item_id"),
        pl.col("title").fill_null(""),
        body.fill_null("").alias("body"),
        pl.col("category").fill_null("unknown"),
        pl.col("subcategory").fill_null(""),
        pl.lit(None, dtype=UTC_DATETIME).alias("published_at"),
    )


def read_behaviors(path: Path) -> pl.DataFrame:
    """Canonical impressions from ``behaviors.tsv`` plus one ``hist-<user>`` impression per user history."""
    raw = _read_tsv(path, BEHAVIOR_COLUMNS, required=5)
    _require_ids(raw, path, ("impression_id", "user_id"))
    raw = raw.with_columns(pl.col("time").str.strptime(pl.Datetime("us"), TIME_FORMAT, strict=False).alias("ts"))
    bad_time = raw.filter(pl.col("ts").is_null())
    if bad_time.height:
        raise DataValidationError(
            path,
            "time",
            f"{bad_time.height} unparsable time(s), e.g. {bad_time['time'][0]!r} (expected M/D/YYYY h:mm:ss AM)",
        )
    raw = raw.with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    dupes = raw.filter(pl.col("impression_id").is_duplicated())
    if dupes.height:
        raise DataValidationError(
            path, "impression_id", f"{dupes.height} rows share a duplicate id, e.g. {dupes['impression_id'][0]!r}"
        )
    shown = (
        raw.select("impression_id", "user_id", "ts", pl.col("impressions").fill_null("").str.split(" ").alias("tok"))
        .with_columns(pl.int_ranges(0, pl.col("tok").list.len()).alias("position"))
        .explode("tok", "position")
        .filter(pl.col("tok") != "")
    )
    parts = pl.col("tok").str.splitn("-", 2)
    shown = shown.with_columns(
        parts.struct.field("field_0").alias("item_id"), parts.struct.field("field_1").alias("lab")
    )
    bad = shown.filter(~pl.col("lab").is_in(["0", "1"]) | pl.col("lab").is_null())
    if bad.height:
        raise DataValidationError(
            path, "impressions", f"{bad.height} label(s) outside 0/1, e.g. {bad['tok'][0]!r} (expected id-0 or id-1)"
        )
    logged = shown.select(
        "impression_id",
        "user_id",
        "ts",
        "item_id",
        pl.col("position").cast(pl.Int32),
        pl.col("lab").cast(pl.Int8).alias("clicked"),
    )
    return pl.concat([_history_impressions(raw), logged])


def _history_impressions(raw: pl.DataFrame) -> pl.DataFrame:
    first_ts = raw["ts"].min() - timedelta(seconds=1)
    hist = (
        raw.sort("ts", "impression_id")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("history").first())
        .with_columns(pl.col("history").fill_null("").str.split(" ").alias("item_id"))
        .explode("item_id")
        .filter(pl.col("item_id") != "")
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
    )
    return hist.select(
        (pl.lit(HISTORY_PREFIX) + pl.col("user_id")).alias("impression_id"),
        "user_id",
        pl.lit(first_ts).cast(UTC_DATETIME).alias("ts"),
        "item_id",
        pl.int_range(pl.len()).over("user_id").cast(pl.Int32).alias("position"),
        pl.lit(1, dtype=pl.Int8).alias("clicked"),
    )


def load_mind(folder: Path) -> SourceTables:
    """Read any MIND-format folder as canonical tables."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataValidationError(folder, None, "MIND folder not found")
    news_path, behaviors_path = folder / "news.tsv", folder / "behaviors.tsv"
    items = read_news(news_path)
    impressions = read_behaviors(behaviors_path)
    return SourceTables(
        items=items,
        impression_chunks=[impressions],
        items_file=news_path,
        impressions_file=behaviors_path,
        info={"source": str(folder)},
    )
