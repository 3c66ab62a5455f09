"""The CLI end to end on the embedded MovieLens-100K: prepare -> features -> evaluate -> report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from features.store import snapshot_dir
from offline.cli import main


def test_baselines_on_ml100k_write_the_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ml100k"
    args = ["--config", "conf/demo.yaml", f"data.dir={out}", "evaluation.bootstrap_samples=200"]
    assert main(["data", "prepare", *args]) == 0
    assert main(["features", "build", *args]) == 0
    assert main(["evaluate", *args]) == 0  # no ranker trained yet: the single-signal baselines
    stdout = capsys.readouterr().out
    assert "item_ctr" in stdout and "popularity" in stdout
    for name in (
        "items.parquet",
        "impressions.parquet",
        "split.json",
        "features.parquet",
        "tables.json",
        "report/metrics.json",
        "report/report.md",
        "report/metric_by_model.png",
    ):
        assert (out / name).is_file(), name
    snapshot = snapshot_dir(out)
    assert snapshot.parent.name == "snapshots" and (snapshot / "online_user.parquet").is_file()
    assert (snapshot / "online_item.parquet").is_file()
    metrics = json.loads((out / "report/metrics.json").read_text())
    assert metrics["impressions"] == 256
    ctr = metrics["systems"]["item_ctr"]["metrics"]
    pop = metrics["systems"]["popularity"]["metrics"]
    rnd = metrics["systems"]["random"]["metrics"]
    # The known shape of ml100k (DESIGN.md §6): smoothed CTR ~0.72 AUC / ~0.86 nDCG@10, above popularity,
    # which is above random.
    assert ctr["auc"] == pytest.approx(0.72, abs=0.03) and ctr["ndcg_at_10"] == pytest.approx(0.86, abs=0.03)
    assert ctr["auc"] > pop["auc"] > rnd["auc"]
    assert metrics["context"]["profile"] == "demo"
    assert "| popularity |" in (out / "report/report.md").read_text()


def test_features_build_without_data_fails_cleanly(tmp_path: Path, capsys) -> None:
    code = main(["features", "build", "--data", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 2 and "items.parquet: file not found" in err


def test_bad_config_override_fails_cleanly(capsys) -> None:
    code = main(["evaluate", "evaluation.bootstrap=3"])
    assert code == 2 and "unknown key 'evaluation.bootstrap'" in capsys.readouterr().err
