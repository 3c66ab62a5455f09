"""The ranking frame: one row per (impression, item) with the ranker's inputs, grouped by impression.

One function, :func:`model_matrix`, turns feature rows into the booster's input matrix; training,
evaluation, the API and batch scoring all call it, so a feature means the same thing everywhere. The
layout it needs (feature order, categorical vocabularies) is a :class:`RankerInputs`, saved with the model.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from conf import RankerConfig
from features.behaviour import FeatureSpec

GROUP, LABEL = "impression_id", "clicked"
TEXT_FEATURES = ["interest_score", "interest_rank"]
REPORT_ONLY_TEXT = "interest_frozen"  # the frozen-backbone head's score: evaluated beside the ranker, never a feature


class RankingFrameError(ValueError):
    """The ranking frame violates what LambdaRank needs; the message names the column and the rows."""


@dataclass(frozen=True)
class RankerInputs:
    """Which columns feed the booster, in order, and the vocabulary of each categorical one."""

    features: tuple[str, ...]
    categorical: tuple[str, ...]
    vocab: dict[str, tuple[str, ...]]
    base_score: str | None = None  # the probability column whose log-odds the booster's output is added to

    @classmethod
    def build(
        cls, spec: FeatureSpec, cfg: RankerConfig, items: pl.DataFrame, *, serving_unknown: Sequence[str]
    ) -> RankerInputs:
        """The inputs of a ranker under ``cfg`` over ``spec``'s features, less the columns the dataset says are
        not known at serving time (``serving_unknown``: :func:`features.serving_unknown_columns`) and, on top
        of those, ``cfg.exclude_features``."""
        unknown = [f for f in cfg.exclude_features if f not in spec.feature_columns]
        if unknown:
            raise ValueError(f"ranker.exclude_features: {unknown[0]!r} is not a feature ({spec.feature_columns})")
        left_out = {*cfg.exclude_features, *serving_unknown}
        behaviour = [f for f in spec.feature_columns if f not in left_out]
        cats = tuple(cfg.categorical_features)
        vocab = {c: tuple(sorted(items[c].unique().drop_nulls().to_list())) for c in cats}
        text = TEXT_FEATURES if cfg.use_text else []
        return cls(features=(*behaviour, *text, *cats), categorical=cats, vocab=vocab, base_score=cfg.base_score)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> RankerInputs:
        return cls(
            features=tuple(raw["features"]),
            categorical=tuple(raw["categorical"]),
            vocab={k: tuple(v) for k, v in raw["vocab"].items()},
            base_score=raw.get("base_score"),  # absent in rankers saved before it existed: boosted from zero
        )

    @functools.cached_property
    def uses_text(self) -> bool:
        """True when any input comes from the text model (the score or its rank). Cached: a request asks."""
        return any(f in TEXT_FEATURES for f in self.features)


def with_interest_rank(frame: pl.DataFrame, group: str = GROUP) -> pl.DataFrame:
    """``interest_rank``: the interest score's rank within its impression, scaled to [0, 1] (0 = best).

    The definition is the polars window query below. A frame of one impression (an API request) takes
    :func:`_one_group_rank` instead: the same number in numpy, without a query's fixed cost (~0.5 ms for ~100
    rows); ``tests/ranker/test_frame.py`` holds the two equal bit for bit (ties, signed zeros, NaN).
    """
    score = frame.get_column("interest_score")
    if (
        frame.height
        and not score.has_nulls()
        and "interest_rank" not in frame.columns
        and frame.get_column(group).n_unique() == 1
    ):
        return frame.hstack([pl.Series("interest_rank", _one_group_rank(score))])
    n = pl.len().over(group)
    rank = pl.col("interest_score").rank("average", descending=True).over(group)
    return frame.with_columns(pl.when(n > 1).then((rank - 1) / (n - 1)).otherwise(0.0).alias("interest_rank"))


def _one_group_rank(score: pl.Series) -> np.ndarray:
    """:func:`with_interest_rank` of one group, in numpy: polars' ``rank("average", descending=True)``, then
    ``(rank - 1) / (n - 1)`` (0 for one row).

    A value's average descending rank is ``(2n - below - upto + 1) / 2``, where ``below`` counts the values less
    than it and ``upto`` those not greater (ties, ``-0.0 == 0.0`` and NaN, largest, counted as polars counts them):
    an integer over 2, so exact in float64 however polars sums it, and the scaling is the same two float64
    operations. Hence the same bits as the query.
    """
    return one_group_rank(_float64(score))


def one_group_rank(x: np.ndarray) -> np.ndarray:
    """:func:`_one_group_rank` of float64 scores already in numpy (:mod:`ranker.request_matrix`'s requests)."""
    n = len(x)
    if n == 1:
        return np.zeros(1)
    s = np.sort(x)
    below, upto = np.searchsorted(s, x, "left"), np.searchsorted(s, x, "right")
    rank = (2 * n - below - upto + 1) / 2
    return (rank - 1) / (n - 1)


def model_matrix(frame: pl.DataFrame, inputs: RankerInputs) -> np.ndarray:
    """(rows, features) float64 matrix in ``inputs.features`` order; categories as codes (unknown = NaN).

    Column by column on Series, not as one ``select``: the API calls this once per request (~100 rows),
    where a query's fixed cost is most of the work. A category's code is its index in the vocabulary:
    the physical value of an Enum over that vocabulary (a value outside it casts to null). Up to
    :data:`SMALL_FRAME` rows the codes come from a dict of the same indices instead (``Enum.to_physical`` is a
    query, ~40 µs a request); ``tests/ranker/test_frame.py`` holds the two equal. A numeric column goes to
    numpy as it is and is widened there (the same IEEE conversion as polars' cast, without a Series).
    """
    present = set(frame.columns)
    missing = [f for f in inputs.features if f not in present]
    if missing:
        raise RankingFrameError(f"ranking frame: column {missing[0]!r} missing (needs {list(inputs.features)})")
    columns = []
    for name in inputs.features:
        column = frame.get_column(name)
        if name in inputs.categorical:
            columns.append(_category_codes(column, inputs.vocab[name]))
            continue
        values = column.to_numpy()  # a null comes back as NaN
        if values.dtype.kind not in "iuf":  # booleans, decimals (objects), strings: polars' cast
            values = column.cast(pl.Float64).to_numpy()
        columns.append(values)
    if not columns:
        return np.empty((frame.height, 0), dtype=np.float64)
    return np.stack(columns, axis=1, dtype=np.float64)


def _float64(column: pl.Series) -> np.ndarray:
    """``column`` cast to Float64, as numpy (no cast when it is Float64 already: a request pays per call)."""
    return (column if column.dtype == pl.Float64 else column.cast(pl.Float64)).to_numpy()


SMALL_FRAME = 4096  # rows up to which category codes come from a dict (a request), not an Enum cast (a table)


def _category_codes(column: pl.Series, vocab: tuple[str, ...]) -> np.ndarray:
    """Each value's index in ``vocab`` as float64, NaN for a null or a value outside it: the Enum's physical code."""
    strings = column if column.dtype == pl.String else column.cast(pl.String)
    if strings.len() <= SMALL_FRAME:
        codes = _vocab_codes(vocab)
        n = strings.len()
        return np.fromiter(map(codes.get, strings.to_list(), itertools.repeat(np.nan, n)), np.float64, n)
    return strings.cast(_vocab_enum(vocab), strict=False).to_physical().cast(pl.Float64).to_numpy()


def base_margin(frame: pl.DataFrame, inputs: RankerInputs) -> np.ndarray:
    """The score each row starts from before the trees: ``logit(inputs.base_score)``, or 0 without one.

    LambdaRank turns score differences into pair probabilities with a sigmoid, so starting from
    ``logit(ctr)`` makes the untrained model exactly the pairwise (Bradley-Terry) model item CTR implies:
    ``P(i above j) = sigmoid(logit ctr_i - logit ctr_j)``. The trees then learn only corrections to it, and
    early stopping can keep item CTR's ranking where nothing improves on it. Training (``init_score``) and
    every prediction add this same margin.
    """
    if inputs.base_score is None:
        return np.zeros(frame.height)
    name = inputs.base_score
    if name not in frame.columns:
        raise RankingFrameError(f"ranking frame: base-score column {name!r} missing")
    p = _float64(frame.get_column(name))
    if len(p) and not (p.min() > 0 and p.max() < 1):  # also NaN and null (NaN after to_numpy): NaN fails both
        bad = ~((p > 0) & (p < 1))
        row = int(np.flatnonzero(bad)[0])
        raise RankingFrameError(
            f"ranking frame: base-score column {name!r}: {int(bad.sum())} value(s) outside (0, 1), "
            f"first at row {row}: {p[row]!r}"
        )
    return logit(p)


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` as every base margin computes it (the request matrix too: the same floats)."""
    return np.log(p) - np.log1p(-p)


@functools.lru_cache(maxsize=64)
def _vocab_codes(vocab: tuple[str, ...]) -> dict[str, float]:
    """``value -> index`` in a categorical vocabulary: the Enum's physical codes (built first: it refuses a
    vocabulary the Enum path would refuse, e.g. one with a repeated value)."""
    _vocab_enum(vocab)
    return {value: float(i) for i, value in enumerate(vocab)}


@functools.lru_cache(maxsize=64)
def _vocab_enum(vocab: tuple[str, ...]) -> pl.Enum:
    """The Enum dtype of a categorical vocabulary, built once per vocabulary (not per request)."""
    return pl.Enum(vocab)


def ranking_frame(
    features: pl.DataFrame, items: pl.DataFrame, interest: pl.DataFrame | None, inputs: RankerInputs
) -> pl.DataFrame:
    """Feature rows + item category + interest score and rank, sorted so each impression is contiguous."""
    frame = features.join(items.select("item_id", *inputs.categorical), on="item_id", how="left")
    if inputs.uses_text:
        if interest is None:
            raise RankingFrameError("ranking frame: the ranker uses text but no interest scores were given")
        # interest_frozen (the text model's frozen-backbone head) rides along for the report; no ranker reads it
        carried = [c for c in ("interest_score", REPORT_ONLY_TEXT) if c in interest.columns]
        keys = ["impression_id", "item_id"]
        frame = frame.join(interest.select(*keys, *carried), on=keys, how="left")
        # Train rows may lack a score (cross-fitting by time leaves the first block unscored: see
        # ``textmodel.train.oof_scheme``); the combined ranker does not fit on them. Elsewhere a gap is an error.
        missing = frame.filter(pl.col("interest_score").is_null() & (pl.col("split") != "train")).height
        if missing:
            raise RankingFrameError(
                f"interest scores: {missing} row(s) have none (run `recrank textmodel train` or `embed` first)"
            )
        frame = with_interest_rank(frame)
    return frame.sort("ts", GROUP, "position")


def groups(frame: pl.DataFrame, max_rows: int, group: str = GROUP) -> tuple[np.ndarray, np.ndarray]:
    """Query sizes for LightGBM and a row order making each query contiguous.

    Impressions longer than ``max_rows`` (LightGBM's limit is 10,000 rows per query) are cut into chunks of
    consecutive positions; labels must be 0/1.
    """
    bad = frame.filter(~pl.col(LABEL).is_in([0, 1]))
    if bad.height:
        raise RankingFrameError(f"ranking frame: column {LABEL!r}: {bad.height} label(s) outside 0/1")
    keyed = frame.with_row_index("_row").with_columns((pl.int_range(pl.len()).over(group) // max_rows).alias("_chunk"))
    ordered = keyed.sort(group, "_chunk", "_row", maintain_order=True)
    sizes = ordered.group_by(group, "_chunk", maintain_order=True).len()["len"].to_numpy()
    if (sizes > max_rows).any():
        raise RankingFrameError(f"ranking frame: a query has more than {max_rows} rows")
    return ordered["_row"].to_numpy(), sizes


def split_rows(frame: pl.DataFrame, split: str) -> pl.DataFrame:
    part = frame.filter(pl.col("split") == split)
    if part.height == 0:
        raise RankingFrameError(f"ranking frame: no rows in the {split} split")
    return part


def fit_rows(frame: pl.DataFrame, split: str, inputs: RankerInputs) -> pl.DataFrame:
    """The rows a ranker over ``inputs`` fits on: ``split``'s rows, less those without an honest interest score."""
    part = split_rows(frame, split)
    if inputs.uses_text:
        part = part.filter(pl.col("interest_score").is_not_null())
        if part.height == 0:
            raise RankingFrameError(f"ranking frame: no row of the {split} split has an interest score")
    return part
