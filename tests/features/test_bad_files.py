"""Every reader of a file a user hands in answers a corrupt, truncated or foreign file with one line naming the
file, and exit code 2: ``data prepare`` (canonical, MIND), ``events append`` (events, new items). ``score``'s
input is checked in tests/offline/test_batch.py."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from sample_data import TINY_SYNTHETIC

from features import read_impressions, read_items
from offline.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_files")
    assert main(["data", "prepare", *TINY_SYNTHETIC, f"data.dir={root / 'd'}"]) == 0
    assert main(["features", "build", *TINY_SYNTHETIC, f"data.dir={root / 'd'}"]) == 0
    return root / "d"


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _one_line(capsys, path: Path, kind: str = "parquet") -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"recrank: error: {path}: not a readable {kind} file ("), err
    return err


@pytest.mark.parametrize("bad", ["items.parquet", "impressions.parquet"])
def test_prepare_canonical_names_a_truncated_table(prepared: Path, tmp_path: Path, bad: str, capsys) -> None:
    source = tmp_path / "source"
    source.mkdir()
    read_items(prepared).collect().write_parquet(source / "items.parquet")
    read_impressions(prepared).collect().write_parquet(source / "impressions.parquet")
    _truncate(source / bad)
    out = tmp_path / "out"
    args = ["data", "prepare", "--dataset", "canonical", "--source", str(source), "--out", str(out)]
    assert main(args) == 2
    _one_line(capsys, source / bad)
    assert not (out / "items.parquet").exists() and not (out / "impressions.parquet").exists()  # nothing half-made


def test_prepare_mind_names_a_file_that_is_not_text(tmp_path: Path, capsys) -> None:
    source = tmp_path / "mind"
    source.mkdir()
    (source / "news.tsv").write_bytes(b"N1\tnews\t\xff\xfe\x00garbage\n")
    (source / "behaviors.tsv").write_text("1\tU1\t11/11/2019 9:05:58 AM\tN1\tN1-1\n")
    assert main(["data", "prepare", "--dataset", "mind", "--source", str(source), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, source / "news.tsv", "tab-separated")


@pytest.mark.parametrize("bad", ["events", "items"])
def test_events_append_names_a_truncated_file(prepared: Path, tmp_path: Path, bad: str, capsys) -> None:
    events = tmp_path / "events.parquet"
    read_impressions(prepared).collect().head(20).write_parquet(events)
    items = tmp_path / "items.parquet"
    read_items(prepared).collect().head(3).with_columns(pl.lit("new-") + pl.col("item_id")).write_parquet(items)
    path = _truncate(events if bad == "events" else items)
    data = ["--data", str(prepared)]
    assert main(["events", "append", str(events), "--items", str(items), *data, *TINY_SYNTHETIC]) == 2
    _one_line(capsys, path)
