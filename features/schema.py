"""The canonical tables (DESIGN.md §2) and their validation.

Every adapter writes ``items`` and ``impressions`` with exactly these columns and types; everything
downstream reads them through :func:`read_items` / :func:`read_impressions`, which check the schema.
Errors name the file, the column and the problem, so a bad input is fixed in one look.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import polars as pl

T = TypeVar("T")

UTC_DATETIME = pl.Datetime("us", "UTC")

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "body": pl.String(),
    "category": pl.String(),
    "subcategory": pl.String(),
    "published_at": UTC_DATETIME,
}

IMPRESSIONS_SCHEMA: dict[str, pl.DataType] = {
    "impression_id": pl.String(),
    "user_id": pl.String(),
    "ts": UTC_DATETIME,
    "item_id": pl.String(),
    "position": pl.Int32(),
    "clicked": pl.Int8(),
}

ITEMS_FILE = "items.parquet"
IMPRESSIONS_FILE = "impressions.parquet"

# Columns that must never be null (``published_at`` may be; ``body`` and ``subcategory`` may be empty).
_NOT_NULL = {
    "items": ("item_id", "title", "body", "category", "subcategory"),
    "impressions": ("impression_id", "user_id", "ts", "item_id", "position", "clicked"),
}
_KEYS = {"items": ("item_id",), "impressions": ("impression_id", "item_id")}


class DataValidationError(ValueError):
    """A canonical or source table is wrong. ``str(err)`` is one line: ``file: column: problem``."""

    def __init__(self, file: str | Path, column: str | None, problem: str) -> None:
        self.file, self.column, self.problem = str(file), column, problem
        where = f"{self.file}: column {column!r}" if column else self.file
        super().__init__(f"{where}: {problem}")


def read_user_file(path: str | Path, read: Callable[[Path], T], kind: str = "parquet", hint: str = "") -> T:
    """``read(path)`` for a file a user handed in, every failure as one :class:`DataValidationError` line naming
    the file: missing (``hint`` says what was expected), or corrupt, truncated or not ``kind`` at all (polars
    raises several error types, and a long traceback, for those)."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(path, None, "file not found" + (f" ({hint})" if hint else ""))
    try:
        return read(path)
    except DataValidationError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise DataValidationError(
            path, None, f"not a readable {kind} file ({type(exc).__name__}{': ' + detail if detail else ''})"
        ) from None


def _check_columns(schema: dict[str, pl.DataType], actual: dict[str, pl.DataType], file: str) -> None:
    missing = [c for c in schema if c not in actual]
    if missing:
        raise DataValidationError(file, missing[0], f"missing column (expected columns: {', '.join(schema)})")
    for name, want in schema.items():
        got = actual[name]
        if got != want:
            raise DataValidationError(file, name, f"wrong type {got} (expected {want})")


def item_text(parts: Sequence[str | None]) -> str:
    """An item's text for the text model: its non-empty fields, stripped, joined with ". " (``title. body``).

    The catalogue and items that arrive with a request (unknown to the model) both go through this.
    """
    return ". ".join(p.strip() for p in parts if p and p.strip())


def conform(frame: pl.DataFrame, table: str, file: str | Path) -> pl.DataFrame:
    """Select the canonical columns in order and cast compatible types (any int width, naive UTC times).

    Raises on a missing column or a type that cannot be cast losslessly; extra columns are dropped.
    """
    schema = ITEMS_SCHEMA if table == "items" else IMPRESSIONS_SCHEMA
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise DataValidationError(file, missing[0], f"missing column (expected columns: {', '.join(schema)})")
    exprs = []
    for name, want in schema.items():
        got = frame.schema[name]
        col = pl.col(name)
        if got == want:
            exprs.append(col)
        elif isinstance(want, pl.Datetime) and isinstance(got, pl.Datetime):
            col = col.dt.replace_time_zone("UTC") if got.time_zone is None else col.dt.convert_time_zone("UTC")
            exprs.append(col.dt.cast_time_unit("us"))
        elif (want.is_integer() and got.is_integer()) or (isinstance(want, pl.String) and got == pl.Null):
            exprs.append(col.cast(want, strict=True))
        elif isinstance(want, pl.Datetime) and got == pl.Null:
            exprs.append(col.cast(want))
        else:
            raise DataValidationError(file, name, f"wrong type {got} (expected {want})")
    try:
        return frame.select(exprs)
    except pl.exceptions.InvalidOperationError as exc:
        raise DataValidationError(file, None, f"values do not fit the canonical types: {exc}") from None


