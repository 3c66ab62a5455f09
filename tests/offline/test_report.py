"""The evaluation report on the hand-built case of tests/eval_case.py: tables over both references and per slice."""

from __future__ import annotations

import json
from pathlib import Path

import eval_case
import polars as pl
import pytest

from offline.report import render_markdown, slice_table, write_report
from offline.tracking import git_commit
from ranker.evaluate import EvaluationResult, evaluate_systems
from ranker.slices import new_item_ids


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    feats = eval_case.features()
    test = feats.filter(pl.col("split") == "test")
    new_items = new_item_ids(feats, eval_case.CUTOFF)
    return evaluate_systems(test, eval_case.SYSTEMS, eval_case.config(), new_items=new_items)


def test_slice_table_has_sizes_metrics_and_gains_over_both_references(result: EvaluationResult) -> None:
    head, *rows = slice_table(result, "new_items")
    assert head == [
        "system",
        "AUC",
        "nDCG@10",
        "Δ AUC vs item_ctr",
        "Δ nDCG@10 vs item_ctr",
        "Δ AUC vs features-only",
        "Δ nDCG@10 vs features-only",
    ]
    by_name = {r[0]: r for r in rows}
    # hand-computed: interest 1.0 vs item_ctr 0.5 (tied new items) on the 2 impressions that keep both labels
    assert by_name["interest_score"][1] == "1.0000" and by_name["item_ctr"][1] == "0.5000"
    assert by_name["interest_score"][3] == "+0.5000 [+0.500, +0.500]"
    assert by_name["interest_score"][5] == "+0.5000 [+0.000, +1.000]"
    assert by_name["item_ctr"][3] == "—" and by_name["lightgbm_features_only"][5] == "—"


def test_markdown_shows_main_table_both_gain_tables_and_every_slice(result: EvaluationResult) -> None:
    text = render_markdown(result, "t", {"dataset": "hand"})
    for heading in (
        "## test split: 3 impressions, 11 rows",
        "## Gain over `item_ctr`",
        "## Gain over `lightgbm_features_only`",
        "## Slices: where behaviour is thin",
        "### `new_items`: items new at the training cut-off",
        "### `few_clicks`: items clicked at most 1 times before the impression",
        "### `cold_items`",
        "### `users_no_history`",
        "### `users_with_history`",
    ):
        assert heading in text, heading
    assert "5 rows match (rows); 4 rows in 2 impressions count (2 with an AUC)." in text
    assert "7 rows match (whole impressions); 7 rows in 2 impressions count (2 with an AUC)." in text
    assert "| MRR (first hit) | MRR (MIND) |" in text
    # the whole-split gain of the text model over item CTR, AUC 1 - 1/3
    assert "| interest_score | +0.6667 [" in text


def test_write_report_writes_the_json_readers_use(result: EvaluationResult, tmp_path: Path) -> None:
    out = write_report(result, tmp_path, "t", {"dataset": "hand"})
    metrics = json.loads((out / "metrics.json").read_text())
    context = metrics["context"]
    assert context.pop("git commit") == git_commit()  # where the figures came from, for a results page
    assert "written" not in context  # no wall-clock field: the same config writes the same bytes
    assert context == {"dataset": "hand"}
    assert metrics["intervals"]["ndcg_at_10"]["gain_vs_item_ctr"]["interest_score"]["mean"] == pytest.approx(
        result.systems["interest_score"].metrics["ndcg_at_10"] - result.systems["item_ctr"].metrics["ndcg_at_10"]
    )
    assert set(metrics["slices"]) == {"new_items", "few_clicks", "cold_items", "users_no_history", "users_with_history"}
    assert (out / "metric_by_model.png").is_file() and "### `new_items`" in (out / "report.md").read_text()
