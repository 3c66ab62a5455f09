"""The pipeline's cache of request users' vectors: the same bits as without it, and only for its own snapshot.

A pipeline built in memory (a snapshot of the tiny world, an untrained user tower over random item vectors, a
booster that reads the interest score): no training run, so every case is seconds.
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

from features.behaviour import FeatureSpec, build_snapshot
from features.history import histories
from features.sources import PointInTimeFeatures, SnapshotFeatures
from ranker.frame import RankerInputs, model_matrix
from ranker.pipeline import Candidate, RankingPipeline
from textmodel.scoring import TextScorer

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)
DIM = 8


def text_scorer(item_ids: list[str], seed: int) -> TextScorer:
    return random_text_scorer(item_ids, seed, SPEC.history_cap, DIM)


@pytest.fixture(scope="module")
def pipeline(tiny_world) -> RankingPipeline:
    items, impressions = tiny_world
    snapshot = build_snapshot(impressions.lazy(), items.lazy(), SPEC)
    snapshot.users = histories(impressions.lazy(), snapshot.users.lazy(), SPEC.history_cap).collect()
    categories = tuple(sorted(items["category"].unique().drop_nulls().to_list()))
    inputs = RankerInputs(
        features=(*SPEC.feature_columns, "interest_score", "interest_rank", "category"),
        categorical=("category",),
        vocab={"category": categories},
        base_score="item_ctr_smoothed",
    )
    text = text_scorer(snapshot.items["item_id"].to_list(), seed=0)
    plain = RankingPipeline(None, inputs, SPEC, snapshot, text)
    # A booster whose output moves with the interest score, so a wrong user vector shows in the scores.
    users = snapshot.users["user_id"].to_list()
    rng = np.random.default_rng(0)
    frames = [plain.ranking_frame(request_rows(plain, users[int(rng.integers(len(users)))], 8, rng)) for _ in range(60)]
    x = np.vstack([model_matrix(f, inputs) for f in frames])
    y = (x[:, inputs.features.index("interest_score")] + rng.normal(0, 0.3, len(x)) > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=20)
    return RankingPipeline(booster, inputs, SPEC, snapshot, text)


def request_rows(p: RankingPipeline, user: str, n: int, rng: np.random.Generator) -> pl.DataFrame:
    items = p.snapshot.items["item_id"].to_list()
    return p.request_rows(user, [Candidate(i) for i in rng.choice(items, n, replace=False)])


def fresh(p: RankingPipeline, **changes) -> RankingPipeline:
    """A new pipeline over the same parts (an empty cache)."""
    return dataclasses.replace(p, **changes)


def tower_passes(p: RankingPipeline, monkeypatch) -> list[int]:
    """Counts the user-tower passes of ``p``'s text model (one entry per pass: its number of histories)."""
    calls: list[int] = []
    original = p.text.head.user_vectors
    monkeypatch.setattr(p.text.head, "user_vectors", lambda history: calls.append(len(history)) or original(history))
    return calls


def users_of(p: RankingPipeline) -> list[str]:
    with_history = p.snapshot.users.filter(pl.col("history").list.len() > 0)["user_id"].to_list()
    assert len(with_history) >= 10
    return with_history


def test_requests_score_the_same_bits_with_the_cache_as_without(pipeline) -> None:
    """Each request twice through the cached path (a miss, then a hit) against the uncached path: the same
    snapshot through a source of its own, which the cache never serves."""
    p = fresh(pipeline)
    uncached = SnapshotFeatures(p.snapshot, p.spec)
    rng = np.random.default_rng(1)
    for user in [*users_of(p)[:15], "never-seen-user"]:
        for n in (1, 2, 7, 30):
            rows = request_rows(p, user, n, rng)
            want_frame, want = p.ranking_frame(rows, uncached), p.score_rows(rows, uncached)
            for _ in range(2):
                got_frame = p.ranking_frame(rows)
                assert got_frame.equals(want_frame)
                got_interest, want_interest = got_frame["interest_score"], want_frame["interest_score"]
                assert got_interest.to_numpy().tobytes() == want_interest.to_numpy().tobytes()
                assert p.score_rows(rows).tobytes() == want.tobytes()
    assert len(p._user_cache) == 16


