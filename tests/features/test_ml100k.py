"""The ml100k protocol on the real MovieLens-100K files from the recbole wheel (fast: ~0.2 s)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from features.prepare import prepare_dataset
from features.schema import read_impressions, read_items
from features.split import read_split


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    from conf import load_config

    out = tmp_path_factory.mktemp("ml100k")
    cfg = load_config(None, [f"data.dir={out}"])
    summary = prepare_dataset(cfg.data, progress=False)
    return out, summary


def test_counts_and_labels(ml100k) -> None:
    out, summary = ml100k
    imps = read_impressions(out).collect()
    assert imps.height == 100_000 == summary.impression_rows
    assert summary.users == 943 and summary.items == 1682
    # clicked = rating >= 4: 55,375 of the 100,000 ML-100K ratings are 4 or 5.
    assert imps["clicked"].sum() == 55_375


def test_impression_is_one_user_day(ml100k) -> None:
    out, _ = ml100k
    imps = read_impressions(out).collect()
    per = imps.group_by("impression_id").agg(
        pl.col("user_id").n_unique().alias("users"),
        pl.col("ts").n_unique().alias("times"),
        pl.col("position").sort().alias("pos"),
        pl.len().alias("n"),
    )
    assert (per["users"] == 1).all() and (per["times"] == 1).all()
    assert per.select((pl.col("pos") == pl.int_ranges(0, pl.col("n"))).all()).item()
    assert imps.select(pl.col("impression_id").str.split("-").list.get(0) == pl.col("user_id")).to_series().all()


def test_item_text_and_category(ml100k) -> None:
    out, _ = ml100k
    toy = read_items(out).filter(pl.col("item_id") == "1").collect().row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["body"] == "Genres: Animation, Children's, Comedy"
    assert (toy["category"], toy["subcategory"]) == ("Animation", "Children's")
    assert toy["published_at"].year == 1995


def test_time_split_cutoffs(ml100k) -> None:
    out, summary = ml100k
    split = read_split(out)
    imps = read_impressions(out).collect().with_columns(split.expr())
    counts = dict(imps.group_by("split").agg(pl.col("impression_id").n_unique()).iter_rows())
    assert counts["test"] == 256  # the size DESIGN.md quotes for the ml100k test split
    lo, hi = imps["ts"].min(), imps["ts"].max()
    assert abs((hi - split.test_start) / (hi - lo) - 0.1) < 1e-6
    assert abs((split.test_start - split.val_start) / (hi - lo) - 0.1) < 1e-6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] == summary.fingerprint and len(summary.fingerprint) == 16
