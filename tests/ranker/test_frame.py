"""Ranking-frame assembly: groups, the LightGBM row limit, label checks, categorical codes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ranker.frame import (
    SMALL_FRAME,
    RankerInputs,
    RankingFrameError,
    fit_rows,
    groups,
    model_matrix,
    ranking_frame,
    with_interest_rank,
)


def test_groups_are_contiguous_and_long_impressions_are_chunked() -> None:
    frame = pl.DataFrame({"impression_id": ["b", "a", "b", "a", "b", "b", "b"], "clicked": [0, 1, 1, 0, 0, 0, 1]})
    order, sizes = groups(frame, max_rows=2)
    ordered = frame[order]
    assert ordered["impression_id"].to_list() == ["a", "a", "b", "b", "b", "b", "b"]
    assert sizes.tolist() == [2, 2, 2, 1]  # "b" has 5 rows: cut into 2 + 2 + 1
    assert sizes.sum() == frame.height


def test_labels_outside_0_1_are_refused() -> None:
    with pytest.raises(RankingFrameError, match="'clicked': 1 label"):
        groups(pl.DataFrame({"impression_id": ["a", "a"], "clicked": [0, 2]}), 10)


def test_interest_rank_is_scaled_within_impressions() -> None:
    frame = pl.DataFrame({"impression_id": ["a", "a", "a", "b"], "interest_score": [0.1, 0.9, 0.5, 3.0]})
    assert with_interest_rank(frame)["interest_rank"].to_list() == [1.0, 0.0, 0.5, 0.0]


def _interest_rank_by_query(scores: np.ndarray) -> np.ndarray:
    """The polars window query's interest rank of one impression: beside a second one-row impression, the frame
    has two groups, so the one-group fast path is not taken (and the other group cannot change this one's)."""
    frame = pl.DataFrame(
        {"impression_id": ["a"] * len(scores) + ["b"], "interest_score": np.append(scores, 0.0)},
        schema={"impression_id": pl.String, "interest_score": pl.Float64},
    )
    return with_interest_rank(frame)["interest_rank"].to_numpy()[:-1]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 257])
def test_interest_rank_of_one_impression_equals_the_query_bit_for_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    cases = [
        rng.normal(size=n),
        rng.integers(0, 4, n).astype(np.float64),  # many ties
        rng.choice([0.0, -0.0, 1.5, -1.5], n),  # signed zeros tie, as in polars
        np.zeros(n),  # a cold user: every score the same
        np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),  # NaN ranks first, as in polars
        np.where(rng.random(n) < 0.2, np.inf, rng.integers(0, 3, n).astype(np.float64)),
    ]
    for scores in cases:
        fast = with_interest_rank(pl.DataFrame({"impression_id": ["r"] * n, "interest_score": scores}))
        assert fast["interest_rank"].dtype == pl.Float64
        assert fast["interest_rank"].to_numpy().tobytes() == _interest_rank_by_query(scores).tobytes(), scores


