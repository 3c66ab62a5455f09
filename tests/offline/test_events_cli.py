"""``recrank events append`` from the command line: one-line errors, exit codes, idempotent re-runs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
from sample_data import TINY_SYNTHETIC

from features import read_features, read_impressions, read_snapshot
from offline.cli import main


def _later_events(data: Path, out: Path) -> Path:
    """The last 40 impressions of the folder again, two days after its end, under new ids."""
    log = read_impressions(data).collect()
    last = log["impression_id"].unique(maintain_order=True).tail(40)
    batch = log.filter(pl.col("impression_id").is_in(last.implode())).with_columns(
        pl.col("ts") + timedelta(days=2),
        ("late-" + pl.col("impression_id")).alias("impression_id"),
    )
    batch.write_parquet(out)
    return out


def test_events_append_from_the_cli(tmp_path: Path, capsys) -> None:
    args = [*TINY_SYNTHETIC, f"data.dir={tmp_path / 'd'}"]
    assert main(["data", "prepare", *args]) == 0
    assert main(["features", "build", *args]) == 0
    before = read_features(tmp_path / "d").collect().height
    path = _later_events(tmp_path / "d", tmp_path / "new.parquet")
    capsys.readouterr()
    assert main(["events", "append", str(path), *args]) == 0
    rows = pl.read_parquet(path).height
    assert f'"rows": {rows}' in capsys.readouterr().out
    assert read_features(tmp_path / "d").collect().height == before + rows
    assert read_snapshot(tmp_path / "d").as_of == pl.read_parquet(path)["ts"].max() + timedelta(microseconds=1)
    assert main(["events", "append", str(path), *args]) == 2  # the same batch again: refused, one line
    err = capsys.readouterr().err
    assert "impression(s) already in" in err and "--skip-existing" in err and len(err.strip().splitlines()) == 1
    assert main(["events", "append", str(path), "--skip-existing", *args]) == 0
    assert read_features(tmp_path / "d").collect().height == before + rows
