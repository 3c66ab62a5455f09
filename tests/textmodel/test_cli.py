"""`recrank textmodel train` and `embed` end to end with the tiny GPT-2."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC

from offline.cli import main


@pytest.fixture
def prepared(tmp_path: Path, model_cache: Path) -> list[str]:
    args = [*TINY_SYNTHETIC, f"data.dir={tmp_path / 'd'}", f"textmodel.cache_dir={model_cache}", *TEXT_OVERRIDES]
    assert main(["data", "prepare", *args]) == 0
    assert main(["features", "build", *args]) == 0
    return args


def test_train_then_embed_round_trip(prepared: list[str], tmp_path: Path, capsys) -> None:
    assert main(["textmodel", "train", *prepared]) == 0
    out = capsys.readouterr().out
    assert "selection AUC" in out and "impression-mean AUC" in out and "exported: " in out
    folder = tmp_path / "d" / "textmodel"
    meta = json.loads((folder / "textmodel.json").read_text())
    assert meta["backbone"]["name"] == "tiny-gpt2-seed0" and meta["config"]["peft"]["method"] == "lora"
    assert set(meta["impression_auc"]) == {"train", "selection", "val", "test", "train_out_of_fold"}
    assert meta["export"]["exported"] in {"probe", "adapted"}
    assert meta["train_interest"] == "out_of_fold(5, time)"
    features = pl.read_parquet(tmp_path / "d" / "features.parquet")
    trained = pl.read_parquet(tmp_path / "d" / "interest.parquet")
    assert trained.height == features.height  # a row for every (impression, item) row
    assert trained.join(features, on=["impression_id", "item_id"], how="anti").height == 0
    # Cross-fitted by time: exactly the oldest fifth of the train impressions has no score; the rest all do.
    rows = trained.join(features, on=["impression_id", "item_id"])
    unscored = rows.filter(pl.col("interest_score").is_null())
    assert unscored.height == meta["train_rows_without_score"] > 0
    assert set(unscored["split"]) == {"train"}
    train_imps = rows.filter(pl.col("split") == "train").group_by("impression_id").agg(pl.col("ts").first()).sort("ts")
    first_block = set(train_imps["impression_id"][: train_imps.height // 5])
    assert set(unscored["impression_id"]) >= first_block
    assert unscored["ts"].max() < rows.filter(pl.col("interest_score").is_not_null(), split="train")["ts"].min()
    table = pl.read_parquet(folder / "item_embeddings.parquet")
    assert table.height == 120 and table["vector"].dtype == pl.Array(pl.Float32, 16)
    # `embed` reloads the saved model, re-encodes the catalogue from text (no cache) and rescores every row.
    assert main(["textmodel", "embed", *prepared]) == 0
    embedded = pl.read_parquet(tmp_path / "d" / "interest.parquet")
    joined = trained.join(embedded, on=["impression_id", "item_id"], suffix="_again")
    assert joined.height == trained.height
    assert (joined["interest_score"] - joined["interest_score_again"]).abs().max() < 1e-4
    # the frozen-backbone head's scores are not saved with the model: embed keeps them as they were
    assert trained["interest_frozen"].null_count() == 0
    assert joined["interest_frozen"].equals(joined["interest_frozen_again"], check_names=False)


def test_bad_inputs_fail_with_one_line(prepared: list[str], tmp_path: Path, capsys) -> None:
    cases = {
        "missing backbone": (["textmodel.backbone=/no/such/model"], "/no/such/model: backbone folder not found"),
        "unknown method": (["textmodel.peft.method=qlora"], "textmodel.peft.method"),
        "no text": (['textmodel.prompt="Description: {body}"'], "have no text in ['body']"),
        "bad prompt": (["textmodel.prompt='{titel}'"], "textmodel.prompt: Value error, prompt '{titel}': unknown"),
    }
    for name, (extra, message) in cases.items():
        code = main(["textmodel", "train", *prepared, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert message in err and len(err.splitlines()) == 1, (name, err)
    assert main(["textmodel", "embed", *prepared]) == 2
    assert "textmodel.json: not found" in capsys.readouterr().err
