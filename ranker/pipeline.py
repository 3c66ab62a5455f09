"""The ranking pipeline, a scoring bundle: ``(user_id, candidates, optional item texts)`` -> scores.

The one object behind training evaluation, promotion, the API and batch scoring. Its one scoring method,
:meth:`RankingPipeline.score_rows`, takes a frame of candidate rows (many requests or one):

1. behavioural features from a :class:`features.sources.FeatureSource`: the online snapshot (the API,
   batch scoring) or the point-in-time feature rows (evaluation, promotion);
2. interest scores from the text model (:class:`textmodel.scoring.TextScorer`: cached item vectors,
   unknown items encoded from their text; one user-tower pass per distinct history), and their rank;
3. :func:`ranker.frame.model_matrix`, the base margin and one ``booster.predict``.

A request is that method on a one-request frame (:meth:`RankingPipeline.score`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import polars as pl

from conf.prompt import TEMPLATE_FIELDS
from features.behaviour import TS, FeatureSpec, OnlineSnapshot, _utc_micros
from features.sources import REQUEST_KEYS, FeatureSource, SnapshotFeatures
from ranker.explain import Explanation, explain_frame, explain_matrix
from ranker.frame import GROUP, RankerInputs, one_group_rank, with_interest_rank
from ranker.lambdarank import predict
from ranker.request_matrix import RequestMatrix
from ranker.user_vectors import UserVectorCache

if TYPE_CHECKING:  # torch is imported only when a text model is loaded
    import torch


class RankingRequestError(ValueError):
    """A request the pipeline cannot score (unknown item without text, duplicates, empty list)."""


@dataclass(frozen=True)
class Candidate:
    """A candidate item; its text fields are needed only for items the model has not seen.

    The fields are those a prompt template may name (:data:`conf.prompt.TEMPLATE_FIELDS`); the text model
    renders them with its saved prompt, as it rendered its catalogue. ``category`` also feeds the features.
    """

    item_id: str
    title: str | None = None
    body: str | None = None
    category: str | None = None
    subcategory: str | None = None

    def fields(self) -> dict[str, str | None]:
        """The text fields by name, as the text model's renderer reads an item."""
        return {f: getattr(self, f) for f in TEMPLATE_FIELDS}


def _checked_ids(candidates: Sequence[Candidate]) -> list[str]:
    """The candidates' ids; an empty list or a repeated id is a :class:`RankingRequestError` naming positions."""
    ids = [c.item_id for c in candidates]
    if not ids:
        raise RankingRequestError("no candidates to rank")
    if len(set(ids)) != len(ids):
        first: dict[str, int] = {}
        for pos, item in enumerate(ids):
            if item in first:
                raise RankingRequestError(
                    f"candidates[{pos}]: duplicate item_id {item!r} (also candidates[{first[item]}])"
                )
            first[item] = pos
    return ids


@functools.lru_cache(maxsize=256)
def _request_column(n: int) -> pl.Series:
    """``request_id`` of a one-request frame of ``n`` rows, built once per size (polars shares a column's buffers
    copy-on-write: no frame holding it can change it)."""
    return pl.Series("request_id", ["request"] * n, dtype=pl.String)


