"""LambdaRank fitting: boosting from the base score, and predictions that add the same margin back."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from conf import load_config
from ranker.frame import RankerInputs, RankingFrameError, base_margin
from ranker.lambdarank import predict
from ranker.metrics import per_group_metrics, summarize
from ranker.training import fit_ranker


def _impressions(split: str, n: int, seed: int) -> pl.DataFrame:
    """``n`` impressions of 8 items; clicks follow logit(ctr) + 2 * z, so ``z`` adds to CTR and ``noise`` does not.

    Every impression has a click and a non-click (nDCG is then defined the same way by LightGBM and by us).
    """
    rng = np.random.default_rng(seed)
    rows = n * 8
    ctr = rng.uniform(0.05, 0.95, rows)
    z = rng.normal(size=rows)
    p = 1 / (1 + np.exp(-(np.log(ctr / (1 - ctr)) + 2 * z)))
    clicked = (rng.uniform(size=rows) < p).astype(np.int64).reshape(n, 8)
    clicked[:, 0], clicked[:, 1] = 1, 0  # both labels in every impression
    return pl.DataFrame(
        {
            "impression_id": [f"{split}{k // 8:04d}" for k in range(rows)],
            "item_ctr_smoothed": ctr,
            "z": z,
            "noise": rng.normal(size=rows),
            "clicked": clicked.ravel(),
        }
    )


def _ndcg10(frame: pl.DataFrame, scores: np.ndarray) -> float:
    per = per_group_metrics(frame.with_columns(pl.Series("score", scores)))
    return summarize(per)["ndcg_at_10"]


@pytest.fixture(scope="module")
def fitted():
    cfg = load_config(None, ["ranker.tune={}", "ranker.params.n_estimators=40", "ranker.params.min_child_samples=20"])
    inputs = RankerInputs(features=("z", "noise"), categorical=(), vocab={}, base_score="item_ctr_smoothed")
    train, val = _impressions("t", 300, 0), _impressions("v", 100, 1)
    return fit_ranker(train, val, inputs, cfg.ranker), inputs, val


def test_base_margin_is_the_log_odds_and_names_a_bad_value() -> None:
    inputs = RankerInputs(features=("x",), categorical=(), vocab={}, base_score="item_ctr_smoothed")
    frame = pl.DataFrame({"item_ctr_smoothed": [0.5, 0.8, 0.2]})
    np.testing.assert_allclose(base_margin(frame, inputs), [0.0, np.log(4.0), -np.log(4.0)], rtol=0, atol=1e-15)
    assert base_margin(frame, RankerInputs(("x",), (), {})).tolist() == [0.0, 0.0, 0.0]  # no base score: zero
    with pytest.raises(RankingFrameError, match=r"'item_ctr_smoothed': 2 value\(s\) outside \(0, 1\), first at row 1"):
        base_margin(pl.DataFrame({"item_ctr_smoothed": [0.5, 1.0, None]}), inputs)
    with pytest.raises(RankingFrameError, match="base-score column 'item_ctr_smoothed' missing"):
        base_margin(pl.DataFrame({"x": [0.5]}), inputs)


def test_inputs_saved_before_base_scores_load_as_boosting_from_zero() -> None:
    inputs = RankerInputs(features=("x",), categorical=(), vocab={}, base_score="item_ctr_smoothed")
    assert RankerInputs.from_json(inputs.to_json()) == inputs
    old = {"features": ["x"], "categorical": [], "vocab": {}}
    assert RankerInputs.from_json(old).base_score is None


def test_prediction_is_the_base_margin_plus_the_trees(fitted) -> None:
    fit, inputs, val = fitted
    trees = fit.booster.predict(val.select("z", "noise").to_numpy())
    logit = np.log(val["item_ctr_smoothed"].to_numpy() / (1 - val["item_ctr_smoothed"].to_numpy()))
    np.testing.assert_allclose(predict(fit.booster, val, inputs), logit + trees, rtol=0, atol=1e-12)


def test_validation_during_fitting_saw_the_same_margin_as_predict(fitted) -> None:
    # LightGBM's early-stopping nDCG@10 was computed on init_score + trees; ours on predict() must match it.
    fit, inputs, val = fitted
    assert _ndcg10(val, predict(fit.booster, val, inputs)) == pytest.approx(fit.val_ndcg_at_10, abs=1e-9)
    trees_only = fit.booster.predict(val.select("z", "noise").to_numpy())
    assert abs(_ndcg10(val, trees_only) - fit.val_ndcg_at_10) > 1e-3  # the margin is not a no-op here


def test_boosting_from_item_ctr_improves_on_it_with_a_feature_that_adds_to_it(fitted) -> None:
    fit, _, val = fitted
    ctr_alone = _ndcg10(val, val["item_ctr_smoothed"].to_numpy())
    assert fit.val_ndcg_at_10 > ctr_alone + 0.02
    assert fit.booster.feature_importance("gain")[0] > fit.booster.feature_importance("gain")[1]  # z, not noise
