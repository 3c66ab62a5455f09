"""Fitting the ranker: in process (:func:`ranker.lambdarank.fit_local`) or with LightGBM's network mode on Ray
actors (:func:`ranker.distributed.fit_distributed`), chosen by ``ranker.distributed.workers``. Both run the
same grid through the same tuning loop (:func:`ranker.lambdarank.tune`) and return the same kind of result.
"""

from __future__ import annotations

import polars as pl

from conf import RankerConfig
from ranker.frame import RankerInputs
from ranker.lambdarank import FitResult, fit_local


def fit_ranker(
    train: pl.DataFrame, val: pl.DataFrame, inputs: RankerInputs, cfg: RankerConfig, progress: bool = True
) -> FitResult:
    """LambdaRank on ``train``, tuned and early-stopped on ``val``; on ``ranker.distributed.workers`` Ray actors
    when that is above 1 (Ray must be up)."""
    if cfg.distributed.workers > 1:
        from ranker.distributed import fit_distributed  # imports ray: only when asked for

        return fit_distributed(train, val, inputs, cfg, progress)
    return fit_local(train, val, inputs, cfg, progress)
