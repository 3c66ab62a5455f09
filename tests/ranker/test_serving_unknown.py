"""Columns the dataset says are not known at serving time never reach the ranker, whatever the profile says."""

from __future__ import annotations

import json

import pytest
from sample_data import TINY_SYNTHETIC

from conf import load_config
from features import FeatureSpec, build_features, prepare_dataset, read_items, serving_unknown_columns
from features.prepare import MANIFEST_FILE
from ranker.frame import RankerInputs


@pytest.fixture(scope="module")
def unknown_position(tmp_path_factory):
    """A tiny synthetic data set prepared and featurised, its manifest declaring position unknown (as ml100k's)."""
    out = tmp_path_factory.mktemp("unknown_position")
    overrides = [
        *TINY_SYNTHETIC,
        f"data.dir={out}",
        "ranker.use_text=false",
        "ranker.tune={}",
        "ranker.params.n_estimators=20",
        "ranker.early_stopping_rounds=5",
        "ranker.params.min_child_samples=20",
    ]
    cfg = load_config(None, overrides)
    prepare_dataset(cfg.data, progress=False)
    build_features(out, FeatureSpec.from_config(cfg))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "serving_unknown": ["position"]}))
    return cfg


def test_inputs_leave_out_what_the_manifest_declares_unknown(unknown_position) -> None:
    cfg = unknown_position
    spec, items = FeatureSpec.from_config(cfg), read_items(cfg.data.dir).collect()
    assert "position" in spec.feature_columns
    inputs = RankerInputs.build(spec, cfg.ranker, items, serving_unknown=serving_unknown_columns(cfg.data.dir))
    assert "position" not in inputs.features
    assert "position" in RankerInputs.build(spec, cfg.ranker, items, serving_unknown=()).features


def test_the_config_exclude_list_adds_to_the_datasets(unknown_position) -> None:
    cfg = unknown_position
    spec, items = FeatureSpec.from_config(cfg), read_items(cfg.data.dir).collect()
    ranker = cfg.ranker.model_copy(update={"exclude_features": ["item_age_days"]})
    inputs = RankerInputs.build(spec, ranker, items, serving_unknown=("position",))
    assert "position" not in inputs.features and "item_age_days" not in inputs.features
    assert "item_ctr_smoothed" in inputs.features


def test_the_trained_ranker_never_reads_position(unknown_position) -> None:
    """Through the training stage itself (ranker_stage passes the manifest's columns)."""
    from offline.ranker_stage import train_ranker

    run = train_ranker(unknown_position)
    assert "position" not in run.inputs.features
    assert "position" not in run.fit.booster.feature_name()
