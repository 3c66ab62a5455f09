"""Shared fixtures: configs pointed at temporary folders, a tiny synthetic world, MIND-format folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC, write_mind

from conf import Config, load_config
from features.adapters.synthetic import SyntheticWorld


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """``make_config("data.dataset=synthetic", ...)``: the default config, data folder under tmp_path."""

    def make(*overrides: str) -> Config:
        return load_config(None, [f"data.dir={tmp_path / 'data'}", *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_world() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items and impressions of a tiny synthetic world, timestamps truncated to the hour.

    Truncation makes many impressions share a ``ts``: the features must exclude other rows at the
    same instant too, which a continuous clock would never test.
    """
    cfg = load_config(None, TINY_SYNTHETIC)
    world = SyntheticWorld(cfg.data.synthetic)
    impressions = pl.concat(list(world.chunks())).with_columns(pl.col("ts").dt.truncate("1h"))
    return world.items_frame(), impressions


@pytest.fixture
def mind_folder(tmp_path: Path) -> Path:
    return write_mind(tmp_path / "mind")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One folder of built test backbones for the whole session (tiny GPT-2 builds in ~1 s)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory) -> Path:
    """MovieLens-100K prepared and featurised once per session (~1 s)."""
    from features import FeatureSpec, build_features, prepare_dataset

    out = tmp_path_factory.mktemp("ml100k")
    cfg = load_config(None, [f"data.dir={out}"])
    prepare_dataset(cfg.data, progress=False)
    build_features(out, FeatureSpec.from_config(cfg))
    return out


SERVED_RANKER_OVERRIDES = [
    # Ship the combined ranker whatever validation says: these tests exercise the registered text + ranker pair
    # (on the tiny world text adds nothing); the guard itself is tested in tests/offline/test_selection.py.
    "ranker.text_guard.min_gain=-1",
    "ranker.tune={}",
    "ranker.params.n_estimators=60",
    "ranker.early_stopping_rounds=20",
    "ranker.params.min_child_samples=20",
    "evaluation.bootstrap_samples=200",
]


@pytest.fixture(scope="session")
def served_world(tmp_path_factory, model_cache: Path) -> Config:
    """A tiny world run through the whole pipeline once (trained, registered, champion = version 1).

    Shared by serving and batch-scoring tests, which only read it: tests that move aliases build their own.
    """
    from offline.cli import main

    root = tmp_path_factory.mktemp("served")
    args = [
        *TINY_SYNTHETIC,
        f"data.dir={root / 'd'}",
        f"textmodel.cache_dir={model_cache}",
        *TEXT_OVERRIDES,
        *SERVED_RANKER_OVERRIDES,
    ]
    assert main(["pipeline", *args]) == 0
    return load_config(None, args)
