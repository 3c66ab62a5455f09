"""The pipeline never ships a regression: the text model is selected on its own impressions (never the ranker's
validation), the adapted encoder is exported only when it beats its probe there, the combined ranker is shipped
only when it beats features-only on validation, and every run scores the frozen-backbone head beside it.

The world is a tiny canonical catalogue where text decides most of the click (every click is an "apple" item),
so the probe learns it in seconds and a broken adapter is visibly worse than it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sample_data import TEXT_OVERRIDES

from conf import load_config
from offline.cli import main
from offline.textmodel_stage import FROZEN_COLUMN, INTEREST_FILE, model_dir
from textmodel.crossfit import CrossFitter
from textmodel.train import ClickTrainer

FAST = [
    # plain click training: in this world item CTR alone tells apples from stones, so a residual text part
    # would have nothing left to learn and no probe to break
    "textmodel.train.offset_feature=null",
    "textmodel.train.probe_epochs=8",
    "textmodel.train.max_steps_per_epoch=8",
    "textmodel.train.oof_folds=3",
    "ranker.tune={}",
    "ranker.params.n_estimators=40",
    "ranker.early_stopping_rounds=10",
    "ranker.params.min_child_samples=10",
    "evaluation.bootstrap_samples=200",
    "evaluation.freshness=[]",
]


def write_text_world(folder: Path, impressions: int = 600, seed: int = 0) -> Path:
    """Canonical tables: 40 items, half "apple", half "stone"; each impression shows 2 apples (one clicked, at
    random) and 3 stones: text tells apples from stones, nothing tells the two apples apart."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    apples, stones = [f"a{k:02d}" for k in range(20)], [f"s{k:02d}" for k in range(20)]
    pl.DataFrame(
        {
            "item_id": apples + stones,
            "title": [f"apple pie {k}" for k in range(20)] + [f"stone wall {k}" for k in range(20)],
            "body": [""] * 40,
            "category": ["food"] * 20 + ["home"] * 20,
            "subcategory": [""] * 40,
            "published_at": [None] * 40,
        },
        schema_overrides={"published_at": pl.Datetime("us", "UTC")},
    ).write_parquet(folder / "items.parquet")
    start, rows = datetime(2024, 1, 1, tzinfo=UTC), []
    for i in range(impressions):
        shown = [*rng.choice(apples, 2, replace=False), *rng.choice(stones, 3, replace=False)]
        order = rng.permutation(5)
        ts = start + timedelta(minutes=40 * i)
        for pos, k in enumerate(order):
            rows.append((f"m{i:04d}", f"u{rng.integers(120):03d}", ts, shown[k], pos, int(k == 0)))
    pl.DataFrame(
        rows,
        schema={
            "impression_id": pl.String,
            "user_id": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "item_id": pl.String,
            "position": pl.Int32,
            "clicked": pl.Int8,
        },
        orient="row",
    ).write_parquet(folder / "impressions.parquet")
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_text_world(tmp_path_factory.mktemp("textworld") / "src")


def _args(source: Path, data: Path, model_cache: Path, *extra: str) -> list[str]:
    return [
        "data.dataset=canonical",
        f"data.source={source}",
        f"data.dir={data}",
        f"textmodel.cache_dir={model_cache}",
        *TEXT_OVERRIDES,
        *FAST,
        *extra,
    ]


def _prepare(args: list[str]) -> None:
    assert main(["data", "prepare", *args]) == 0
    assert main(["features", "build", *args]) == 0


def _ids(data) -> set[str]:
    return set(data.impression_ids)


