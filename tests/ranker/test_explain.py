"""Explanations of a score (:mod:`ranker.explain`): they add up to the very score the ranking used.

A one-split booster whose contributions are worked out by hand from its dump, then the served world's
champion pipeline (text ranker, category as a categorical, boosted from ``logit(item_ctr_smoothed)``), every
row checked against ``score_rows`` and against LightGBM's ``pred_contrib``.
"""

from __future__ import annotations

import math
from unittest import mock

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from conf import Config
from ranker.explain import EXPLANATION_COLUMNS, Contribution, explain_frame, explanation_columns
from ranker.frame import RankerInputs, model_matrix
from ranker.pipeline import Candidate, ranking_order

TOL = 1e-9


def _adds_up(e) -> float:
    """How far ``base + prior + top + rest`` is from the explanation's score."""
    return abs(e.base_value + e.prior + sum(c.contribution for c in e.contributions) + e.rest - e.score)


# --- a booster small enough to explain by hand ---------------------------------------------------------------


STUMP_INPUTS = RankerInputs(
    features=("f", "g", "cat"), categorical=("cat",), vocab={"cat": ("a", "b", "c")}, base_score="ctr"
)


@pytest.fixture(scope="module")
def stump() -> lgb.Booster:
    """One tree, one split, on ``cat`` (the label is ``cat == "b"``); ``f`` and ``g`` are noise it never uses."""
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 3, 300).astype(float)
    x = np.column_stack([rng.normal(size=300), rng.normal(size=300), cat])
    data = lgb.Dataset(x, (cat == 1).astype(float), categorical_feature=[2], params={"verbose": -1})
    params = {"objective": "regression", "num_leaves": 2, "learning_rate": 0.5, "verbose": -1, "seed": 0}
    return lgb.train(params, data, num_boost_round=1)


def stump_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "f": [0.3, -1.2, 2.0, None, 0.0],
            "g": [1.0, 0.5, -0.7, 0.1, 0.0],
            "cat": ["b", "a", "c", "b", "zz"],  # "zz": outside the vocabulary, a missing value to the booster
            "ctr": [0.2, 0.5, 0.05, 0.9, 0.5],
        }
    )


def test_a_one_split_tree_explained_by_hand(stump: lgb.Booster) -> None:
    tree = stump.dump_model()["tree_info"][0]["tree_structure"]
    assert tree["split_feature"] == 2 and tree["decision_type"] == "=="  # the split is on cat
    left, right = tree["left_child"], tree["right_child"]
    assert tree["threshold"] == "1"  # cat == "b" goes left
    # TreeSHAP of one split: the expected value is the leaves' mean weighted by training rows, and the split
    # feature gets the rest of the row's leaf value; the unused features get nothing.
    expected = (left["leaf_count"] * left["leaf_value"] + right["leaf_count"] * right["leaf_value"]) / tree[
        "internal_count"
    ]
    frame = stump_frame()
    out = explain_frame(stump, frame, STUMP_INPUTS, top=2)
    for e, cat, ctr in zip(out, frame["cat"], frame["ctr"], strict=True):
        leaf = left if cat == "b" else right
        assert e.base_value == pytest.approx(expected, abs=1e-12)
        assert e.prior == pytest.approx(math.log(ctr / (1 - ctr)), abs=1e-12)
        assert e.score == pytest.approx(math.log(ctr / (1 - ctr)) + leaf["leaf_value"], abs=1e-12)
        # cat first; then f and g tie at 0.0, and ties go in feature order: f shown, g folded into rest
        assert [c.feature for c in e.contributions] == ["cat", "f"]
        assert e.contributions[0].contribution == pytest.approx(leaf["leaf_value"] - expected, abs=1e-12)
        assert e.contributions[1].contribution == 0.0 and e.rest == 0.0
        assert e.prior_term == Contribution("prior: logit(ctr)", ctr, e.prior)
        assert _adds_up(e) <= TOL
    assert [e.contributions[0].value for e in out] == ["b", "a", "c", "b", None]  # names; unknown = missing
    assert [e.contributions[1].value for e in out] == [0.3, -1.2, 2.0, None, 0.0]  # a null is None, 0.0 is 0.0