def validate(frame: pl.DataFrame, table: str, file: str | Path) -> None:
    """Full value checks of a conformed table: nulls in ids, duplicate keys, labels, one ``ts`` per impression."""
    file = str(file)
    schema = ITEMS_SCHEMA if table == "items" else IMPRESSIONS_SCHEMA
    _check_columns(schema, dict(frame.schema), file)
    if frame.height == 0:
        raise DataValidationError(file, None, "table is empty")
    nulls = frame.select(pl.col(c).null_count() for c in _NOT_NULL[table]).row(0)
    for name, count in zip(_NOT_NULL[table], nulls, strict=True):
        if count:
            raise DataValidationError(file, name, f"{count} null value(s)")
    for name in ("item_id", "impression_id", "user_id"):
        if name in frame.columns:
            empty = frame.select((pl.col(name).str.len_bytes() == 0).sum()).item()
            if empty:
                raise DataValidationError(file, name, f"{empty} empty id(s)")
    keys = list(_KEYS[table])
    dupes = (
        frame.select(pl.struct(keys).is_duplicated().sum()).item()
        if len(keys) > 1
        else (frame.select(pl.col(keys[0]).is_duplicated().sum()).item())
    )
    if dupes:
        example = frame.filter(pl.struct(keys).is_duplicated()).select(keys).row(0)
        raise DataValidationError(
            file, ", ".join(keys), f"{dupes} rows share a duplicate key, e.g. {dict(zip(keys, example, strict=True))}"
        )
    if table == "impressions":
        bad = frame.filter(~pl.col("clicked").is_in([0, 1]))
        if bad.height:
            raise DataValidationError(file, "clicked", f"{bad.height} label(s) outside 0/1, e.g. {bad['clicked'][0]}")
        negative = frame.filter(pl.col("position") < 0).height
        if negative:
            raise DataValidationError(file, "position", f"{negative} negative position(s)")
        mixed = frame.group_by("impression_id").agg(pl.col("ts").n_unique().alias("n")).filter(pl.col("n") > 1)
        if mixed.height:
            raise DataValidationError(
                file, "ts", f"{mixed.height} impression(s) with more than one ts, e.g. {mixed['impression_id'][0]!r}"
            )


def check_item_references(impressions: pl.DataFrame, items: pl.DataFrame, file: str | Path) -> None:
    """Every impression row must point at a catalogue item (text and category come from there)."""
    unknown = impressions.select("item_id").unique().join(items.select("item_id"), on="item_id", how="anti")
    if unknown.height:
        raise DataValidationError(
            file, "item_id", f"{unknown.height} item id(s) not in the items table, e.g. {unknown['item_id'][0]!r}"
        )


def _scan_checked(path: Path, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    if not path.is_file():
        raise DataValidationError(path, None, "file not found (run `recrank data prepare` first)")
    lazy = pl.scan_parquet(path)
    _check_columns(schema, dict(lazy.collect_schema()), str(path))
    return lazy.select(list(schema))


def _scan_table(data_dir: str | Path, table: str, base: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Every committed file of ``table`` (the prepared one, then each append's part), each checked."""
    from features.store import table_paths  # the store knows the parts; it imports nothing from here

    paths = table_paths(data_dir, table) or [Path(data_dir) / base]
    frames = [_scan_checked(path, schema) for path in paths]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")


def read_items(data_dir: str | Path) -> pl.LazyFrame:
    """Scan the catalogue (``DIR/items.parquet`` and appended items) after checking columns and types
    (cheap: parquet metadata only)."""
    return _scan_table(data_dir, "items", ITEMS_FILE, ITEMS_SCHEMA)


def read_impressions(data_dir: str | Path) -> pl.LazyFrame:
    """Scan the impressions (``DIR/impressions.parquet`` and appended parts) after checking their columns and types."""
    return _scan_table(data_dir, "impressions", IMPRESSIONS_FILE, IMPRESSIONS_SCHEMA)
