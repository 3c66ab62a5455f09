"""A request's matrix gathered from the snapshot table's converted sides: the general path's bits, and only where
every condition of the table and the cached user vector holds.

Pipelines built in memory (a snapshot of the tiny world, an untrained user tower over random item vectors,
boosters fitted on a few of the general path's own matrices): no training run, so every case is seconds.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import timedelta

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from random_scorer import random_text_scorer

from features import snapshot_table
from features.behaviour import FeatureSpec, build_snapshot
from features.history import histories
from features.sources import PointInTimeFeatures, SnapshotFeatures
from ranker import pipeline as pipeline_module
from ranker.frame import TEXT_FEATURES, RankerInputs, model_matrix
from ranker.lambdarank import predict
from ranker.pipeline import Candidate, RankingPipeline
from ranker.request_matrix import RequestMatrix
from serving.models import with_snapshot
from textmodel.scoring import TextScorer

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)
DIM = 8


def text_scorer(item_ids: list[str], seed: int) -> TextScorer:
    return random_text_scorer(item_ids, seed, SPEC.history_cap, DIM)


def fitted(plain: RankingPipeline, seed: int) -> lgb.Booster:
    """A booster over ``plain``'s inputs, fitted on its general path's matrices, whose output moves with every
    input (so a wrong column, row or user vector shows in the scores)."""
    users = plain.snapshot.users["user_id"].to_list()
    rng = np.random.default_rng(seed)
    frames = [plain.ranking_frame(request_rows(plain, users[int(rng.integers(len(users)))], 8, rng)) for _ in range(60)]
    x = np.vstack([model_matrix(f, plain.inputs) for f in frames])
    z = np.nan_to_num(x) / (np.nanstd(x, axis=0) + 1e-9) @ rng.normal(0, 1, x.shape[1])
    if "interest_score" in plain.inputs.features:
        z = z + 3 * x[:, plain.inputs.features.index("interest_score")]
    y = (z + rng.normal(0, 0.3, len(x)) > np.median(z)).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True, "min_data_in_leaf": 5}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=20)


@pytest.fixture(scope="module")
def pipeline(tiny_world) -> RankingPipeline:
    """A ranker reading the interest score, its rank, every behavioural feature, the category, a base score."""
    items, impressions = tiny_world
    snapshot = build_snapshot(impressions.lazy(), items.lazy(), SPEC)
    snapshot.users = histories(impressions.lazy(), snapshot.users.lazy(), SPEC.history_cap).collect()
    categories = tuple(sorted(items["category"].unique().drop_nulls().to_list()))
    inputs = RankerInputs(
        features=(*SPEC.feature_columns, *TEXT_FEATURES, "category"),
        categorical=("category",),
        vocab={"category": categories},
        base_score="item_ctr_smoothed",
    )
    plain = RankingPipeline(None, inputs, SPEC, snapshot, text_scorer(snapshot.items["item_id"].to_list(), seed=0))
    return dataclasses.replace(plain, booster=fitted(plain, 0))


@pytest.fixture(scope="module")
def features_only(pipeline) -> RankingPipeline:
    """The features-only kind of ranker: no text model, no base score, the category's vocabulary cut short (a
    category outside it is NaN)."""
    inputs = RankerInputs(
        features=tuple(f for f in pipeline.inputs.features if f not in TEXT_FEATURES),
        categorical=("category",),
        vocab={"category": pipeline.inputs.vocab["category"][:2]},
    )
    plain = dataclasses.replace(pipeline, booster=None, inputs=inputs, text=None)
    return dataclasses.replace(plain, booster=fitted(plain, 1))


def request_rows(p: RankingPipeline, user: str, n: int, rng: np.random.Generator) -> pl.DataFrame:
    return p.request_rows(user, candidates(p, n, rng))


def candidates(p: RankingPipeline, n: int, rng: np.random.Generator) -> list[Candidate]:
    items = p.snapshot.items["item_id"].to_list()
    return [Candidate(i) for i in rng.choice(items, n, replace=False)]


def general(p: RankingPipeline, rows: pl.DataFrame, source=None, vectors=None) -> np.ndarray:
    """Today's general path: the ranking frame, then ``predict`` (what score_rows did for every frame)."""
    return predict(p.booster, p.ranking_frame(rows, source, vectors), p.inputs)