def test_the_text_model_is_selected_on_its_own_impressions(source, tmp_path, model_cache, monkeypatch) -> None:
    """No impression that selects the text model (its early stopping, the cross-fitted heads' early stopping,
    the export guard) is in the ranker's validation split, and none of them is trained on."""
    args = _args(source, tmp_path / "d", model_cache)
    _prepare(args)
    seen: dict[str, list] = {"fit_train": [], "fit_val": [], "oof_val": []}
    fit, oof = ClickTrainer.fit, CrossFitter.scores

    def record_fit(self, train, val, *a, **k):
        seen["fit_train"].append(train)
        seen["fit_val"].append(val)
        return fit(self, train, val, *a, **k)

    def record_oof(self, train, val, *a, **k):  # self: the CrossFitter
        seen["oof_val"].append(val)
        return oof(self, train, val, *a, **k)

    monkeypatch.setattr(ClickTrainer, "fit", record_fit)
    monkeypatch.setattr(CrossFitter, "scores", record_oof)
    assert main(["textmodel", "train", *args]) == 0
    features = pl.read_parquet(tmp_path / "d" / "features.parquet")
    split_ids = {s: set(features.filter(pl.col("split") == s)["impression_id"]) for s in ("train", "val", "test")}
    selection = _ids(seen["fit_val"][0])
    assert selection == _ids(seen["oof_val"][0])  # the cross-fitted heads stop on the same impressions
    assert selection and selection <= split_ids["train"]
    assert not selection & split_ids["val"] and not selection & split_ids["test"]
    trained = seen["fit_train"][0]
    assert not selection & _ids(trained)
    assert _ids(trained) | selection == split_ids["train"]
    # the latest tenth of the train impressions, by time
    assert seen["fit_val"][0].impression_ts.min() > trained.impression_ts.max()
    assert len(selection) == pytest.approx(0.1 * len(split_ids["train"]), abs=1)
    meta = json.loads((model_dir(load_config(None, args)) / "textmodel.json").read_text())
    assert meta["selection"]["impressions"] == len(selection)


def _corrupt_adapters(monkeypatch) -> None:
    """Fine-tuning that ends with the adapters scrambled: the adapted encoder is then far worse than its probe."""
    fine_tune = ClickTrainer.fine_tune

    def broken(self, *a, **k):
        result = fine_tune(self, *a, **k)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.model.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0)
        return result

    monkeypatch.setattr(ClickTrainer, "fine_tune", broken)


def test_an_adapted_model_worse_than_its_probe_is_not_exported(source, tmp_path, model_cache, monkeypatch) -> None:
    args = _args(source, tmp_path / "d", model_cache)
    _prepare(args)
    _corrupt_adapters(monkeypatch)
    assert main(["textmodel", "train", *args]) == 0
    meta = json.loads((tmp_path / "d" / "textmodel" / "textmodel.json").read_text())
    guard = meta["export"]["guard"]
    assert guard["candidate"] == "adapted" and guard["reference"] == "probe" and guard["on"] == "selection"
    assert guard["candidate_value"] < guard["reference_value"] - 0.05  # the precondition: adapted is worse
    assert guard["reference_value"] > 0.8  # the probe learned the text signal
    assert meta["export"]["exported"] == "probe" and not guard["accepted"]
    # both candidates are on record on every split; the guard's figures are theirs on the selection impressions
    candidates = meta["export"]["candidates_auc"]
    assert set(candidates["adapted"]) == set(candidates["probe"]) == {"selection", "train", "val", "test"}
    assert guard["candidate_value"] == pytest.approx(candidates["adapted"]["selection"], abs=1e-12)
    assert guard["reference_value"] == pytest.approx(candidates["probe"]["selection"], abs=1e-12)
    assert meta["impression_auc"]["test"] == candidates["probe"]["test"]  # the probe is what was exported
    # what is exported is the probe: its scores are the frozen head's, bit for bit, on every held-out row
    interest = pl.read_parquet(tmp_path / "d" / INTEREST_FILE)
    features = pl.read_parquet(tmp_path / "d" / "features.parquet").select("impression_id", "item_id", "split")
    held_out = interest.join(features, on=["impression_id", "item_id"]).filter(pl.col("split") != "train")
    assert held_out["interest_score"].equals(held_out[FROZEN_COLUMN], check_names=False)
    # ... and the saved weights are the probe's: re-encoding the catalogue from them gives the same scores
    assert main(["textmodel", "embed", *args]) == 0
    again = pl.read_parquet(tmp_path / "d" / INTEREST_FILE).join(features, on=["impression_id", "item_id"])
    again = again.filter(pl.col("split") != "train")
    assert (again["interest_score"] - again[FROZEN_COLUMN]).abs().max() < 1e-4


def test_an_adapted_model_the_guard_accepts_is_exported(source, tmp_path, model_cache) -> None:
    """min_gain -1: any adapted model passes, and then its scores (not the probe's) are the interest score."""
    args = _args(source, tmp_path / "d", model_cache, "textmodel.train.export_guard.min_gain=-1")
    _prepare(args)
    assert main(["textmodel", "train", *args]) == 0
    meta = json.loads((tmp_path / "d" / "textmodel" / "textmodel.json").read_text())
    assert meta["export"]["exported"] == "adapted" and meta["export"]["guard"]["accepted"]
    interest = pl.read_parquet(tmp_path / "d" / INTEREST_FILE).drop_nulls()
    assert (interest["interest_score"] - interest[FROZEN_COLUMN]).abs().max() > 1e-3


