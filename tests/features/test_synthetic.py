"""The synthetic generator: deterministic, realistic in shape, chunked."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
from sample_data import TINY_SYNTHETIC

from conf import load_config
from features.adapters.synthetic import SyntheticWorld
from features.prepare import prepare_dataset
from features.schema import read_impressions, read_items


def _world(*extra: str) -> SyntheticWorld:
    return SyntheticWorld(load_config(None, [*TINY_SYNTHETIC, *extra]).data.synthetic)


def test_same_seed_same_tables_other_seed_other_tables() -> None:
    a = pl.concat(list(_world().chunks()))
    b = pl.concat(list(_world().chunks()))
    c = pl.concat(list(_world("data.synthetic.seed=8").chunks()))
    assert a.equals(b)
    assert not a.equals(c)
    assert _world().items_frame().equals(_world().items_frame())


def test_shape_ctr_popularity_and_time_order() -> None:
    world = _world(
        "data.synthetic.impressions=6000",
        "data.synthetic.target_ctr=0.04",
        "data.synthetic.items=500",
        "data.synthetic.slate_max=10",
        "data.synthetic.zipf_exponent=1.1",
    )
    imps = pl.concat(list(world.chunks()))
    assert imps["impression_id"].n_unique() == 6000
    ctr = imps["clicked"].mean()
    assert 0.025 < ctr < 0.06, ctr  # calibrated around the 4% target
    # Zipf at any one time (the popular set drifts, so look at the first day): the top 10% of the
    # catalogue takes a large share of exposures; and the popular set later in the range is a different one.
    day = imps["ts"].min() + timedelta(days=1)
    early = imps.filter(pl.col("ts") < day).group_by("item_id").len().sort("len", "item_id", descending=True)
    top_share = early["len"].head(50).sum() / early["len"].sum()
    assert top_share > 0.35, top_share
    late = imps.filter(pl.col("ts") >= imps["ts"].max() - timedelta(days=1))
    late_top = late.group_by("item_id").len().sort("len", "item_id", descending=True)["item_id"].head(20)
    assert len(set(late_top) & set(early["item_id"].head(20))) < 10  # drift
    assert imps["ts"].is_sorted()
    per_imp = imps.group_by("impression_id").agg(pl.len(), pl.col("item_id").n_unique().alias("u"))
    assert (per_imp["len"] == per_imp["u"]).all()  # an item shows at most once per slate
    assert per_imp["len"].max() <= 10


def test_users_click_their_favourite_categories_more() -> None:
    world = _world("data.synthetic.impressions=6000")
    imps = pl.concat(list(world.chunks()))
    users = imps["user_id"].str.slice(1).cast(pl.Int64).to_numpy()
    items = imps["item_id"].str.slice(1).cast(pl.Int64).to_numpy()
    fav = world.item_category[items] == world.user_fav[users]
    clicked = imps["clicked"].to_numpy()
    assert clicked[fav].mean() > 1.5 * clicked[~fav].mean()


def test_prepare_streams_chunks_into_one_valid_table(make_config) -> None:
    cfg = make_config(*TINY_SYNTHETIC)
    summary = prepare_dataset(cfg.data, progress=False)
    imps = read_impressions(cfg.data.dir).collect()
    assert imps.height == summary.impression_rows
    assert imps["impression_id"].n_unique() == 2500 == summary.impressions
    assert read_items(cfg.data.dir).collect().height == 120
    expected = pl.concat(list(SyntheticWorld(cfg.data.synthetic).chunks()))
    assert imps.equals(expected)