class Paths:
    """How many scorings took each path (the request matrix's gather, the general path's ``predict``)."""

    def __init__(self, monkeypatch) -> None:
        self.fast = self.general = 0
        gather, general_predict = RequestMatrix.matrix, pipeline_module.predict

        def counted_gather(matrix, rows):
            self.fast += 1
            return gather(matrix, rows)

        def counted_predict(*args, **kwargs):
            self.general += 1
            return general_predict(*args, **kwargs)

        monkeypatch.setattr(RequestMatrix, "matrix", counted_gather)
        monkeypatch.setattr(pipeline_module, "predict", counted_predict)

    def took(self) -> tuple[int, int]:
        """(fast, general) since the last call."""
        out = (self.fast, self.general)
        self.fast = self.general = 0
        return out


def users_of(p: RankingPipeline) -> list[str]:
    return p.snapshot.users["user_id"].to_list()


@pytest.mark.parametrize("kind", ["text", "features_only"])
def test_every_user_scores_the_general_paths_bits(kind, pipeline, features_only, monkeypatch) -> None:
    p = dataclasses.replace(pipeline if kind == "text" else features_only)
    paths = Paths(monkeypatch)
    rng = np.random.default_rng(7)
    n_items = p.snapshot.items.height
    users = users_of(p)
    assert len(users) >= 10
    for r, user in enumerate(users):
        for n in (1, 2, 7, 30, n_items) if r % 4 == 0 else ((1, 5, 17)[r % 3],):
            chosen = candidates(p, n, rng)
            rows = p.request_rows(user, chosen)
            want = general(p, rows)
            assert paths.took() == (0, 0)
            timings: dict[str, float] = {}
            got_score = p.score(user, chosen, timings=timings)
            got_rows = p.score_rows(rows)
            got_at = p.score(user, chosen, at=p.snapshot.as_of)  # the snapshot's own time, said out loud
            assert paths.took() == (3, 0)
            for got in (got_score, got_rows, got_at):
                assert got.dtype == want.dtype and np.array_equal(got, want)
                assert got.tobytes() == want.tobytes()  # signed zeros too
            assert set(timings) == ({"features", "text", "booster"} if kind == "text" else {"features", "booster"})
            assert len(set(want.tolist())) > 1 or n < 7  # the booster's output moves with its inputs


def test_the_fast_paths_ranking_is_the_general_paths(pipeline, monkeypatch) -> None:
    p = dataclasses.replace(pipeline)
    user = users_of(p)[3]
    chosen = candidates(p, 25, np.random.default_rng(8))
    want = general(p, p.request_rows(user, chosen))
    paths = Paths(monkeypatch)
    got = p.rank(user, chosen, k=10)
    assert paths.took() == (1, 0)
    order = (-want).argsort(kind="stable")[:10]
    assert got == [(chosen[i].item_id, float(want[i])) for i in order]


def test_other_requests_take_the_general_path_unchanged(pipeline, monkeypatch) -> None:
    p = dataclasses.replace(pipeline)
    paths = Paths(monkeypatch)
    rng = np.random.default_rng(9)
    users = users_of(p)
    user = users[2]
    chosen = candidates(p, 12, rng)
    rows = p.request_rows(user, chosen)

    # a user the snapshot does not know (a cold start)
    cold = p.request_rows("never-seen-user", chosen)
    assert np.array_equal(p.score_rows(cold), general(p, cold))
    p.score("never-seen-user", chosen)
    assert paths.took() == (0, 2)

    # an item the snapshot does not know (its vector encoded elsewhere)
    new = [*chosen, Candidate("new-item", category=p.snapshot.items["category"][0])]
    vectors = {"new-item": np.ones(DIM)}
    assert np.array_equal(p.score(user, new, vectors=vectors), general(p, p.request_rows(user, new), None, vectors))
    assert paths.took() == (0, 1)

    # an item the snapshot knows and the text model does not
    known = p.text.item_ids
    q = dataclasses.replace(p, text=text_scorer([i for i in known if i != chosen[0].item_id], seed=0))
    missing = {chosen[0].item_id: np.ones(DIM)}
    assert np.array_equal(q.score(user, chosen, vectors=missing), general(q, rows, None, missing))
    assert paths.took() == (0, 1)

    # another request time
    later = p.online.at_time(p.snapshot.as_of + timedelta(days=1))
    assert np.array_equal(p.score(user, chosen, at=p.snapshot.as_of + timedelta(days=1)), general(p, rows, later))
    assert paths.took() == (0, 1)

    # rows with their own request times
    timed = rows.with_columns(pl.lit(p.snapshot.as_of).alias("ts"))
    assert np.array_equal(p.score_rows(timed), general(p, timed))
    assert paths.took() == (0, 1)

    # point-in-time rows (evaluation, promotion), and another source over the same snapshot
    table = p.online.features(rows).with_columns(pl.lit("request").alias("impression_id"))
    point = PointInTimeFeatures(table, pl.DataFrame({"impression_id": ["request"], "history": [[]]}), p.spec)
    assert np.array_equal(p.score_rows(rows, point), general(p, rows, point))
    other = SnapshotFeatures(p.snapshot, p.spec)
    assert np.array_equal(p.score_rows(rows, other), general(p, rows, other))
    assert paths.took() == (0, 2)

    # frames of many requests, or of many users
    two = pl.concat([rows, rows.with_columns(pl.lit("second").alias("request_id"))])
    many = pl.concat([p.request_rows(u, chosen).with_columns(pl.lit(u).alias("request_id")) for u in users[:3]])
    one_request_two_users = pl.concat([p.request_rows(u, chosen[:3]) for u in users[:2]])
    for frame in (two, many, one_request_two_users):
        assert np.array_equal(p.score_rows(frame), general(p, frame))
    assert paths.took() == (0, 3)


