"""Ranking metrics as pure functions: a frame of (group, label, score) in, numbers out.

Per-impression metrics (AUC, MRR, nDCG@k) are computed for every group in one vectorised pass and
returned as a frame, so evaluation can average them, slice them, or bootstrap over impressions.

Conventions (the usual ones, stated so the numbers can be checked by hand):

* labels are binary; gains for nDCG are the labels, discount ``1 / log2(rank + 1)``;
* AUC of a group is the Mann-Whitney statistic with ties counted as one half; groups whose labels are
  all equal have no AUC (null) and are skipped by the mean;
* MRR and nDCG of a group with no positive are null and skipped;
* two MRRs, named apart because they differ on impressions with several clicks: ``mrr`` is *first-hit*
  reciprocal rank, 1 / rank of the highest-ranked click (the name stays on this one: promotion configs and
  stored ``metrics.json`` files mean it); ``mrr_mind`` is the MIND / microsoft-recommenders ``mrr_score``,
  the mean over the clicked items of 1 / rank (``sum(y_ranked / rank) / sum(y)``), so labels ranked
  ``[0, 1, 0, 1]`` give ``mrr`` 1/2 and ``mrr_mind`` (1/2 + 1/4) / 2 = 0.375. With one click they agree;
* ranks order by score descending; equal scores keep the order of a tie-break column (default: row
  order), so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl


class MetricInputError(ValueError):
    """The frame handed to a metric is unusable; the message names the column."""


def _check(frame: pl.DataFrame, group: str, label: str, score: str) -> None:
    for name in (group, label, score):
        if name not in frame.columns:
            raise MetricInputError(f"column {name!r} not in frame (columns: {frame.columns})")
    bad = frame.filter(~pl.col(label).is_in([0, 1]))
    if bad.height:
        raise MetricInputError(f"column {label!r}: {bad.height} label(s) outside 0/1")
    nulls = frame[score].null_count() + (frame[score].is_nan().sum() if frame[score].dtype.is_float() else 0)
    if nulls:
        raise MetricInputError(f"column {score!r}: {nulls} null/NaN score(s)")


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pl.Series(s).rank("average").to_numpy()  # ascending, ties averaged
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_group_metrics(
    frame: pl.DataFrame,
    group: str = "impression_id",
    label: str = "clicked",
    score: str = "score",
    ks: Sequence[int] = (5, 10),
    tie_break: str | None = None,
) -> pl.DataFrame:
    """One row per group: ``n``, ``n_pos``, ``auc``, ``mrr``, ``mrr_mind`` and ``ndcg_at_{k}`` for each k."""
    _check(frame, group, label, score)
    order = [group, score] + ([tie_break] if tie_break else [])
    desc = [False, True] + ([False] if tie_break else [])
    ranked = (
        frame.select(group, label, score, *([tie_break] if tie_break else []))
        .with_row_index("_row")
        .sort([*order, "_row"], descending=[*desc, False])
        .with_columns(
            pl.int_range(1, pl.len() + 1).over(group).alias("_rank"),  # 1 = top, ties broken by tie_break/row
            pl.col(score).rank("average").over(group).alias("_asc_rank"),  # for AUC: ascending, ties averaged
        )
    )
    y = pl.col(label).cast(pl.Float64)
    disc = 1.0 / (pl.col("_rank").cast(pl.Float64) + 1.0).log(2)
    aggs = [
        pl.len().alias("n"),
        y.sum().cast(pl.Int64).alias("n_pos"),
        (pl.col("_asc_rank") * y).sum().alias("_pos_rank_sum"),
        pl.col("_rank").filter(pl.col(label) == 1).min().alias("_first_hit"),
        (y / pl.col("_rank").cast(pl.Float64)).sum().alias("_rr_sum"),
    ]
    aggs += [(y * disc).filter(pl.col("_rank") <= k).sum().alias(f"_dcg{k}") for k in ks]
    per = ranked.group_by(group, maintain_order=True).agg(aggs)
    n_neg = pl.col("n") - pl.col("n_pos")
    has_both = (pl.col("n_pos") > 0) & (n_neg > 0)
    out = per.with_columns(
        pl.when(has_both)
        .then((pl.col("_pos_rank_sum") - pl.col("n_pos") * (pl.col("n_pos") + 1) / 2) / (pl.col("n_pos") * n_neg))
        .alias("auc"),
        pl.when(pl.col("n_pos") > 0).then(1.0 / pl.col("_first_hit")).alias("mrr"),
        pl.when(pl.col("n_pos") > 0).then(pl.col("_rr_sum") / pl.col("n_pos")).alias("mrr_mind"),
        *[
            pl.when(pl.col("n_pos") > 0).then(pl.col(f"_dcg{k}") / _ideal_dcg(pl.col("n_pos"), k)).alias(f"ndcg_at_{k}")
            for k in ks
        ],
    )
    return out.select(group, "n", "n_pos", "auc", "mrr", "mrr_mind", *[f"ndcg_at_{k}" for k in ks])


def _ideal_dcg(n_pos: pl.Expr, k: int) -> pl.Expr:
    """IDCG@k for binary gains: sum_{i=1..min(k, n_pos)} 1/log2(i+1), via a lookup of the k prefix sums."""
    prefix = [0.0]
    for i in range(1, k + 1):
        prefix.append(prefix[-1] + 1.0 / math.log2(i + 1))
    return pl.min_horizontal(n_pos, pl.lit(k)).replace_strict(list(range(k + 1)), prefix, return_dtype=pl.Float64)


# Per-impression metrics every evaluation averages and bootstraps (``mlflow.promotion_metric`` picks one of them).
METRIC_NAMES = ("auc", "mrr", "mrr_mind", "ndcg_at_5", "ndcg_at_10")


def summarize(per_group: pl.DataFrame, metrics: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """Mean of each per-group metric over the groups where it is defined, plus the group counts."""
    out = {
        m: float(per_group[m].drop_nulls().mean()) if per_group[m].drop_nulls().len() else float("nan") for m in metrics
    }
    out["impressions"] = per_group.height
    out["impressions_with_auc"] = int(per_group["auc"].drop_nulls().len())
    return out


# Scored evaluation frames: one score per row of (impression_id, clicked, item_id), as every report computes them.
GROUP, LABEL, TIE = "impression_id", "clicked", "_tie"


def tie_break() -> pl.Expr:
    """The tie-break column every evaluation ranks equal scores by: a fixed hash of the item id.

    Not row order: feature frames are sorted by position, and in ml100k position is the order the user rated
    in, which would leak into every system that ties (smoothed CTR ties on all items with no history).
    """
    return pl.col("item_id").hash(seed=3).alias(TIE)


def score_metrics(frame: pl.DataFrame, scores: pl.Series | Sequence[float]) -> dict[str, float]:
    """Point metrics of one score per row of ``frame`` (one split), with the report's tie-break."""
    return scored_metrics(frame, scores)[1]


