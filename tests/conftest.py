"""Shared fixtures: configs pointed at temporary folders, a tiny synthetic world, MIND-format folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from sample_data import TINY_SYNTHETIC, write_mind

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
