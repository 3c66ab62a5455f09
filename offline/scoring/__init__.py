"""Offline batch scoring (``recrank score``): the serving pipeline over a parquet of requests, on Ray Data."""

from offline.scoring.job import ScoreSummary, score_batch
from offline.scoring.staging import ScoringCheckError

__all__ = ["ScoreSummary", "ScoringCheckError", "score_batch"]
