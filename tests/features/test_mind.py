"""MIND-format folders: parsing, the history mapping, and one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from sample_data import BEHAVIORS, NEWS, write_mind

from features.prepare import prepare_dataset
from features.schema import read_impressions, read_items
from offline.cli import main


def test_mind_folder_becomes_canonical(mind_folder: Path, make_config) -> None:
    cfg = make_config("data.dataset=mind", f"data.source={mind_folder}")
    summary = prepare_dataset(cfg.data, progress=False)
    items = read_items(cfg.data.dir).collect()
    imps = read_impressions(cfg.data.dir).collect()
    assert items.height == 5
    assert items.filter(pl.col("item_id") == "N1").row(0, named=True)["body"] == "A late goal decides it."
    logged = imps.filter(~pl.col("impression_id").str.starts_with("hist-"))
    assert logged.height == 10 and logged["clicked"].sum() == 4
    first = logged.filter(pl.col("impression_id") == "1").sort("position")
    assert first["item_id"].to_list() == ["N3", "N4", "N5"]
    assert first["clicked"].to_list() == [1, 0, 0]
    assert str(first["ts"][0]) == "2019-11-11 09:05:58+00:00"
    # Histories become one clicked impression per user, just before the logged period.
    hist = imps.filter(pl.col("impression_id").str.starts_with("hist-")).sort("impression_id", "position")
    assert hist["item_id"].to_list() == ["N1", "N2", "N4"]
    assert (hist["clicked"] == 1).all()
    assert hist["ts"].max() < logged["ts"].min()
    assert summary.impressions == 4 + 2  # 4 logged + the histories of U1 and U3


def _bad(rows: list[list[str]], index: int, column: int, value: str) -> list[list[str]]:
    out = [list(r) for r in rows]
    out[index][column] = value
    return out


BAD_CASES = {
    "missing column": (None, [r[:4] for r in BEHAVIORS], "behaviors.tsv: column 'impressions': missing column"),
    "null id": (None, _bad(BEHAVIORS, 1, 1, ""), "behaviors.tsv: column 'user_id': 1 null or empty id"),
    "label 2": (
        None,
        _bad(BEHAVIORS, 0, 4, "N3-2 N4-0"),
        "behaviors.tsv: column 'impressions': 1 label(s) outside 0/1",
    ),
    "unparsable time": (None, _bad(BEHAVIORS, 2, 2, "2019-11-12 13:00"), "behaviors.tsv: column 'time': 1 unparsable"),
    "duplicate item id": (_bad(NEWS, 1, 0, "N1"), None, "news.tsv: column 'news_id': 2 rows share a duplicate id"),
    "unknown item": (None, _bad(BEHAVIORS, 0, 4, "N9-1"), "behaviors.tsv: column 'item_id': 1 item id(s) not in"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_mind_input_fails_with_one_line_and_writes_nothing(case: str, tmp_path: Path, capsys) -> None:
    news, behaviors, message = BAD_CASES[case]
    source = write_mind(tmp_path / "src", news, behaviors)
    out = tmp_path / "out"
    code = main(["data", "prepare", "--dataset", "mind", "--source", str(source), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    assert not out.exists() or list(out.iterdir()) == []  # no partial output, no temporary leftovers


def test_failed_prepare_keeps_the_previous_good_tables(mind_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["data", "prepare", "--dataset", "mind", "--source", str(mind_folder), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write_mind(tmp_path / "bad", None, _bad(BEHAVIORS, 0, 4, "N3-2"))
    assert main(["data", "prepare", "--dataset", "mind", "--source", str(bad), "--out", str(out)]) != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