def test_a_spec_without_a_table_takes_the_general_path(pipeline, monkeypatch) -> None:
    mixed = (pl.col("item_clicks_before") * pl.col("user_clicks_before")).alias("item_ctr_smoothed")
    original = snapshot_table._derived(SPEC)
    monkeypatch.setattr(snapshot_table, "_derived", lambda spec: (mixed, *original[1:]))
    p = dataclasses.replace(pipeline, snapshot=copy.copy(pipeline.snapshot))
    assert p.online.feature_table() is None and p._request_matrix() is None
    paths = Paths(monkeypatch)
    p.score(users_of(p)[0], candidates(p, 5, np.random.default_rng(10)))
    assert paths.took() == (0, 1)


def test_the_matrix_follows_the_snapshot(pipeline, monkeypatch) -> None:
    p = dataclasses.replace(pipeline)
    before = p._request_matrix()
    assert before is not None and p._request_matrix() is before  # built once
    user = users_of(p)[5]
    chosen = candidates(p, 20, np.random.default_rng(11))
    rows = p.request_rows(user, chosen)
    old = p.score(user, chosen)

    # a swapped snapshot: a new pipeline (dataclasses.replace), its own matrix of the new snapshot's features
    changed = copy.copy(p.snapshot)
    changed.users = changed.users.with_columns(pl.col("user_clicks_before") * 3 + 1)
    changed.items = changed.items.with_columns(pl.col("item_clicks_before") * 2)
    swapped = with_snapshot(p, changed, "v2")
    assert swapped._request_matrix() is not before
    assert swapped._request_matrix().table is swapped.online.feature_table()
    paths = Paths(monkeypatch)
    got = swapped.score(user, chosen)
    assert paths.took() == (1, 0)
    assert np.array_equal(got, general(swapped, rows))
    assert not np.array_equal(got, old)
    assert np.array_equal(p.score(user, chosen), old)  # the old pipeline keeps its own
    assert paths.took() == (1, 0)

    # a snapshot changed in place (its tables replaced, its counts moved): the table, then the matrix, rebuilt
    moving = copy.copy(p.snapshot)
    q = dataclasses.replace(p, snapshot=moving)
    first = q._request_matrix()
    moving.users = moving.users.with_columns(pl.col("user_clicks_before") + 2)
    moving.global_clicks += 7
    assert q._request_matrix() is not first
    assert np.array_equal(q.score(user, chosen), general(q, rows))
    assert paths.took() == (1, 0)

    # replaced inputs (the same columns in another order): a matrix of their own
    inputs = dataclasses.replace(p.inputs, features=p.inputs.features[::-1])
    r = dataclasses.replace(p, booster=None, inputs=inputs)
    r.booster = fitted(r, 2)
    assert np.array_equal(r.score(user, chosen), general(r, rows))
    assert r._request_matrix().inputs is inputs