def test_a_frozen_backbone_exports_its_probe_and_interest_frozen_equals_it(source, tmp_path, model_cache) -> None:
    args = _args(source, tmp_path / "d", model_cache, "textmodel.trainable_top_layers=0")
    _prepare(args)
    assert main(["textmodel", "train", *args]) == 0
    meta = json.loads((tmp_path / "d" / "textmodel" / "textmodel.json").read_text())
    assert meta["export"] == {"exported": "probe", "reason": "no adapters trained"}
    interest = pl.read_parquet(tmp_path / "d" / INTEREST_FILE)
    assert interest[FROZEN_COLUMN].null_count() == 0
    scored = interest.drop_nulls("interest_score")  # the oldest train block has no cross-fitted score
    features = pl.read_parquet(tmp_path / "d" / "features.parquet").select("impression_id", "item_id", "split")
    held_out = scored.join(features, on=["impression_id", "item_id"]).filter(pl.col("split") != "train")
    assert held_out.height and held_out["interest_score"].equals(held_out[FROZEN_COLUMN], check_names=False)


@pytest.mark.integration
def test_a_combined_ranker_worse_than_features_only_on_validation_is_not_registered(
    source, tmp_path, model_cache, capsys
) -> None:
    """Interest scores that match the labels on train rows and contradict them on validation: the combined
    ranker learns to trust them, loses to features-only on validation, and the features-only ranker is what
    gets registered (no text model with it); the report and the registry say so."""
    args = _args(source, tmp_path / "d", model_cache)
    _prepare(args)
    assert main(["textmodel", "train", *args]) == 0
    path = tmp_path / "d" / INTEREST_FILE
    features = pl.read_parquet(tmp_path / "d" / "features.parquet")
    features = features.select("impression_id", "item_id", "split", "clicked")
    misleading = (
        pl.read_parquet(path)
        .join(features, on=["impression_id", "item_id"])
        .with_columns(
            pl.when(pl.col("split") == "train")
            .then(pl.col("clicked").cast(pl.Float64))
            .when(pl.col("split") == "val")
            .then(1.0 - pl.col("clicked").cast(pl.Float64))
            .otherwise(pl.col("interest_score"))
            .alias("interest_score")
        )
        .drop("split", "clicked")
    )
    misleading.write_parquet(path)
    capsys.readouterr()
    assert main(["ranker", "train", *args]) == 0
    out = capsys.readouterr().out
    assert "shipped ranker: lightgbm_features_only" in out
    ranker = json.loads((tmp_path / "d" / "ranker" / "ranker.json").read_text())
    guard = ranker["text_guard"]
    assert ranker["shipped"] == "lightgbm_features_only" and not guard["accepted"] and guard["on"] == "val"
    assert guard["candidate_value"] < guard["reference_value"]
    report = (tmp_path / "d" / "report" / "report.md").read_text()
    assert "## Model selection" in report and "**shipped ranker**: `lightgbm_features_only`" in report
    metrics = json.loads((tmp_path / "d" / "report" / "metrics.json").read_text())
    assert metrics["selection"]["shipped_ranker"] == "lightgbm_features_only"
    by_split = metrics["selection"]["text_model"]["interest_auc_by_split"]["interest_score"]
    assert set(by_split) == {"train", "selection", "val", "test"}
    assert by_split["train"] == 1.0 and by_split["val"] == 0.0  # the scores written above, as the ranker saw them
    assert "interest_frozen" in metrics["systems"] and "gain_vs_interest_frozen" in metrics["intervals"]["auc"]
    assert main(["register", *args]) == 0
    assert "features only: no text model" in capsys.readouterr().out
    from offline.tracking import setup
    from ranker.loading import ranker_name

    cfg = load_config(None, args)
    client = setup(cfg)
    mv = client.get_model_version(ranker_name(cfg.mlflow.model_prefix), "1")
    assert mv.tags["shipped"] == "lightgbm_features_only" and "not above" in mv.tags["text_guard"]
    assert "textmodel_version" not in mv.tags
    assert [m.name for m in client.search_registered_models()] == [ranker_name(cfg.mlflow.model_prefix)]
