"""The evaluation's tie-break: figures never depend on row order, in the report or in promotion."""

from __future__ import annotations

import polars as pl

from ranker.evaluate import per_impression_metrics, score_metrics


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
