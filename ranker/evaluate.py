"""Evaluate scoring systems on the same test impressions, with paired bootstrap intervals.

A *system* is a named score expression over the feature frame (a baseline column today; the text
model and the ranker add theirs as columns). Every system is evaluated on exactly the same rows, with
the same deterministic tie-break, so differences are differences between systems, not between samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from conf import EvaluationConfig
from ranker.compare import Interval, compare_systems
from ranker.metrics import METRIC_NAMES, auc, per_group_metrics, summarize

GROUP, LABEL, TIE = "impression_id", "clicked", "_tie"

# Single-signal baselines over the behavioural features. ``random`` is the floor every system must clear.
BASELINES: dict[str, pl.Expr] = {
    "random": pl.struct("impression_id", "item_id").hash(seed=17).cast(pl.Float64),
    "popularity": pl.col("item_impressions_before").cast(pl.Float64),
    "item_ctr": pl.col("item_ctr_smoothed"),
}


@dataclass
class SystemResult:
    """Point metrics of one system on the whole test set and on the cold-item slice."""

    metrics: dict[str, float]
    cold_metrics: dict[str, float]


@dataclass
class EvaluationResult:
    split: str
    rows: int
    impressions: int
    baseline: str
    systems: dict[str, SystemResult]
    intervals: dict[str, dict[str, dict[str, Interval]]]
    cold_rows: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "split": self.split,
            "rows": self.rows,
            "impressions": self.impressions,
            "baseline": self.baseline,
            "cold_rows": self.cold_rows,
            "systems": {
                name: {"metrics": res.metrics, "cold_items": res.cold_metrics} for name, res in self.systems.items()
            },
            "intervals": {
                metric: {kind: {name: iv.to_json() for name, iv in ivs.items()} for kind, ivs in by_kind.items()}
                for metric, by_kind in self.intervals.items()
            },
            "notes": self.notes,
        }


def tie_break() -> pl.Expr:
    """The tie-break column every evaluation ranks equal scores by: a fixed hash of the item id.

    Not row order: feature frames are sorted by position, and in ml100k position is the order the user rated
    in, which would leak into every system that ties (smoothed CTR ties on all items with no history).
    """
    return pl.col("item_id").hash(seed=3).alias(TIE)


def score_metrics(frame: pl.DataFrame, scores: pl.Series | Sequence[float]) -> dict[str, float]:
    """Point metrics of one score per row of ``frame`` (one split), with the report's tie-break."""
    return _system_metrics(_with_score(frame, scores), "_score")[1]


def per_impression_metrics(frame: pl.DataFrame, scores: pl.Series | Sequence[float]) -> pl.DataFrame:
    """Per-impression metrics of one score per row of ``frame``, with the report's tie-break.

    What promotion compares two model versions on, so a champion's figures there are its report figures.
    """
    return per_group_metrics(_with_score(frame, scores), GROUP, LABEL, "_score", tie_break=TIE)


def _with_score(frame: pl.DataFrame, scores: pl.Series | Sequence[float]) -> pl.DataFrame:
    return frame.select(GROUP, LABEL, "item_id").with_columns(pl.Series("_score", scores), tie_break())


def _system_metrics(frame: pl.DataFrame, score: str) -> tuple[pl.DataFrame, dict[str, float]]:
    per = per_group_metrics(frame, GROUP, LABEL, score, tie_break=TIE)
    summary = summarize(per)
    summary["global_auc"] = auc(frame[LABEL].to_numpy(), frame[score].to_numpy())
    return per, summary


def evaluate_systems(
    frame: pl.DataFrame,
    systems: Mapping[str, pl.Expr],
    cfg: EvaluationConfig,
    baseline: str = "popularity",
    split: str = "test",
) -> EvaluationResult:
    """Score ``frame`` (one split of the feature frame) with every system and compare them.

    The cold-item slice keeps, within each impression, the candidates shown at most
    ``cfg.cold_item_max_impressions`` times before; impressions with both labels among them count.
    """
    if frame.height == 0:
        raise ValueError(f"no rows in the {split} split to evaluate")
    scored = frame.with_columns(
        *[expr.alias(f"score__{name}") for name, expr in systems.items()],
        tie_break(),
    )
    cold = scored.filter(pl.col("item_impressions_before") <= cfg.cold_item_max_impressions)
    per_group: dict[str, pl.DataFrame] = {}
    results: dict[str, SystemResult] = {}
    for name in systems:
        per, summary = _system_metrics(scored, f"score__{name}")
        per_group[name] = per
        cold_summary = _system_metrics(cold, f"score__{name}")[1] if cold.height else {}
        results[name] = SystemResult(metrics=summary, cold_metrics=cold_summary)
    intervals = compare_systems(
        per_group, METRIC_NAMES, cfg.bootstrap_samples, cfg.seed, baseline if baseline in systems else None
    )
    return EvaluationResult(
        split=split,
        rows=scored.height,
        impressions=scored[GROUP].n_unique(),
        baseline=baseline,
        systems=results,
        intervals=intervals,
        cold_rows=cold.height,
    )
