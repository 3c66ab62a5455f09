"""Ranking: metrics, comparison, slices, the ranking frame, LambdaRank, the ranking pipeline, loading a registered
pair."""

from ranker.compare import Interval, compare_systems, paired_bootstrap
from ranker.evaluate import BASELINES, EvaluationResult, evaluate_systems
from ranker.frame import RankerInputs, RankingFrameError, model_matrix, ranking_frame
from ranker.metrics import MetricInputError, auc, per_group_metrics, summarize
from ranker.pipeline import Candidate, RankingPipeline, RankingRequestError
from ranker.slices import SLICES, SliceDef, SliceError, new_item_ids

__all__ = [
    "BASELINES",
    "SLICES",
    "Candidate",
    "EvaluationResult",
    "Interval",
    "MetricInputError",
    "RankerInputs",
    "RankingFrameError",
    "RankingPipeline",
    "RankingRequestError",
    "SliceDef",
    "SliceError",
    "auc",
    "compare_systems",
    "evaluate_systems",
    "model_matrix",
    "new_item_ids",
    "paired_bootstrap",
    "per_group_metrics",
    "ranking_frame",
    "summarize",
]
