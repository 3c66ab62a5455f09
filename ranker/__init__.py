"""Ranking: metrics, system comparison and evaluation (the LambdaRank model and the pipeline come next)."""

from ranker.compare import Interval, compare_systems, paired_bootstrap
from ranker.evaluate import BASELINES, EvaluationResult, evaluate_systems
from ranker.metrics import MetricInputError, auc, per_group_metrics, ranking_metrics, summarize

__all__ = [
    "BASELINES",
    "EvaluationResult",
    "Interval",
    "MetricInputError",
    "auc",
    "compare_systems",
    "evaluate_systems",
    "paired_bootstrap",
    "per_group_metrics",
    "ranking_metrics",
    "summarize",
]
