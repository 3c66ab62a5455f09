"""The evaluation: its tie-break (figures never depend on row order), its slices and its gains over references."""

from __future__ import annotations

import json

import eval_case
import polars as pl
import pytest

from ranker.evaluate import EvaluationResult, evaluate_systems
from ranker.metrics import METRIC_NAMES, per_impression_metrics, score_metrics
from ranker.slices import SLICE_NAMES, SliceError, new_item_ids


def test_tied_scores_rank_the_same_whatever_the_row_order() -> None:
    # One impression, every score tied: with row order as tie-break the first row would always rank first
    # (in ml100k rows are in rating order, so that would leak); the item-id hash ranks them the same either way.
    frame = pl.DataFrame(
        {"impression_id": ["i"] * 4, "item_id": ["a", "b", "c", "d"], "clicked": [1, 0, 0, 0], "split": ["test"] * 4}
    )
    scores = [0.3] * 4
    forward = per_impression_metrics(frame, scores)
    backward = per_impression_metrics(frame.reverse(), scores)
    assert forward["mrr"].to_list() == backward["mrr"].to_list()
    assert forward["ndcg_at_10"].to_list() == backward["ndcg_at_10"].to_list()
    assert forward["auc"].to_list() == [0.5]  # ties count one half, whatever the order
    summary = score_metrics(frame, scores)
    assert summary["mrr"] == forward["mrr"][0] and summary["ndcg_at_10"] == forward["ndcg_at_10"][0]
    # a real order is respected: the clicked item scored highest ranks first
    assert per_impression_metrics(frame, [0.9, 0.1, 0.2, 0.3])["mrr"].to_list() == [1.0]


# --- slices and gains on the hand-built case of tests/eval_case.py --------------------------------------------------
# AUC per test impression (Mann-Whitney, ties one half), by hand:
#   item_ctr:       i1 (a>n2, a>b, n1~n2, n1<b) 2.5/4   i2 (n2~n1, n2<a, c>n1, c<a) 1.5/4   i3 0
#   interest_score: 1, 1, 1 (ranks every impression perfectly)
#   features-only:  i1 2/4, i2 2/4, i3 0
HAND_AUC = {
    # slice: ({system: AUC}, rows matching, rows counted, impressions counted)
    None: ({"item_ctr": 1 / 3, "interest_score": 1.0, "lightgbm_features_only": 1 / 3}, 11, 11, 3),
    # n1 and n2 only; i3 keeps n1 alone (one label) and is dropped: i1 (n1 1 vs n2 0), i2 (n2 1 vs n1 0)
    "new_items": ({"item_ctr": 0.5, "interest_score": 1.0, "lightgbm_features_only": 0.5}, 5, 4, 2),
    # item_clicks_before <= 1: i1 {n1, n2, b}: 0.5/2; i2 {n1, n2, c}: 1.5/2; i3 {n1, b}: 0
    "few_clicks": ({"item_ctr": 1 / 3, "interest_score": 1.0, "lightgbm_features_only": 1 / 3}, 8, 8, 3),
    # item_impressions_before <= 0: i1 {n1, n2} only
    "cold_items": ({"item_ctr": 0.5, "interest_score": 1.0, "lightgbm_features_only": 0.0}, 2, 2, 1),
    "users_no_history": ({"item_ctr": 0.3125, "interest_score": 1.0, "lightgbm_features_only": 0.25}, 7, 7, 2),
    "users_with_history": ({"item_ctr": 0.375, "interest_score": 1.0, "lightgbm_features_only": 0.5}, 4, 4, 1),
}


@pytest.fixture(scope="module")
def case() -> EvaluationResult:
    feats = eval_case.features()
    new = new_item_ids(feats, eval_case.CUTOFF)
    assert new.to_list() == ["n1", "n2"]  # a, b, c were shown in train (ts < cut-off)
    test = feats.filter(pl.col("split") == "test")
    return evaluate_systems(test, eval_case.SYSTEMS, eval_case.config(), new_items=new)