@dataclass
class RankingPipeline:
    """The scoring bundle: the booster with its inputs, the feature spec, the online snapshot and the pinned
    text model, and one batched scoring method, :meth:`score_rows`, behind every score recrank gives."""

    booster: lgb.Booster
    inputs: RankerInputs
    spec: FeatureSpec
    snapshot: OnlineSnapshot
    text: object | None  # textmodel.scoring.TextScorer when the ranker uses the interest score
    versions: dict[str, str] = field(default_factory=dict)
    user_cache_size: int = 16_384  # users whose vectors a request may reuse (dim x 8 bytes and a tensor each)

    def __post_init__(self) -> None:
        self.online = SnapshotFeatures(self.snapshot, self.spec)
        self.snapshot.index()  # build the request-time key index now, not in the first request
        self.online.feature_table()  # and the snapshot's features at its own time (what a request gathers)
        # user id -> user vector of a request's user (see _cached_user_vector), for this (online, text) pair
        self._user_cache = UserVectorCache(self.user_cache_size)
        # (feature table, inputs, their RequestMatrix): the table's sides converted once (see _request_matrix)
        self._matrix: tuple[object, RankerInputs, RequestMatrix | None] | None = None
        self._matrix_lock = threading.Lock()
        self._request_matrix()

    def history(self, user_id: str) -> list[str]:
        return self.online.history(user_id)

    def knows_user(self, user_id: str) -> bool:
        """False for a user with no events before the snapshot (scored by the cold-start path)."""
        return user_id in self.snapshot.index().user_row

    def needs_text(self, item_id: str) -> bool:
        """True when ``item_id`` can be scored only with its text (the text model has no vector for it)."""
        return self.text is not None and item_id not in self.text.index

    def has_text(self, candidate: Candidate) -> bool:
        """True when the text model could encode ``candidate`` from its fields: one its prompt reads is non-blank."""
        return self.text is None or self.text.item_text.has_text(candidate.fields())

    def score_rows(
        self,
        rows: pl.DataFrame,
        source: FeatureSource | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
        num_threads: int = 1,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Scores of a frame of candidate rows, row for row: the one scoring path of the API, batch scoring,
        evaluation and promotion.

        ``rows``: ``request_id, user_id, item_id`` (display order within each request), and for items the
        models have not seen, their text fields (``title, body, category, subcategory``). ``source``: where
        the behavioural features come from (default: the online snapshot; evaluation and promotion pass the
        point-in-time rows). ``vectors``: item vectors already encoded elsewhere (the serving encoder).

        One feature gather for the frame, one user-tower pass per distinct history, one interest rank
        over the requests, one ``booster.predict`` (``num_threads``: 1 for a request, where OpenMP start-up
        dominates; more for a large frame). ``timings``, when given, receives the seconds spent in each stage:
        ``features``, ``text`` (absent without a text model) and ``booster`` (the API's metrics).

        A request (one request, one user the snapshot knows, at the snapshot's own time, every item known to the
        snapshot and the text model) takes :meth:`_score_request`: the same floats, without building a frame.
        """
        scores = self._score_request(rows, source, num_threads, timings)
        if scores is not None:
            return scores
        frame = self.ranking_frame(rows, source, vectors, timings)
        started = time.perf_counter()
        scores = predict(self.booster, frame, self.inputs, num_threads)
        if timings is not None:
            timings["booster"] = time.perf_counter() - started
        return scores

    def ranking_frame(
        self,
        rows: pl.DataFrame,
        source: FeatureSource | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
        timings: dict[str, float] | None = None,
    ) -> pl.DataFrame:
        """The booster's input rows for ``rows`` (arguments as :meth:`score_rows`): the behavioural features,
        and the interest score and its rank when the ranker reads them. What :meth:`score_rows` predicts on
        and what an explanation decomposes."""
        source = source or self.online
        started = time.perf_counter()
        frame = source.features(rows)
        if timings is not None:
            timings["features"] = time.perf_counter() - started
        if self.inputs.uses_text:
            started = time.perf_counter()
            items = rows.get_column("item_id").to_list()
            texts = self._texts_of(rows, items, vectors or {})
            user, group = self._cached_user_vector(source, rows)
            if user is None:
                histories, group = source.histories(rows)
                interest = self.text.scores_rows(histories, group, items, texts, vectors)
            else:
                interest = self.text.scores_users(user, group, items, texts, vectors)
            # hstack, not with_columns: appending two columns needs no query (a fixed ~0.2 ms a request)
            frame = frame.hstack([pl.Series("interest_score", interest), rows.get_column("request_id").alias(GROUP)])
            frame = with_interest_rank(frame)
            if timings is not None:
                timings["text"] = time.perf_counter() - started
        return frame

    def _score_request(
        self,
        rows: pl.DataFrame,
        source: FeatureSource | None,
        num_threads: int,
        timings: dict[str, float] | None,
    ) -> np.ndarray | None:
        """:meth:`score_rows` of a one-request frame from its :class:`ranker.request_matrix.RequestMatrix`; None for
        any other frame (many requests or users, a source other than this snapshot at its own time, a ``ts``
        column, an item or user the snapshot does not know, an item the text model has no vector for), which then
        takes the general path.

        Every condition of the snapshot table's path (:meth:`features.sources.SnapshotFeatures.features`) and of
        the cached user vector (:meth:`_cached_user_vector`) holds here, so the features are the table's, the user
        vector is the cached one, and the matrix and margin are the general path's floats (see the module).
        """
        n = rows.height
        columns = rows.columns
        if not n or TS in columns or any(c not in columns for c in REQUEST_KEYS):
            return None
        started = time.perf_counter()
        source = source or self.online
        requests, users = (rows.get_column(c).to_list() for c in ("request_id", "user_id"))
        if requests.count(requests[0]) != n or users.count(users[0]) != n:
            return None
        return self._score_known(source, users, rows.get_column("item_id").to_list(), num_threads, timings, started)

    def _score_known(
        self,
        source: FeatureSource,
        users: list[str],
        items: list[str],
        num_threads: int,
        timings: dict[str, float] | None,
        started: float,
        keep: dict[str, np.ndarray | None] | None = None,
    ) -> np.ndarray | None:
        """:meth:`_score_request` of one request given as lists (``users``: its one user, once per item), after
        the frame's checks; None where the general path must score it. ``keep``, when given, receives the matrix
        (``x``), the base margin and its probabilities (``p``) the scores came from: what an explanation reads."""
        if source is not self.online and not (
            self.online.shares_histories(source)
            and source.snapshot is self.online.snapshot
            and source.spec is self.online.spec
        ):
            return None
        n = len(items)
        matrix = self._request_matrix()
        if matrix is None:
            return None
        table = matrix.table
        if source.at is not None and _utc_micros(source.at) != table.key[0]:
            return None
        user = users[0]
        index = table.index
        distinct = set(items)
        if user not in index.user_row or not index.item_row.keys() >= distinct:
            return None
        if self.inputs.uses_text and (self.text is None or not self.text.index.keys() >= distinct):
            return None
        item_at, user_at, pair_at = table.positions(users, items)
        at = {"item": item_at, "user": user_at, "pair": pair_at}
        margin = matrix.margin(at)
        if margin is None:  # a base score outside (0, 1): the general path says which
            return None
        x = matrix.matrix(at)
        if timings is not None:
            timings["features"] = time.perf_counter() - started
        if self.inputs.uses_text:
            started = time.perf_counter()
            vector = self._user_vector(user)
            score = self.text.scores_users(vector, np.zeros(n, dtype=np.int64), items)
            matrix.set_text(x, score, one_group_rank(score))
            if timings is not None:
                timings["text"] = time.perf_counter() - started
        started = time.perf_counter()
        scores = margin + self.booster.predict(x, num_threads=num_threads)
        if timings is not None:
            timings["booster"] = time.perf_counter() - started
        if keep is not None:
            keep.update(x=x, margin=margin, p=matrix.probabilities(at))
        return scores

    def _request_matrix(self) -> RequestMatrix | None:
        """The :class:`ranker.request_matrix.RequestMatrix` of this pipeline's snapshot table and inputs (None when
        the snapshot has no table or the ranker reads a column it lacks), built on first use and again whenever
        the table is rebuilt (a snapshot whose tables, time or counts changed) or the inputs are replaced."""
        table = self.online.feature_table()
        built = self._matrix
        if built is None or built[0] is not table or built[1] is not self.inputs:
            with self._matrix_lock:
                built = self._matrix
                if built is None or built[0] is not table or built[1] is not self.inputs:
                    matrix = None if table is None else RequestMatrix.build(table, self.inputs)
                    built = self._matrix = (table, self.inputs, matrix)
        return built[2]

    def explain_rows(
        self,
        rows: pl.DataFrame,
        top: int,
        source: FeatureSource | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
        num_threads: int = 1,
    ) -> tuple[np.ndarray, list[Explanation]]:
        """:meth:`score_rows`'s scores (the same floats) and one :class:`ranker.explain.Explanation` per row, each
        with its ``top`` feature contributions (arguments otherwise as :meth:`score_rows`).

        Built on one :meth:`ranking_frame`, the frame :meth:`score_rows` predicts on, so an explanation takes
        apart the very score the ranking used, not a second computation of it. Units: the ranker's margin.
        """
        explanations = explain_frame(
            self.booster, self.ranking_frame(rows, source, vectors), self.inputs, top, num_threads
        )
        return np.array([e.score for e in explanations], dtype=np.float64), explanations

    def _cached_user_vector(
        self, source: FeatureSource, rows: pl.DataFrame
    ) -> tuple[torch.Tensor, np.ndarray] | tuple[None, None]:
        """(the user vector, each row's user: all 0) of a one-user frame read from this pipeline's own snapshot (a
        request), from a bounded LRU cache by user id; (None, None) for any other frame, which then scores as it
        always did.

        Why it is exact: a pipeline's snapshot, and with it every user's history, never changes (a new snapshot
        is a new pipeline), and a miss computes the vector with the very tower pass an uncached one-user frame
        makes (:meth:`textmodel.scoring.TextScorer.user_vectors`). Why only then: another source (the point-in-time
        rows of evaluation, or another snapshot) may give the same user id another history, and a frame of many
        users takes its vectors from one batched pass whose bits must not depend on what was served before.
        The cache (:class:`ranker.user_vectors.UserVectorCache`) follows the pipeline's ``online`` source and text
        model: replacing either empties it.
        """
        users = rows.get_column("user_id").to_list()
        if not users or users.count(users[0]) != len(users) or not self.online.shares_histories(source):
            return None, None
        return self._user_vector(users[0]), np.zeros(len(users), dtype=np.int64)  # as source.histories groups one

    def _user_vector(self, user: str) -> torch.Tensor:
        """``user``'s vector from this pipeline's snapshot, through the LRU cache (see :meth:`_cached_user_vector`)."""
        # on a miss only: what source.histories gives this user, through the tower pass an uncached request makes
        return self._user_cache.get(
            (self.online, self.text), user, lambda: self.text.user_vectors([self.online.history(user)])
        )

    def _texts_of(self, rows: pl.DataFrame, items: Sequence[str], encoded: Container[str]) -> dict[str, str]:
        """``item_id -> text`` of the rows' items the text model has no vector for, not already ``encoded``,
        rendered with the text model's saved prompt; the first such item without text is a
        :class:`RankingRequestError`."""
        index = self.text.index
        unknown = [r for r, item in enumerate(items) if item not in index and item not in encoded]
        if not unknown:
            return {}
        fields = [f for f in TEMPLATE_FIELDS if f in rows.columns]
        part = rows[unknown].unique("item_id", keep="first", maintain_order=True)
        candidates = [
            Candidate(r["item_id"], **{f: r[f] for f in fields})
            for r in part.select("item_id", *fields).iter_rows(named=True)
        ]
        return self._render(candidates)

    def _render(self, new: Sequence[Candidate]) -> dict[str, str]:
        if new and self.text.item_text is None:
            raise RankingRequestError(
                f"item {new[0].item_id!r} is not in the text model's table, and this pipeline was loaded without "
                "the backbone that could encode it (table only)"
            )
        for c in new:
            if not self.has_text(c):
                fields = list(self.text.item_text.fields)
                raise RankingRequestError(f"item {c.item_id!r} is unknown to the model and has no text ({fields})")
        texts = self.text.render([c.fields() for c in new])
        return dict(zip((c.item_id for c in new), texts, strict=True))

    def texts_needed(self, candidates: Sequence[Candidate], encoded: Container[str] = ()) -> dict[str, str]:
        """``item_id -> text`` of the candidates the text model has no vector for (empty without a text model),
        apart from those already ``encoded`` elsewhere (the serving encoder's vectors).

        The texts are rendered with the text model's saved prompt and token budget, in one batch; requests
        whose candidates are all known render and tokenize nothing. Raises :class:`RankingRequestError`
        naming the first unknown item that carries no text.
        """
        _checked_ids(candidates)  # a duplicate is the first thing wrong with a request, whatever else is
        if self.text is None:
            return {}
        new = [c for c in candidates if self.needs_text(c.item_id) and c.item_id not in encoded]
        return self._render(new) if new else {}

    def request_rows(self, user_id: str, candidates: Sequence[Candidate]) -> pl.DataFrame:
        """One request as a frame of rows (the long format of batch scoring), candidates in request order."""
        ids = _checked_ids(candidates)
        n = len(ids)
        distinct = set(ids)
        known = self.snapshot.index().item_row.keys() >= distinct
        if known and (self.text is None or self.text.index.keys() >= distinct):  # the common request: ids only
            # Columns as Series (the constant ones repeated from one value): a dict of lists costs twice as much.
            user = pl.Series("user_id", [user_id], dtype=pl.String).new_from_index(0, n)
            return pl.DataFrame([_request_column(n), user, pl.Series("item_id", ids, dtype=pl.String)])
        columns = {"request_id": ["request"] * n, "user_id": [user_id] * n, "item_id": ids}
        columns.update({f: [getattr(c, f) for c in candidates] for f in TEMPLATE_FIELDS})
        return pl.DataFrame(columns, schema={k: pl.String for k in columns})

    def score(
        self,
        user_id: str,
        candidates: Sequence[Candidate],
        at: datetime | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Scores of ``candidates`` for ``user_id`` (request order): :meth:`score_rows` on a one-request frame.

        The common request (see :meth:`_score_request`) is scored from its ids, without building the frame."""
        source = self.online if at is None else self.online.at_time(at)
        started = time.perf_counter()
        ids = _checked_ids(candidates)
        scores = self._score_known(source, [user_id] * len(ids), ids, 1, timings, started)
        if scores is not None:
            return scores
        return self.score_rows(self.request_rows(user_id, candidates), source, vectors, timings=timings)

    def explain(
        self,
        user_id: str,
        candidates: Sequence[Candidate],
        top: int,
        at: datetime | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
        best: int | None = None,
    ) -> tuple[np.ndarray, dict[int, Explanation]]:
        """:meth:`score`'s scores (request order) and the explanations, by candidate index, of the ``best``
        highest-scored candidates (all when None), each with its ``top`` contributions.

        One set of booster inputs for both, so a request is explained exactly as it is scored: the common request's
        matrix (:class:`ranker.request_matrix.RequestMatrix`), else the ranking frame. ``best``: TreeSHAP costs
        ~0.4 ms a row on a 115-tree ranker, ten times a whole request's scoring at 100 candidates; the question
        a person asks ("why is this item first?") is about the first few.
        """
        source = self.online if at is None else self.online.at_time(at)
        ids = _checked_ids(candidates)
        kept: dict[str, np.ndarray | None] = {}
        scores = self._score_known(source, [user_id] * len(ids), ids, 1, None, time.perf_counter(), kept)
        if scores is not None:
            chosen = ranking_order(scores, best)
            p = kept["p"]
            explained = (
                explain_matrix(
                    self.booster, kept["x"][chosen], scores[chosen], kept["margin"][chosen],
                    None if p is None else p[chosen], self.inputs, top,
                )
                if chosen
                else []
            )  # fmt: skip
            return scores, dict(zip(chosen, explained, strict=True))
        frame = self.ranking_frame(self.request_rows(user_id, candidates), source, vectors)
        scores = predict(self.booster, frame, self.inputs)
        chosen = ranking_order(scores, best)
        explained = explain_frame(self.booster, frame[chosen], self.inputs, top) if chosen else []
        return scores, dict(zip(chosen, explained, strict=True))

    def rank(
        self,
        user_id: str,
        candidates: Sequence[Candidate],
        k: int | None = None,
        at: datetime | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[tuple[str, float]]:
        """Candidates sorted by score (ties keep request order), the top ``k`` when given."""
        scores = self.score(user_id, candidates, at, vectors, timings)
        values = scores.tolist()  # Python floats, the same values as float(scores[i]), a list at a time
        return [(candidates[i].item_id, values[i]) for i in ranking_order(scores, k)]


def ranking_order(scores: np.ndarray, k: int | None = None) -> list[int]:
    """Row indices by descending score, ties in request order, the first ``k`` when given: the order of
    :meth:`RankingPipeline.rank` and of an explained ranking."""
    order = (-scores).argsort(kind="stable").tolist()
    return order[:k] if k else order
