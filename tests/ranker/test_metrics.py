"""Metrics on hand-computed cases and at their limits."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import polars as pl
import pytest

from conf.schema import MlflowConfig
from ranker.metrics import METRIC_NAMES, MetricInputError, auc, per_group_metrics, summarize


def ranking_metrics(frame: pl.DataFrame) -> dict[str, float]:
    """Impression-mean metrics and global AUC of a scored frame (impression_id, clicked, score)."""
    out = summarize(per_group_metrics(frame))
    out["global_auc"] = auc(frame["clicked"].to_numpy(), frame["score"].to_numpy())
    return out


def frame(groups: list[tuple[str, list[int], list[float]]]) -> pl.DataFrame:
    rows = [(g, y, s) for g, ys, ss in groups for y, s in zip(ys, ss, strict=True)]
    return pl.DataFrame(rows, schema=["impression_id", "clicked", "score"], orient="row")


def test_hand_computed_case() -> None:
    f = frame([("a", [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]), ("b", [0, 0, 1], [0.3, 0.2, 0.1])])
    per = per_group_metrics(f).sort("impression_id")
    a, b = per.to_dicts()
    # a: positives at ranks 1 and 3. AUC: 3 of 4 (pos, neg) pairs ordered. DCG = 1 + 1/log2(4) = 1.5,
    # IDCG = 1 + 1/log2(3). b: the only positive at rank 3: MRR 1/3, nDCG = (1/log2 4) / 1 = 0.5, AUC 0.
    assert a["auc"] == pytest.approx(0.75)
    assert a["mrr"] == 1.0
    assert a["ndcg_at_5"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert b["auc"] == 0.0 and b["mrr"] == pytest.approx(1 / 3) and b["ndcg_at_10"] == pytest.approx(0.5)
    m = ranking_metrics(f)
    assert m["auc"] == pytest.approx(0.375)
    assert m["mrr"] == pytest.approx(2 / 3)
    # Global AUC over all 7 rows: 3 positives x 4 negatives = 12 pairs, 7 ordered + one tie (0.1 vs 0.1).
    assert m["global_auc"] == pytest.approx(7.5 / 12)


def test_ndcg_cut_at_k() -> None:
    # 12 items, the only positive at rank 7: counts for nDCG@10 (1/log2 8 = 1/3) but not nDCG@5.
    scores = list(range(12, 0, -1))
    labels = [0] * 12
    labels[6] = 1
    m = per_group_metrics(frame([("g", labels, [float(s) for s in scores])])).row(0, named=True)
    assert m["ndcg_at_5"] == 0.0
    assert m["ndcg_at_10"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx(1 / 7)


def test_perfect_and_reversed_limits() -> None:
    labels = [1, 1, 0, 0, 0]
    perfect = ranking_metrics(frame([("g", labels, [5.0, 4.0, 3.0, 2.0, 1.0])]))
    assert perfect["auc"] == perfect["mrr"] == 1.0
    assert perfect["ndcg_at_5"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["ndcg_at_10"] == pytest.approx(1.0, abs=1e-12)
    reverse = ranking_metrics(frame([("g", labels, [1.0, 2.0, 3.0, 4.0, 5.0])]))
    assert reverse["auc"] == 0.0 and reverse["global_auc"] == 0.0
    assert reverse["mrr"] == pytest.approx(1 / 4)
    worst = (1 / math.log2(5) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))  # positives at ranks 4 and 5
    assert reverse["ndcg_at_5"] == pytest.approx(worst)


def test_single_label_groups_are_skipped_by_auc() -> None:
    f = frame([("all-neg", [0, 0], [0.1, 0.2]), ("all-pos", [1, 1], [0.1, 0.2]), ("mixed", [1, 0], [0.9, 0.1])])
    per = per_group_metrics(f).sort("impression_id")
    assert per["auc"].to_list() == [None, None, 1.0]
    assert per["mrr"].to_list() == [None, 1.0, 1.0]  # no positive: no MRR/nDCG
    m = ranking_metrics(f)
    assert m["auc"] == 1.0 and m["impressions"] == 3 and m["impressions_with_auc"] == 1


def test_ties_are_half_in_auc_and_deterministic_in_ranking() -> None:
    f = frame([("g", [1, 0], [0.5, 0.5])])
    assert per_group_metrics(f)["auc"][0] == 0.5
    with_tie = f.with_columns(pl.Series("tb", [1, 0]))  # tie-break puts the negative first
    assert per_group_metrics(with_tie, tie_break="tb")["mrr"][0] == 0.5


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_bad_input_names_the_column() -> None:
    with pytest.raises(MetricInputError, match="'clicked': 1 label"):
        per_group_metrics(frame([("g", [2, 0], [0.1, 0.2])]))
    with pytest.raises(MetricInputError, match="'score': 1 null/NaN"):
        per_group_metrics(frame([("g", [1, 0], [float("nan"), 0.2])]))
    with pytest.raises(MetricInputError, match="column 'nope'"):
        per_group_metrics(frame([("g", [1, 0], [0.1, 0.2])]), score="nope")


def test_first_hit_and_mind_mrr_on_two_clicks() -> None:
    # labels ranked [0, 1, 0, 1]: first hit at rank 2 -> 1/2; MIND averages 1/rank over both clicks:
    # (1/2 + 1/4) / 2 = 0.375. With a single click the two agree (group "one": click at rank 3).
    f = frame([("two", [0, 1, 0, 1], [4.0, 3.0, 2.0, 1.0]), ("one", [0, 0, 1], [3.0, 2.0, 1.0])])
    per = per_group_metrics(f).sort("impression_id")
    one, two = per.to_dicts()
    assert two["mrr"] == 0.5 and two["mrr_mind"] == 0.375
    assert one["mrr"] == one["mrr_mind"] == pytest.approx(1 / 3)
    assert ranking_metrics(f)["mrr_mind"] == pytest.approx((0.375 + 1 / 3) / 2)


def mind_mrr_score(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """microsoft-recommenders' ``mrr_score`` (recommenders/models/deeprec/deeprec_utils.py), verbatim."""
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order)
    rr_score = y_true / (np.arange(len(y_true)) + 1)
    return float(np.sum(rr_score) / np.sum(y_true))


def test_mind_mrr_matches_the_recommenders_definition() -> None:
    rng = np.random.default_rng(7)
    groups = []
    for g in range(30):
        n = int(rng.integers(2, 12))
        y = rng.integers(0, 2, n)
        y[0] = 1  # every group has a click, as MIND impressions do
        groups.append((f"g{g:02d}", list(map(int, y)), list(rng.permutation(n).astype(float))))  # no ties
    per = per_group_metrics(frame(groups)).sort("impression_id")
    want = [mind_mrr_score(np.array(y), np.array(s)) for _, y, s in sorted(groups)]
    assert per["mrr_mind"].to_list() == pytest.approx(want, abs=1e-12)
    assert (per["mrr_mind"] <= per["mrr"] + 1e-12).all()  # averaging over later clicks can only lower it


def test_every_promotion_metric_is_a_per_impression_metric() -> None:
    # promotion bootstraps mlflow.promotion_metric over per-impression frames: each allowed value must exist there
    allowed = get_args(MlflowConfig.model_fields["promotion_metric"].annotation)
    assert allowed and set(allowed) <= set(METRIC_NAMES)
