"""LightGBM LambdaRank: fit on one split, early-stop and tune on the validation split.

Every candidate setting of the (small) grid in ``ranker.tune`` is fitted with early stopping on
validation nDCG@10; the best one wins. Seeds are fixed and the booster runs deterministically, so
the same data and config give the same model.

With ``ranker.base_score`` the boosting starts from ``logit(item CTR)`` (LightGBM's ``init_score``, on the
validation split too), so the trees model what the other features add to item CTR rather than re-learning
item CTR itself in steps; :func:`predict` adds the same margin back (:func:`ranker.frame.base_margin`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import polars as pl

from conf import RankerConfig
from ranker.frame import LABEL, RankerInputs, RankingFrameError, base_margin, groups, model_matrix
from runtime.progress import say

EVAL_AT = (5, 10)


@dataclass
class FitResult:
    booster: lgb.Booster
    params: dict[str, object]
    best_iteration: int
    val_ndcg_at_10: float
    trials: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0


def grid(cfg: RankerConfig) -> list[dict[str, object]]:
    base = cfg.params.model_dump()
    unknown = [k for k in cfg.tune if k not in base]
    if unknown:
        raise ValueError(f"ranker.tune: {unknown[0]!r} is not a LightGBM parameter of ranker.params")
    keys = list(cfg.tune)
    combos = itertools.product(*[cfg.tune[k] for k in keys]) if keys else [()]
    out = []
    for combo in combos:
        params = {**base, **dict(zip(keys, combo, strict=True))}
        for name in ("num_leaves", "min_child_samples", "n_estimators", "lambdarank_truncation_level"):
            params[name] = int(params[name])
        out.append(params)
    return out


@dataclass
class Dataset:
    """A split as LightGBM reads it: matrix, labels, group sizes and the base margin (``init_score``)."""

    x: np.ndarray
    y: np.ndarray
    group_sizes: np.ndarray
    init_score: np.ndarray


def dataset(frame: pl.DataFrame, inputs: RankerInputs, max_rows: int) -> Dataset:
    order, sizes = groups(frame, max_rows)
    part = frame[order]
    return Dataset(model_matrix(part, inputs), part[LABEL].to_numpy(), sizes, base_margin(part, inputs))


def estimator_params(params: dict, cfg: RankerConfig) -> dict:
    """The ``LGBMRanker`` arguments of one grid setting: the one definition for the in-process and the
    distributed fit (:mod:`ranker.distributed`), so the two cannot drift apart."""
    return {
        "objective": "lambdarank",
        "label_gain": [0.0, 1.0],
        "random_state": cfg.seed,
        "deterministic": True,
        "force_row_wise": True,
        "subsample_freq": 1 if params["subsample"] < 1 else 0,
        "verbose": -1,
        **params,
    }


def fit_model(model, train, val, features: list[str], categorical: list[int], rounds: int) -> None:
    """One LambdaRank fit of ``model`` on ``train`` (groups, base margin), early-stopped on ``val``: the call the
    in-process and the distributed fit (each worker, :mod:`ranker.distributed`) share."""
    model.fit(
        train.x,
        train.y,
        group=train.group_sizes,
        init_score=train.init_score,
        eval_X=(val.x,),
        eval_y=(val.y,),
        eval_group=[val.group_sizes],
        eval_init_score=[val.init_score],
        eval_at=EVAL_AT,
        feature_name=features,
        categorical_feature=categorical,
        callbacks=[lgb.early_stopping(rounds, first_metric_only=False, verbose=False)],
    )


@dataclass
class Trial:
    """One grid setting fitted: its booster (built only if it wins: a distributed fit ships it as text),
    the round early stopping kept and its validation nDCG@10."""

    booster: Callable[[], lgb.Booster]
    best_iteration: int
    val_ndcg_at_10: float


def tune(cfg: RankerConfig, fit_one: Callable[[dict[str, object]], Trial], progress: bool = True, label: str = ""):
    """The tuning loop of every fit: each setting of ``ranker.tune``'s grid fitted by ``fit_one`` (in process,
    or on Ray actors: :mod:`ranker.distributed`), the best validation nDCG@10 kept, a line per setting in logs
    (each can take minutes on a large table)."""
    start = time.perf_counter()
    best: FitResult | None = None
    trials = []
    for params in grid(cfg):
        trial = fit_one(params)
        trials.append(
            {**{k: params[k] for k in cfg.tune}, "best_iteration": trial.best_iteration,
             "val_ndcg_at_10": trial.val_ndcg_at_10}
        )  # fmt: skip
        say(f"ranker trial {len(trials)}{label}: {trials[-1]}, {time.perf_counter() - start:.0f}s", progress)
        if best is None or trial.val_ndcg_at_10 > best.val_ndcg_at_10:
            best = FitResult(trial.booster(), params, trial.best_iteration, trial.val_ndcg_at_10)
    if best is None:
        raise RankingFrameError("ranker: empty tuning grid")
    best.trials, best.seconds = trials, time.perf_counter() - start
    return best


def fit_local(
    train: pl.DataFrame, val: pl.DataFrame, inputs: RankerInputs, cfg: RankerConfig, progress: bool = True
) -> FitResult:
    """LambdaRank on ``train`` in this process, tuned on ``val`` (:func:`tune`)."""
    fit_on, val_on = dataset(train, inputs, cfg.max_group_rows), dataset(val, inputs, cfg.max_group_rows)
    categorical = [inputs.features.index(c) for c in inputs.categorical]

    def fit_one(params: dict[str, object]) -> Trial:
        model = lgb.LGBMRanker(**estimator_params(params, cfg), n_jobs=cfg.num_threads)
        fit_model(model, fit_on, val_on, list(inputs.features), categorical, cfg.early_stopping_rounds)
        score = float(model.best_score_["valid_0"]["ndcg@10"])
        return Trial(lambda: model.booster_, int(model.best_iteration_), score)

    return tune(cfg, fit_one, progress)


def predict(booster: lgb.Booster, frame: pl.DataFrame, inputs: RankerInputs, num_threads: int = 1) -> np.ndarray:
    """Scores of ``frame``'s rows: the base margin plus the trees (the booster alone is only the correction).

    One thread by default: for request-sized inputs OpenMP start-up dominates.
    """
    return base_margin(frame, inputs) + booster.predict(model_matrix(frame, inputs), num_threads=num_threads)