def test_model_matrix_orders_columns_and_codes_categories() -> None:
    inputs = RankerInputs(features=("x", "category"), categorical=("category",), vocab={"category": ("a", "b")})
    frame = pl.DataFrame({"category": ["b", "zzz", "a"], "x": [1, 2, 3], "ignored": [0, 0, 0]})
    m = model_matrix(frame, inputs)
    assert m[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert m[0, 1] == 1.0 and math.isnan(m[1, 1]) and m[2, 1] == 0.0  # unknown category -> missing
    assert m.dtype == np.float64
    with pytest.raises(RankingFrameError, match="column 'x' missing"):
        model_matrix(frame.drop("x"), inputs)


@pytest.mark.parametrize("rows", [3, 1000, SMALL_FRAME + 1])
def test_category_codes_of_a_request_equal_the_enum_codes_of_a_table(rows: int) -> None:
    """The dict codes (request-sized frames) and the Enum cast (larger ones) give the same matrix: known values,
    values outside the vocabulary, nulls, a Categorical column; numeric columns with nulls and of every width."""
    rng = np.random.default_rng(rows)
    vocab = ("Drama", "Action", "Sci-Fi", "unknown")  # not sorted: the code is the index, whatever the order
    values = rng.choice([*vocab, "Western", "", None], rows).tolist()
    frame = pl.DataFrame(
        {
            "category": values,
            "genre": pl.Series(values, dtype=pl.String).cast(pl.Categorical),
            "i64": rng.integers(-(2**60), 2**60, rows),
            "i32": pl.Series(rng.integers(-100, 100, rows), dtype=pl.Int32),
            "u8": pl.Series(rng.integers(0, 255, rows), dtype=pl.UInt8),
            "f32": pl.Series(rng.normal(size=rows), dtype=pl.Float32),
            "nullable": pl.Series([None if k % 3 == 0 else k for k in range(rows)], dtype=pl.Int64),
            "flag": rng.random(rows) < 0.5,
            "price": pl.Series(rng.integers(0, 10**6, rows), dtype=pl.Int64).cast(pl.Decimal(10, 2)) / 100,
        }
    )
    inputs = RankerInputs(
        features=("i64", "category", "i32", "u8", "f32", "nullable", "flag", "price", "genre"),
        categorical=("category", "genre"),
        vocab={"category": vocab, "genre": vocab},
    )
    enum = pl.Enum(vocab)
    expected = np.column_stack(
        [
            frame[c].cast(pl.String).cast(enum, strict=False).to_physical().cast(pl.Float64).to_numpy()
            if c in inputs.categorical
            else frame[c].cast(pl.Float64).to_numpy()
            for c in inputs.features
        ]
    )
    m = model_matrix(frame, inputs)
    assert m.dtype == np.float64 and m.flags.c_contiguous
    assert m.tobytes() == expected.tobytes()


def _scored(
    split: list[str], interest: list[float | None]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, RankerInputs]:
    n = len(split)
    features = pl.DataFrame(
        {
            "impression_id": [f"i{k // 2}" for k in range(n)],
            "item_id": [f"m{k}" for k in range(n)],
            "ts": [k // 2 for k in range(n)],
            "position": [k % 2 for k in range(n)],
            "split": split,
            "x": [float(k) for k in range(n)],
        }
    )
    items = pl.DataFrame({"item_id": [f"m{k}" for k in range(n)]})
    interest_rows = features.select("impression_id", "item_id").with_columns(
        pl.Series("interest_score", interest, dtype=pl.Float64)
    )
    inputs = RankerInputs(features=("x", "interest_score", "interest_rank"), categorical=(), vocab={})
    return features, items, interest_rows, inputs


def test_train_rows_without_an_interest_score_are_kept_out_of_fitting_only() -> None:
    # Cross-fitting by time leaves the oldest train block unscored: allowed there, dropped from fitting.
    features, items, interest, inputs = _scored(
        ["train", "train", "train", "train", "val", "val"], [None, None, 0.2, 0.7, 0.1, 0.3]
    )
    frame = ranking_frame(features, items, interest, inputs)
    assert frame.height == 6
    fit = fit_rows(frame, "train", inputs)
    assert fit["item_id"].to_list() == ["m2", "m3"] and fit["interest_rank"].to_list() == [1.0, 0.0]
    plain = RankerInputs(features=("x",), categorical=(), vocab={})
    assert fit_rows(frame, "train", plain).height == 4  # a features-only ranker fits on every train row
    with pytest.raises(RankingFrameError, match="no row of the val split has an interest score"):
        fit_rows(frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("interest_score")), "val", inputs)


def test_a_missing_interest_score_outside_train_is_an_error() -> None:
    features, items, interest, inputs = _scored(["train", "train", "test", "test"], [0.5, 0.1, None, 0.3])
    with pytest.raises(RankingFrameError, match=r"1 row\(s\) have none"):
        ranking_frame(features, items, interest, inputs)
