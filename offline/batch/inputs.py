"""Batch-scoring input: parquet in long or list format, normalised to one row per candidate, bad rows found.

Two layouts are accepted, per file (a folder may mix them):

- long: ``request_id, user_id, item_id[, title, body, category, subcategory]``, one row per candidate (the
  text fields, any of them, are read for items the text model has not seen, through its prompt);
- list: ``request_id, user_id, candidates: list[str]``, one row per request (no item text).

Both become the long layout plus bookkeeping columns: ``_file`` (index into the file list, for error
messages), ``_row`` (global input order: ranks break ties by it) and ``_list`` (the row came from a list).
Bad rows are found here with plain polars, except "unknown item without text", which only the ranking
pipeline can decide (:func:`unknown_without_text` asks it, never a copy of its rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from conf.prompt import TEMPLATE_FIELDS
from features.schema import DataValidationError, read_user_file
from ranker.pipeline import Candidate, RankingPipeline

ID_COLUMNS = ("request_id", "user_id", "item_id")
TEXT_COLUMNS = TEMPLATE_FIELDS  # title, body, category, subcategory: what a prompt template may name
CANDIDATE_COLUMNS = (*ID_COLUMNS, *TEXT_COLUMNS)
_ID_TYPES = (pl.String, pl.Categorical, pl.Enum)
_SKIP_HINT = "rerun with --skip-bad-rows to score the other rows"


def input_files(path: Path) -> list[Path]:
    """The parquet files of ``path`` (a file, or a folder searched recursively; hidden/underscore names skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: input not found")
    files = sorted(
        p
        for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataValidationError(path, None, "empty input: no parquet files")
    return files


def fingerprint(files: Sequence[Path]) -> list[dict]:
    """What identifies the input of a job: names, sizes and modification times (not contents: too slow)."""
    out = []
    for f in files:
        st = f.stat()
        out.append({"file": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _id_cast(file: Path, name: str, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, _ID_TYPES) or dtype.is_integer() or dtype == pl.Null:
        return pl.col(name).cast(pl.String)
    raise DataValidationError(file, name, f"wrong type {dtype} (expected string or integer ids)")


def read_candidates(file: Path, index: int, offset: int) -> pl.DataFrame:
    """One input file in the long layout (+ bookkeeping columns); ``offset`` starts its ``_row`` numbers."""
    schema = read_user_file(file, lambda f: pl.scan_parquet(f).collect_schema())
    is_list = "candidates" in schema and "item_id" not in schema
    needed = ("request_id", "user_id", "candidates" if is_list else "item_id")
    missing = [c for c in needed if c not in schema]
    if missing:
        raise DataValidationError(
            file,
            missing[0],
            f"missing column (expected request_id, user_id, item_id[, {', '.join(TEXT_COLUMNS)}] "
            "or request_id, user_id, candidates)",
        )
    exprs = [_id_cast(file, c, schema[c]) for c in ("request_id", "user_id")]
    if is_list:
        inner = schema["candidates"]
        if not isinstance(inner, pl.List):
            raise DataValidationError(file, "candidates", f"wrong type {inner} (expected list[str])")
        _id_cast(file, "candidates", inner.inner)  # type check only
        exprs.append(pl.col("candidates").cast(pl.List(pl.String)).alias("item_id"))
    else:
        exprs.append(_id_cast(file, "item_id", schema["item_id"]))
    for col in TEXT_COLUMNS:
        if is_list or col not in schema:
            exprs.append(pl.lit(None, dtype=pl.String).alias(col))
        elif schema[col] in (pl.String, pl.Null) or isinstance(schema[col], pl.Categorical):
            exprs.append(pl.col(col).cast(pl.String))
        else:
            raise DataValidationError(file, col, f"wrong type {schema[col]} (expected string)")
    frame = read_user_file(file, lambda f: pl.read_parquet(f).select(exprs))  # the data pages: read only here
    if is_list:  # an empty or null list becomes one null item (reported as a bad row, not silently dropped)
        frame = frame.explode("item_id", empty_as_null=True, keep_nulls=True)
    return frame.with_columns(
        pl.lit(index, dtype=pl.Int32).alias("_file"),
        (pl.int_range(pl.len(), dtype=pl.Int64) + offset).alias("_row"),
        pl.lit(is_list).alias("_list"),
    )


def read_input(files: Sequence[Path]) -> pl.DataFrame:
    """All files in the long layout, in file order then row order."""
    frames, offset = [], 0
    for i, f in enumerate(files):
        frame = read_candidates(f, i, offset)
        offset += frame.height
        frames.append(frame)
    frame = pl.concat(frames, how="vertical")
    if frame.height == 0:
        raise DataValidationError(files[0] if len(files) == 1 else files[0].parent, None, "empty input: no rows")
    return frame


def _blank(col: str) -> pl.Expr:
    return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")


def structural_reasons(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with a ``reason`` column (null = good) for problems visible without a model."""
    item_reason = pl.when(pl.col("_list")).then(pl.lit("null or empty candidates")).otherwise(pl.lit("null item_id"))
    reason = (
        pl.when(_blank("request_id"))
        .then(pl.lit("null request_id"))
        .when(_blank("user_id"))
        .then(pl.lit("null user_id"))
        .when(_blank("item_id"))
        .then(item_reason)
    )
    frame = frame.with_columns(reason.alias("reason"))
    good = pl.col("reason").is_null()
    # Later copies of a (request_id, item_id) are the bad ones: the first keeps its place in the ranking.
    dup = good & ~pl.struct("request_id", "item_id").is_first_distinct().over(good)
    frame = frame.with_columns(
        pl.when(dup).then(pl.lit("duplicate (request_id, item_id)")).otherwise(pl.col("reason")).alias("reason")
    )
    # A request is ranked for one user: a request_id carrying several user ids is ambiguous as a whole.
    users = pl.col("user_id").filter(good).n_unique().over("request_id")
    return frame.with_columns(
        pl.when(good & (users > 1))
        .then(pl.lit("request_id with more than one user_id"))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )


def unknown_without_text(frame: pl.DataFrame, pipeline: RankingPipeline) -> pl.Series:
    """Rows the pipeline cannot score: items it has no vector for (``needs_text``) and no text (``has_text``)."""
    items = frame["item_id"].drop_nulls().unique().to_list()
    needs = {i for i in items if pipeline.needs_text(i)}
    if not needs:
        return pl.Series("unknown", [False] * frame.height)
    where = frame["item_id"].is_in(sorted(needs)).arg_true()
    rows = frame[where].select(*CANDIDATE_COLUMNS[2:]).iter_rows(named=True)
    textless = where.filter(pl.Series([not pipeline.has_text(Candidate(**r)) for r in rows], dtype=pl.Boolean))
    return pl.Series("unknown", [False] * frame.height).scatter(textless, True)


_REASON_COLUMN = {
    "null request_id": "request_id",
    "null user_id": "user_id",
    "null item_id": "item_id",
    "null or empty candidates": "candidates",
    "duplicate (request_id, item_id)": "item_id",
    "request_id with more than one user_id": "user_id",
    "unknown item without text": "item_id",
}


@dataclass(frozen=True)
class CheckedInput:
    """The rows to score and the rows rejected (with ``reason`` and the source ``file``)."""

    rows: pl.DataFrame
    rejects: pl.DataFrame


def check_rows(frame: pl.DataFrame, files: Sequence[Path], pipeline: RankingPipeline, skip_bad: bool) -> CheckedInput:
    """Split ``frame`` into good rows and rejects; without ``skip_bad`` any bad row is a one-line error."""
    frame = structural_reasons(frame)
    unknown = unknown_without_text(frame, pipeline)
    frame = frame.with_columns(
        pl.when(pl.col("reason").is_null() & unknown)
        .then(pl.lit("unknown item without text"))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    bad = frame.filter(pl.col("reason").is_not_null())
    if bad.height and not skip_bad:
        raise bad_rows_error(bad, files)
    names = {i: str(f) for i, f in enumerate(files)}
    rejects = bad.select(
        *CANDIDATE_COLUMNS, "reason", pl.col("_file").replace_strict(names, return_dtype=pl.String).alias("file")
    )
    good = frame.filter(pl.col("reason").is_null()).drop("reason", "_list")
    return CheckedInput(rows=good, rejects=rejects)


def bad_rows_error(bad: pl.DataFrame, files: Sequence[Path]) -> DataValidationError:
    """One line: the first problem's file and column with its row count, then the other problems' counts."""
    counts = bad.group_by("reason").agg(pl.len(), pl.col("_file").min(), pl.col("_file").n_unique().alias("n_files"))
    counts = counts.sort("len", "reason", descending=[True, False])
    first, *rest = counts.iter_rows(named=True)
    where = f" (first of {first['n_files']} files)" if first["n_files"] > 1 else ""
    others = "".join(f"; {_rows(r['len'])}: {r['reason']}" for r in rest)
    return DataValidationError(
        files[first["_file"]],
        _REASON_COLUMN[first["reason"]],
        f"{_rows(first['len'], 'bad ')}: {first['reason']}{where}{others} "
        f"({_rows(bad.height, 'bad ')} in all; {_SKIP_HINT})",
    )


def _rows(n: int, kind: str = "") -> str:
    return f"{n} {kind}row{'' if n == 1 else 's'}"
