"""Ranking-frame assembly: groups, the LightGBM row limit, label checks, categorical codes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ranker.frame import RankerInputs, RankingFrameError, groups, model_matrix, with_interest_rank


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


def test_model_matrix_orders_columns_and_codes_categories() -> None:
    inputs = RankerInputs(features=("x", "category"), categorical=("category",), vocab={"category": ("a", "b")})
    frame = pl.DataFrame({"category": ["b", "zzz", "a"], "x": [1, 2, 3], "ignored": [0, 0, 0]})
    m = model_matrix(frame, inputs)
    assert m[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert m[0, 1] == 1.0 and math.isnan(m[1, 1]) and m[2, 1] == 0.0  # unknown category -> missing
    assert m.dtype == np.float64
    with pytest.raises(RankingFrameError, match="column 'x' missing"):
        model_matrix(frame.drop("x"), inputs)