def test_top_caps_the_list_and_rest_holds_the_others(stump: lgb.Booster) -> None:
    frame = stump_frame()
    everything = explain_frame(stump, frame, STUMP_INPUTS, top=10)  # more than there are features: all of them
    nothing = explain_frame(stump, frame, STUMP_INPUTS, top=0)
    for full, none in zip(everything, nothing, strict=True):
        assert [c.feature for c in full.contributions] == ["cat", "f", "g"] and full.rest == 0.0
        assert none.contributions == [] and none.rest == sum(c.contribution for c in full.contributions)
        assert none.score == full.score and _adds_up(none) <= TOL
    with pytest.raises(ValueError, match="top"):
        explain_frame(stump, frame, STUMP_INPUTS, top=-1)


def test_without_a_base_score_the_prior_is_zero(stump: lgb.Booster) -> None:
    inputs = RankerInputs(STUMP_INPUTS.features, STUMP_INPUTS.categorical, STUMP_INPUTS.vocab, base_score=None)
    for e in explain_frame(stump, stump_frame().drop("ctr"), inputs, top=1):
        assert e.prior == 0.0 and e.prior_term is None and _adds_up(e) <= TOL


def test_explanation_columns_hold_values_as_strings(stump: lgb.Booster) -> None:
    out = explain_frame(stump, stump_frame(), STUMP_INPUTS, top=2)
    cols = explanation_columns(out)
    assert cols.columns == list(EXPLANATION_COLUMNS)
    assert cols["explanation"].dtype == pl.List(
        pl.Struct({"feature": pl.String, "value": pl.String, "contribution": pl.Float64})
    )
    first = cols["explanation"][0].to_list()
    assert [(t["feature"], t["value"]) for t in first] == [("cat", "b"), ("f", "0.3")]
    assert cols["explanation"][3].to_list()[1]["value"] is None  # missing stays null, not "None"
    total = cols["base_value"] + cols["prior"] + cols["rest"]
    total = total + cols["explanation"].list.eval(pl.element().struct.field("contribution")).list.sum()
    assert np.abs(total.to_numpy() - np.array([e.score for e in out])).max() <= TOL


# --- the served world's pipeline --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(served_world: Config):
    """The champion pipeline of the served world, as serving loads it."""
    import torch

    from offline.tracking import setup
    from ranker.loading import load_pipeline_version

    cfg = served_world
    return load_pipeline_version(
        setup(cfg), cfg.mlflow.model_prefix, "1", cfg.data.dir, cfg.textmodel.cache_dir, torch.device("cpu")
    )


@pytest.fixture(scope="module")
def rows(pipeline) -> pl.DataFrame:
    """Eight requests of known items for snapshot users and a user the snapshot has never seen, and one request
    with an item the model has never seen: its text and a category outside the ranker's vocabulary."""
    rng = np.random.default_rng(0)
    users = pipeline.snapshot.users["user_id"].to_list()
    items = list(pipeline.text.item_ids)
    out = []
    for r in range(8):
        user = "a-new-user" if r == 3 else str(rng.choice(users))
        for item in rng.choice(items, 6, replace=False):
            out.append({"request_id": f"r{r}", "user_id": user, "item_id": str(item)})
    out += [
        {"request_id": "new", "user_id": users[0], "item_id": items[0]},
        {"request_id": "new", "user_id": users[0], "item_id": "brand-new", "title": "A new thing", "category": "zz"},
        {"request_id": "new", "user_id": users[0], "item_id": items[1]},
    ]
    schema = dict.fromkeys(("request_id", "user_id", "item_id", "title", "body", "category", "subcategory"), pl.String)
    return pl.DataFrame(out, schema=schema)


