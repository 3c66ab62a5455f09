"""Canonical tables: conforming, validation messages, the canonical adapter and atomic writes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from features.io import atomic_path, write_parquet_atomic
from features.schema import DataValidationError, conform, validate
from offline.cli import main


def _items() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": ["a", "b"],
            "title": ["A title", "B title"],
            "body": ["", "text"],
            "category": ["x", "y"],
            "subcategory": ["", ""],
            "published_at": [datetime(2020, 1, 1), None],
        }
    )


def _impressions() -> pl.DataFrame:
    t = datetime(2021, 5, 1, 12, tzinfo=UTC)
    return pl.DataFrame(
        {
            "impression_id": ["s1", "s1", "s2"],
            "user_id": ["u1", "u1", "u2"],
            "ts": [t, t, datetime(2021, 5, 2, tzinfo=UTC)],
            "item_id": ["a", "b", "a"],
            "position": [0, 1, 0],
            "clicked": [1, 0, 0],
        }
    )


def test_conform_casts_compatible_types() -> None:
    items = conform(_items(), "items", "items.parquet")
    assert items.schema["published_at"] == pl.Datetime("us", "UTC")  # naive times are taken as UTC
    imps = conform(_impressions(), "impressions", "impressions.parquet")
    assert imps.schema["clicked"] == pl.Int8 and imps.schema["position"] == pl.Int32
    validate(imps, "impressions", "impressions.parquet")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop("clicked"), "impressions.parquet: column 'clicked': missing column"),
        (lambda f: f.with_columns(pl.col("position").cast(pl.String)), "column 'position': wrong type String"),
        (lambda f: f.with_columns(pl.Series("user_id", ["u1", None, "u2"])), "column 'user_id': 1 null value(s)"),
        (lambda f: f.with_columns(pl.Series("clicked", [1, 2, 0])), "column 'clicked': 1 label(s) outside 0/1"),
        (lambda f: f.with_columns(pl.Series("item_id", ["a", "a", "a"])), "rows share a duplicate key"),
        (
            lambda f: f.with_columns(pl.Series("impression_id", ["s1"] * 3), pl.Series("item_id", ["a", "b", "c"])),
            "column 'ts': 1 impression(s) with more than one ts",
        ),
        (lambda f: f.with_columns(pl.Series("item_id", ["a", "", "b"])), "column 'item_id': 1 empty id(s)"),
    ],
)
def test_bad_impressions_are_named(mutate, message: str) -> None:
    with pytest.raises(DataValidationError, match=re.escape(message)):
        validate(
            conform(mutate(_impressions()), "impressions", "impressions.parquet"), "impressions", "impressions.parquet"
        )


def test_duplicate_item_id_is_named() -> None:
    items = conform(_items().with_columns(pl.Series("item_id", ["a", "a"])), "items", "items.parquet")
    message = "items.parquet: column 'item_id': 2 rows share a duplicate key"
    with pytest.raises(DataValidationError, match=re.escape(message)):
        validate(items, "items", "items.parquet")


def _canonical_source(folder: Path, impressions: pl.DataFrame) -> Path:
    folder.mkdir(parents=True)
    _items().write_parquet(folder / "items.parquet")
    impressions.write_parquet(folder / "impressions.parquet")
    return folder


def test_canonical_adapter_round_trip(tmp_path: Path) -> None:
    src = _canonical_source(tmp_path / "src", _impressions())
    out = tmp_path / "out"
    assert main(["data", "prepare", "--dataset", "canonical", "--source", str(src), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "impressions.parquet",
        "items.parquet",
        "manifest.json",
        "split.json",
        "tables.json",  # the committed state: the base files, no appended parts yet
    ]
    assert pl.read_parquet(out / "impressions.parquet").height == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop("user_id"), "impressions.parquet: column 'user_id': missing column"),
        (lambda f: f.with_columns(pl.Series("impression_id", [None, "s1", "s2"])), "column 'impression_id': 1 null"),
        (lambda f: f.with_columns(pl.Series("clicked", [2, 0, 0])), "column 'clicked': 1 label(s) outside 0/1"),
    ],
)
def test_canonical_adapter_bad_input_exits_nonzero_and_writes_nothing(mutate, message, tmp_path, capsys) -> None:
    src = _canonical_source(tmp_path / "src", mutate(_impressions()))
    out = tmp_path / "out"
    code = main(["data", "prepare", "--dataset", "canonical", "--source", str(src), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or list(out.iterdir()) == []


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    write_parquet_atomic(pl.DataFrame({"a": [1]}), target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert pl.read_parquet(target)["a"].to_list() == [1]  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # and no temporary is left