def scored_metrics(frame: pl.DataFrame, scores: pl.Series | Sequence[float]) -> tuple[pl.DataFrame, dict[str, float]]:
    """(per-impression metrics, point metrics) of one score per row of ``frame``, as :func:`evaluate_systems`
    computes them: what the freshness comparison bootstraps, so its point-in-time row is the report's figure."""
    return system_metrics(_with_score(frame, scores), "_score")


def per_impression_metrics(frame: pl.DataFrame, scores: pl.Series | Sequence[float]) -> pl.DataFrame:
    """Per-impression metrics of one score per row of ``frame``, with the report's tie-break.

    What promotion compares two model versions on, so a champion's figures there are its report figures.
    """
    return per_group_metrics(_with_score(frame, scores), GROUP, LABEL, "_score", tie_break=TIE)


def _with_score(frame: pl.DataFrame, scores: pl.Series | Sequence[float]) -> pl.DataFrame:
    return frame.select(GROUP, LABEL, "item_id").with_columns(pl.Series("_score", scores), tie_break())


def system_metrics(frame: pl.DataFrame, score: str) -> tuple[pl.DataFrame, dict[str, float]]:
    per = per_group_metrics(frame, GROUP, LABEL, score, tie_break=TIE)
    summary = summarize(per)
    summary["global_auc"] = auc(frame[LABEL].to_numpy(), frame[score].to_numpy())
    return per, summary


def impression_auc(frame: pl.DataFrame) -> float:
    """Impression-mean AUC of a scored frame (impression_id, clicked, score): the text model's validation metric."""
    return summarize(per_group_metrics(frame, score="score"))["auc"]
