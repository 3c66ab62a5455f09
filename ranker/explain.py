"""Exact explanations of a ranker score: why an item is where it is, in the model's own units.

A score is the base margin (``logit`` of the base-score column, the prior the booster was boosted from: see
:func:`ranker.frame.base_margin`) plus the trees. LightGBM's TreeSHAP (``booster.predict(X, pred_contrib=True)``)
splits the trees' part exactly into one contribution per feature plus an expected value (the bias), so

    score = base_value + prior + sum(contribution of every feature)

holds for every row to float rounding. Everything here is in the ranker's margin (log-odds-like units, the
scale :func:`ranker.lambdarank.predict` returns): not a probability, and only differences between items of one
request mean anything to the ranking. An :class:`Explanation` keeps the ``top`` contributions by absolute
value and folds the others into ``rest``, so the short list still adds up to the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import polars as pl

from ranker.frame import RankerInputs, base_margin, model_matrix
from ranker.lambdarank import predict

EXPLANATION_COLUMNS = ("base_value", "prior", "explanation", "rest")
_TERM = pl.Struct({"feature": pl.String, "value": pl.String, "contribution": pl.Float64})


@dataclass(slots=True)
class Contribution:
    """One feature's share of a score (margin units) and the value the booster read for it.

    ``value``: a float for numeric features, the category's name for categorical ones, None where the booster
    saw a missing value (a null, or a category outside the ranker's vocabulary, which it cannot tell apart).
    """

    feature: str
    value: float | str | None
    contribution: float


@dataclass(slots=True)
class Explanation:
    """One row's score taken apart: ``base_value + prior + sum(c.contribution for c in contributions) + rest``
    equals ``score`` to float rounding, all in the ranker's margin.

    ``score``: exactly what :func:`ranker.lambdarank.predict` gives for the row (the same float the ranking
    uses). ``base_value``: the trees' expected value over their training data, the same for every row.
    ``prior``: the base margin, ``logit`` of the base-score column (0.0 for a ranker boosted from zero);
    ``prior_term`` names it (``prior: logit(item_ctr_smoothed)``) with the probability it came from, None
    without a base score. ``contributions``: the ``top`` features by absolute contribution (ties in feature
    order). ``rest``: the sum of the other features' contributions.
    """

    score: float
    base_value: float
    prior: float
    contributions: list[Contribution]
    rest: float
    prior_term: Contribution | None = None


def prior_name(inputs: RankerInputs) -> str | None:
    """The prior's name in an explanation: the transform and the column, as the margin is computed."""
    return None if inputs.base_score is None else f"prior: logit({inputs.base_score})"


def explain_frame(
    booster: lgb.Booster, frame: pl.DataFrame, inputs: RankerInputs, top: int, num_threads: int = 1
) -> list[Explanation]:
    """One :class:`Explanation` per row of the ranking ``frame`` (the rows :func:`ranker.lambdarank.predict`
    scores), each with its ``top`` contributions.

    The score comes from ``predict`` itself, so an explanation can never disagree with the ranking it
    explains; the contributions come from one TreeSHAP pass over the same matrix. ``num_threads``: 1 for a
    request (OpenMP start-up costs more than ~100 rows of work), as ``predict``.
    """
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    scores = predict(booster, frame, inputs, num_threads)
    x = model_matrix(frame, inputs)
    p = frame.get_column(inputs.base_score).cast(pl.Float64).to_numpy() if inputs.base_score else None
    return explain_matrix(booster, x, scores, base_margin(frame, inputs), p, inputs, top, num_threads)


def explain_matrix(
    booster: lgb.Booster,
    x: np.ndarray,
    scores: np.ndarray,
    prior: np.ndarray,
    p: np.ndarray | None,
    inputs: RankerInputs,
    top: int,
    num_threads: int = 1,
) -> list[Explanation]:
    """:func:`explain_frame` from the booster's inputs themselves: the matrix ``x``, each row's ``scores`` (what
    the ranking used), its base margin ``prior`` and the probability ``p`` it is the logit of (None without a
    base score). The API's common request comes here with the matrix it was scored from
    (:class:`ranker.request_matrix.RequestMatrix`), so no frame is built to explain it."""
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    contrib = booster.predict(x, pred_contrib=True, num_threads=num_threads)
    n = len(inputs.features)
    phi, base = contrib[:, :n], contrib[:, n]
    # The top features of each row: by |contribution|, a stable sort so that ties keep feature order.
    chosen = np.argsort(-np.abs(phi), axis=1, kind="stable")[:, : min(top, n)]
    others = np.ones_like(phi, dtype=bool)
    np.put_along_axis(others, chosen, False, axis=1)
    rest = np.where(others, phi, 0.0).sum(axis=1)
    # Python lists from here: a request builds ~100 x top objects, where numpy scalars would cost more than the rest.
    top_phi = np.take_along_axis(phi, chosen, axis=1).tolist()
    chosen_rows, x_rows = chosen.tolist(), x.tolist()
    vocab = [inputs.vocab.get(f) if f in inputs.categorical else None for f in inputs.features]
    name = prior_name(inputs)
    probabilities = p.tolist() if name and p is not None else None
    out = []
    for r, (s, b, m, t) in enumerate(zip(scores.tolist(), base.tolist(), prior.tolist(), rest.tolist(), strict=True)):
        row = x_rows[r]
        terms = [
            Contribution(inputs.features[j], _shown(row[j], vocab[j]), c)
            for j, c in zip(chosen_rows[r], top_phi[r], strict=True)
        ]
        out.append(Explanation(s, b, m, terms, t, Contribution(name, probabilities[r], m) if probabilities else None))
    return out


def _shown(value: float, vocab: tuple[str, ...] | None) -> float | str | None:
    """A booster input as an explanation shows it: the float, the category's name (``vocab``: the feature's
    vocabulary; the matrix holds its index), None for missing (NaN)."""
    if value != value:  # NaN
        return None
    return vocab[int(value)] if vocab is not None else value


def explanation_columns(explanations: Sequence[Explanation]) -> pl.DataFrame:
    """Explanations as columns, row for row (batch scoring's output): ``base_value``, ``prior``, ``explanation``
    (a list of ``{feature, value, contribution}``, the value as a string: one column type for numbers and
    category names) and ``rest``; in margin units, summing to the score."""
    terms = [
        [
            {"feature": c.feature, "value": None if c.value is None else str(c.value), "contribution": c.contribution}
            for c in e.contributions
        ]
        for e in explanations
    ]
    return pl.DataFrame(
        [
            pl.Series("base_value", [e.base_value for e in explanations], dtype=pl.Float64),
            pl.Series("prior", [e.prior for e in explanations], dtype=pl.Float64),
            pl.Series("explanation", terms, dtype=pl.List(_TERM)),
            pl.Series("rest", [e.rest for e in explanations], dtype=pl.Float64),
        ]
    )
