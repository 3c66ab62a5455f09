"""The ranking pipeline: ``(user_id, candidates, optional item texts)`` -> scores.

The one object behind training evaluation, the API and batch scoring:

1. behavioural features from the online snapshot (:func:`features.behaviour.online_rows`);
2. interest scores from the text model (:class:`textmodel.scoring.TextScorer`: cached item vectors,
   unknown items encoded from their text);
3. :func:`ranker.frame.model_matrix` + the booster (one thread: request-sized batches).

Offline, :meth:`RankingPipeline.score_frame` runs steps 3 on point-in-time feature rows, the same
function the online path ends in; a test ties the two paths together on the same request.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import lightgbm as lgb
import numpy as np
import polars as pl

from conf.prompt import TEMPLATE_FIELDS
from features.behaviour import FeatureSpec, OnlineSnapshot, online_rows
from ranker.frame import RankerInputs, with_interest_rank
from ranker.lambdarank import predict


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


@dataclass
class RankingPipeline:
    booster: lgb.Booster
    inputs: RankerInputs
    spec: FeatureSpec
    snapshot: OnlineSnapshot
    text: object | None  # textmodel.scoring.TextScorer when the ranker uses the interest score
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        users = self.snapshot.users
        self._history: dict[str, list[str]] = (
            dict(zip(users["user_id"].to_list(), users["history"].to_list(), strict=True))
            if "history" in users.columns
            else {}
        )
        self.snapshot.index()  # build the request-time key index now, not in the first request

    def history(self, user_id: str) -> list[str]:
        return self._history.get(user_id, [])

    def knows_user(self, user_id: str) -> bool:
        """False for a user with no events before the snapshot (scored by the cold-start path)."""
        return user_id in self.snapshot.index().user_row

    def needs_text(self, item_id: str) -> bool:
        """True when ``item_id`` can be scored only with its text (the text model has no vector for it)."""
        return self.text is not None and item_id not in self.text.index

    def has_text(self, candidate: Candidate) -> bool:
        """True when the text model could encode ``candidate`` from its fields: one its prompt reads is non-blank."""
        return self.text is None or self.text.item_text.has_text(candidate.fields())

    def score_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """Booster scores of feature rows that already carry the interest score (when the ranker uses it)."""
        if self.inputs.uses_text and "interest_rank" not in frame.columns:
            frame = with_interest_rank(frame)
        return predict(self.booster, frame, self.inputs)

    def request_frame(
        self,
        user_id: str,
        candidates: Sequence[Candidate],
        at: datetime | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
    ) -> pl.DataFrame:
        """Feature rows (+ interest score) for one request, candidates in request order.

        ``vectors``: item vectors already encoded elsewhere (the serving encoder deployment) for items
        that need text; items missing from it are encoded here.
        """
        ids = _checked_ids(candidates)
        known = self.snapshot.index().item_row
        new = [c for c in candidates if c.item_id not in known]
        new_items = (
            pl.DataFrame(
                {
                    "item_id": [c.item_id for c in new],
                    "category": [c.category for c in new],
                    "published_at": pl.Series([None] * len(new), dtype=pl.Datetime("us", "UTC")),
                },
                schema={"item_id": pl.String, "category": pl.String, "published_at": pl.Datetime("us", "UTC")},
            )
            if new
            else None  # the common request: every candidate known (no frame to build)
        )
        frame = online_rows(self.snapshot, user_id, ids, at or self.snapshot.as_of, self.spec, new_items)
        if self.inputs.uses_text:
            texts = self.texts_needed(candidates, vectors or ())
            scores = self.text.scores(self.history(user_id), ids, texts, vectors)
            # hstack, not with_columns: appending two columns needs no query (a fixed ~0.2 ms a request)
            frame = frame.hstack(
                [pl.Series("interest_score", scores), pl.Series("impression_id", ["request"] * len(ids), pl.String)]
            )
        return frame

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
        if not new:
            return {}
        for c in new:
            if not self.has_text(c):
                fields = list(self.text.item_text.fields)
                raise RankingRequestError(f"item {c.item_id!r} is unknown to the model and has no text ({fields})")
        texts = self.text.render([c.fields() for c in new])
        return dict(zip((c.item_id for c in new), texts, strict=True))

    def score(
        self,
        user_id: str,
        candidates: Sequence[Candidate],
        at: datetime | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Scores of ``candidates`` for ``user_id`` (request order)."""
        return self.score_frame(self.request_frame(user_id, candidates, at, vectors))

    def rank(
        self,
        user_id: str,
        candidates: Sequence[Candidate],
        k: int | None = None,
        at: datetime | None = None,
        vectors: Mapping[str, np.ndarray] | None = None,
    ) -> list[tuple[str, float]]:
        """Candidates sorted by score (ties keep request order), the top ``k`` when given."""
        scores = self.score(user_id, candidates, at, vectors)
        order = np.argsort(-scores, kind="stable")
        ranked = [(candidates[i].item_id, float(scores[i])) for i in order]
        return ranked[:k] if k else ranked
