"""Offline batch scoring (``recrank score``): the serving pipeline over a parquet of requests, on Ray Data."""

from offline.batch.job import ScoreSummary, score_batch
from offline.batch.staging import ScoringCheckError

__all__ = ["ScoreSummary", "ScoringCheckError", "score_batch"]
