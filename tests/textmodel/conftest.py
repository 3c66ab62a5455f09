"""A tiny synthetic dataset with features, histories and impression sets, for the text-model tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC

from conf import load_config
from features import FeatureSpec, build_features, prepare_dataset, read_features, read_impressions, read_items
from features.history import impression_histories
from textmodel.backbone import build_tiny_gpt2
from textmodel.data import load_sets
from textmodel.prompt import ItemText


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, model_cache: Path, tiny_tokenizer):
    out = tmp_path_factory.mktemp("tinydata")
    cfg = load_config(None, [*TINY_SYNTHETIC, f"data.dir={out}", f"textmodel.cache_dir={model_cache}", *TEXT_OVERRIDES])
    prepare_dataset(cfg.data, progress=False)
    build_features(out, FeatureSpec.from_config(cfg))
    items = read_items(out).collect()
    features = read_features(out).collect()
    hist = impression_histories(read_impressions(out), features.lazy(), cfg.data.history_cap).collect()
    text = ItemText.from_config(cfg.textmodel, tiny_tokenizer)
    catalogue, sets = load_sets(items, features, hist, text, cfg.data.history_cap)
    return cfg, catalogue, sets


@pytest.fixture(scope="session")
def tiny_tokenizer(model_cache: Path):
    """The tiny GPT-2's byte-level tokenizer: one token per UTF-8 byte, no special tokens added."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_gpt2(model_cache))