@pytest.mark.parametrize("where", list(HAND_AUC))
def test_slice_sizes_and_aucs_are_the_hand_computed_ones(case: EvaluationResult, where: str | None) -> None:
    aucs, matching, rows, impressions = HAND_AUC[where]
    if where is None:
        assert (case.rows, case.impressions) == (rows, impressions)
        got = {name: res.metrics["auc"] for name, res in case.systems.items()}
    else:
        sl = case.slices[where]
        assert (sl.rows_matching, sl.rows, sl.impressions) == (matching, rows, impressions)
        got = {name: res.slice_metrics[where]["auc"] for name, res in case.systems.items()}
    assert got == pytest.approx(aucs, abs=1e-12)


def test_slice_table_covers_every_definition(case: EvaluationResult) -> None:
    assert list(case.slices) == list(SLICE_NAMES) == [k for k in HAND_AUC if k]
    assert case.slices["users_no_history"].keeps == "impressions" and case.slices["new_items"].keeps == "rows"


def test_gains_over_both_references_are_paired_differences_of_the_point_metrics(case: EvaluationResult) -> None:
    assert case.references == ["item_ctr", "lightgbm_features_only"] and case.baseline == "item_ctr"
    for where in HAND_AUC:
        point = (
            {n: r.metrics for n, r in case.systems.items()}
            if where is None
            else {n: r.slice_metrics[where] for n, r in case.systems.items()}
        )
        for ref in case.references:
            for metric in METRIC_NAMES:
                gains = case.gains(ref, metric, where)
                assert set(gains) == set(case.systems) - {ref}
                for name, iv in gains.items():
                    assert iv.mean == pytest.approx(point[name][metric] - point[ref][metric], abs=1e-12)
                    assert iv.low <= iv.mean + 1e-12 and iv.mean <= iv.high + 1e-12
    # On new items the text model is perfect and item CTR ties: a gain of exactly +0.5 in every resample.
    iv = case.gains("item_ctr", "auc", "new_items")["interest_score"]
    assert (iv.mean, iv.low, iv.high) == (0.5, 0.5, 0.5)
    # Against features-only (AUC 0 on i1, 1 on i2) the gain is +0.5 but resampling 2 impressions spans 0 to 1.
    iv = case.gains("lightgbm_features_only", "auc", "new_items")["interest_score"]
    assert (iv.mean, iv.low, iv.high) == (0.5, 0.0, 1.0)


def test_to_json_carries_slices_and_both_gain_tables(case: EvaluationResult) -> None:
    out = case.to_json()
    assert out["references"] == ["item_ctr", "lightgbm_features_only"] and out["baseline"] == "item_ctr"
    assert set(out["intervals"]["auc"]) == {"systems", "gain_vs_item_ctr", "gain_vs_lightgbm_features_only"}
    assert out["intervals"]["auc"]["gain_vs_item_ctr"]["interest_score"]["mean"] == pytest.approx(2 / 3)
    new = out["slices"]["new_items"]
    assert (new["rows_matching"], new["rows"], new["impressions"], new["available"]) == (5, 4, 2, True)
    assert new["intervals"]["auc"]["gain_vs_item_ctr"]["interest_score"] == {"mean": 0.5, "low": 0.5, "high": 0.5}
    assert out["systems"]["item_ctr"]["slices"]["new_items"]["auc"] == 0.5
    assert out["systems"]["item_ctr"]["cold_items"]["auc"] == 0.5 and out["cold_rows"] == 2  # older readers
    json.dumps(out)  # plain JSON all the way down


def test_without_new_item_ids_the_slice_is_unavailable_not_wrong() -> None:
    test = eval_case.features().filter(pl.col("split") == "test")
    result = evaluate_systems(test, eval_case.SYSTEMS, eval_case.config(), references=("item_ctr",))
    assert not result.slices["new_items"].available and result.slices["new_items"].impressions == 0
    assert any("new_items" in n for n in result.notes)
    assert result.references == ["item_ctr"] and "gain_vs_lightgbm_features_only" not in result.intervals["auc"]


def test_a_slice_column_missing_is_named() -> None:
    test = eval_case.features().filter(pl.col("split") == "test").drop("user_history_len")
    with pytest.raises(SliceError, match=r"users_no_history.*user_history_len"):
        evaluate_systems(test, eval_case.SYSTEMS, eval_case.config())