@pytest.mark.integration
def test_every_row_adds_up_to_its_score_rows_score(pipeline, rows: pl.DataFrame) -> None:
    want = pipeline.score_rows(rows)
    scores, explanations = pipeline.explain_rows(rows, top=3)
    assert scores.tolist() == want.tolist() and [e.score for e in explanations] == want.tolist()  # the same floats
    assert pipeline.inputs.base_score == "item_ctr_smoothed"
    ctr = pipeline.ranking_frame(rows)["item_ctr_smoothed"].to_list()
    for e, p in zip(explanations, ctr, strict=True):
        assert _adds_up(e) <= TOL
        assert len(e.contributions) == 3
        assert e.prior_term == Contribution("prior: logit(item_ctr_smoothed)", p, e.prior)
        assert e.prior == pytest.approx(math.log(p / (1 - p)), abs=1e-12)


@pytest.mark.integration
def test_contributions_are_lightgbms_treeshap_ordered_by_size(pipeline, rows: pl.DataFrame) -> None:
    features = pipeline.inputs.features
    frame = pipeline.ranking_frame(rows)
    contrib = pipeline.booster.predict(model_matrix(frame, pipeline.inputs), pred_contrib=True)
    _, full = pipeline.explain_rows(rows, top=len(features))
    _, short = pipeline.explain_rows(rows, top=4)
    for r, (e, s) in enumerate(zip(full, short, strict=True)):
        assert sorted(c.feature for c in e.contributions) == sorted(features) and e.rest == 0.0
        by_name = {c.feature: c.contribution for c in e.contributions}
        assert [by_name[f] for f in features] == contrib[r, :-1].tolist() and e.base_value == contrib[r, -1]
        sizes = [abs(c.contribution) for c in e.contributions]
        assert sizes == sorted(sizes, reverse=True)
        assert s.contributions == e.contributions[:4]  # the cap keeps the largest
        assert s.rest == pytest.approx(sum(c.contribution for c in e.contributions[4:]), abs=1e-12)


@pytest.mark.integration
def test_the_interest_score_and_category_names_are_explained(pipeline, rows: pl.DataFrame) -> None:
    assert pipeline.inputs.uses_text and "interest_score" in pipeline.inputs.features
    frame = pipeline.ranking_frame(rows)
    _, explanations = pipeline.explain_rows(rows, top=len(pipeline.inputs.features))
    vocab = set(pipeline.inputs.vocab["category"])
    for e, interest, category in zip(explanations, frame["interest_score"], frame["category"], strict=True):
        shown = {c.feature: c.value for c in e.contributions}
        assert shown["interest_score"] == interest
        assert shown["category"] == (category if category in vocab else None)
    new = rows["item_id"].to_list().index("brand-new")
    assert {c.feature: c.value for c in explanations[new].contributions}["category"] is None  # "zz": not a category
    assert any(isinstance(c.value, str) for e in explanations for c in e.contributions if c.feature == "category")


@pytest.mark.integration
def test_a_request_is_explained_as_it_is_scored(pipeline) -> None:
    user = pipeline.snapshot.users["user_id"][1]
    candidates = [Candidate(i) for i in pipeline.text.item_ids[:7]]
    scores, explanations = pipeline.explain(user, candidates, top=2)
    assert scores.tolist() == pipeline.score(user, candidates).tolist()
    assert sorted(explanations) == list(range(7))
    assert all(_adds_up(e) <= TOL and len(e.contributions) == 2 for e in explanations.values())
    assert all(e.score == scores[i] for i, e in explanations.items())  # the very floats the ranking used
    _, best = pipeline.explain(user, candidates, top=2, best=3)  # only the first three of the ranking
    assert list(best) == ranking_order(scores, 3)
    assert all(best[i] == explanations[i] for i in best)
    # The common request is explained from the matrix it was scored from, equal to the frame's explanation.
    frame = pipeline.ranking_frame(pipeline.request_rows(user, candidates))
    assert [explanations[i] for i in range(7)] == explain_frame(pipeline.booster, frame, pipeline.inputs, 2)
    with mock.patch.object(type(pipeline), "ranking_frame", side_effect=AssertionError("the general path ran")):
        assert pipeline.explain(user, candidates, top=2, best=3)[1] == best