def test_a_user_is_passed_through_the_tower_once_and_the_cache_is_bounded(pipeline, monkeypatch) -> None:
    p = fresh(pipeline, user_cache_size=2)
    passes = tower_passes(p, monkeypatch)
    a, b, c = users_of(p)[:3]
    rng = np.random.default_rng(2)
    for user in (a, a, b, a):  # a: one miss, then hits; b: a miss
        p.ranking_frame(request_rows(p, user, 5, rng))
    assert passes == [1, 1]
    p.score(a, [Candidate(i) for i in p.snapshot.items["item_id"].to_list()[:4]], at=p.snapshot.as_of + timedelta(1))
    assert passes == [1, 1]  # another request time, the same history: the cached vector
    p.ranking_frame(request_rows(p, c, 5, rng))  # evicts b, the least recently used
    assert list(p._user_cache) == [a, c]
    p.ranking_frame(request_rows(p, b, 5, rng))
    assert passes == [1, 1, 1, 1]


def test_frames_of_many_users_do_not_use_or_fill_the_cache(pipeline, monkeypatch) -> None:
    p = fresh(pipeline)
    users = users_of(p)[:4]
    rng = np.random.default_rng(3)
    p.ranking_frame(request_rows(p, users[0], 5, rng))
    passes = tower_passes(p, monkeypatch)
    batch = pl.concat([request_rows(p, u, 4, rng).with_columns(pl.lit(u).alias("request_id")) for u in users])
    want = p.score_rows(batch, SnapshotFeatures(p.snapshot, p.spec))
    assert len(passes) == 1
    assert p.score_rows(batch).tobytes() == want.tobytes()
    assert passes == [passes[0]] * 2  # one batched pass again, users[0]'s cached vector not used
    assert list(p._user_cache) == [users[0]]


def test_point_in_time_rows_get_their_own_history_not_the_cached_one(pipeline) -> None:
    """Evaluation's source: the same user id, another history (the clicks before that impression)."""
    p = fresh(pipeline)
    user = next(u for u in users_of(p) if len(p.history(u)) >= 2)
    rows = request_rows(p, user, 6, np.random.default_rng(4))
    online = p.ranking_frame(rows)  # caches the user's snapshot vector
    earlier = p.history(user)[:1]
    table = p.online.features(rows).with_columns(pl.lit("request").alias("impression_id"))
    source = PointInTimeFeatures(table, pl.DataFrame({"impression_id": ["request"], "history": [earlier]}), p.spec)
    got = p.ranking_frame(rows, source)["interest_score"].to_numpy()
    want = p.text.scores(earlier, rows["item_id"].to_list())
    assert got.tobytes() == want.tobytes()
    assert not np.array_equal(got, online["interest_score"].to_numpy())


def test_another_snapshot_of_the_same_users_does_not_read_this_pipelines_cache(pipeline) -> None:
    p = fresh(pipeline)
    user = users_of(p)[0]
    rows = request_rows(p, user, 6, np.random.default_rng(5))
    p.ranking_frame(rows)
    other = copy.copy(p.snapshot)
    other.users = p.snapshot.users.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("history"))
    got = p.ranking_frame(rows, SnapshotFeatures(other, p.spec))["interest_score"].to_numpy()
    assert got.tobytes() == p.text.scores([], rows["item_id"].to_list()).tobytes()
    assert got.tobytes() != p.ranking_frame(rows)["interest_score"].to_numpy().tobytes()


def test_replacing_the_text_model_or_the_online_source_empties_the_cache(pipeline) -> None:
    p = fresh(pipeline)
    user = users_of(p)[0]
    rows = request_rows(p, user, 6, np.random.default_rng(6))
    p.ranking_frame(rows)
    p.text = text_scorer(p.text.item_ids, seed=1)
    got = p.ranking_frame(rows)["interest_score"].to_numpy()
    assert got.tobytes() == p.text.scores(p.history(user), rows["item_id"].to_list()).tobytes()
    other = copy.copy(p.snapshot)
    other.users = p.snapshot.users.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("history"))
    p.online = SnapshotFeatures(other, p.spec)
    got = p.ranking_frame(rows)["interest_score"].to_numpy()
    assert got.tobytes() == p.text.scores([], rows["item_id"].to_list()).tobytes()
    assert list(p._user_cache) == [user]
