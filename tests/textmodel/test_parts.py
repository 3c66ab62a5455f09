"""Towers, pooling, bucketing and the training data, on hand-made inputs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import torch

from textmodel.data import Catalogue, ImpressionSet, TextDataError, cross_fit_plan, sample_examples, selection_split
from textmodel.encoder import length_buckets
from textmodel.prompt import ItemText, Prompt
from textmodel.towers import UserTower, pool


def test_pool_last_and_mean() -> None:
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)  # (B=2, T=3, H=2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "last").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert pool(hidden, mask, "mean").tolist() == [[1.0, 2.0], [8.0, 9.0]]


def test_user_tower_default_for_empty_history() -> None:
    torch.manual_seed(0)
    tower = UserTower(4)
    history = torch.randn(2, 3, 4)
    mask = torch.tensor([[False, False, False], [False, True, True]])
    users = tower(history, mask)
    assert torch.allclose(users[0], torch.nn.functional.normalize(tower.default, dim=0))
    assert torch.allclose(users.norm(dim=1), torch.ones(2))
    # Masked-out history entries have no influence.
    changed = history.clone()
    changed[1, 0] = 100.0
    assert torch.allclose(tower(changed, mask)[1], users[1])


def test_length_buckets_respect_the_token_budget() -> None:
    lengths = torch.tensor([5, 70, 6, 30, 5, 7, 69])
    buckets = list(length_buckets(lengths, token_budget=140))
    assert sorted(torch.cat(buckets).tolist()) == list(range(7))
    for b in buckets:
        assert len(b) * int(lengths[b].max()) <= 140 or len(b) == 1


def test_catalogue_text_and_missing_text() -> None:
    items = pl.DataFrame({"item_id": ["b", "a"], "title": ["Second", "First"], "body": ["", "More."]})
    cat = Catalogue.from_items(items, _joined("title", "body"))
    assert cat.item_ids == ["a", "b"] and cat.texts == ["First. More.", "Second"]
    with pytest.raises(TextDataError, match=re.escape("1 item(s) have no text in ['body'], e.g. 'b'")):
        Catalogue.from_items(items, _joined("body"))
    with pytest.raises(TextDataError, match="column 'abstract' missing"):
        Catalogue.from_items(items, _joined("abstract"))


def _joined(*fields: str) -> ItemText:
    """The join of text models saved before prompts: needs no tokenizer (the encoder cuts at the end)."""
    return ItemText(Prompt.joined(fields), tokenizer=None, max_tokens=32)


def _set() -> tuple[Catalogue, ImpressionSet]:
    cat = Catalogue(item_ids=["a", "b", "c", "d"], texts=["A", "B", "C", "D"])
    rows = pl.DataFrame(
        {
            "impression_id": ["x", "x", "x", "y", "y", "z"],
            "item_id": ["a", "b", "c", "a", "d", "b"],
            "clicked": [1, 0, 0, 1, 1, 0],
        }
    )
    hist = pl.DataFrame({"impression_id": ["x", "y", "z"], "history": [[], ["c"], ["a", "b", "c", "d"]]})
    return cat, ImpressionSet.build(rows, hist, cat, cap=3)


def test_impression_set_histories_are_right_aligned_and_capped() -> None:
    _, data = _set()
    assert data.impression_ids == ["x", "y", "z"]
    assert data.history.tolist() == [[-1, -1, -1], [-1, -1, 2], [1, 2, 3]]  # newest last, cap 3
    assert data.row_item.tolist() == [0, 1, 2, 0, 3, 1]
    assert data.row_impression.tolist() == [0, 0, 0, 1, 1, 2]


def test_softmax_examples_use_negatives_of_the_same_impression() -> None:
    _, data = _set()
    ex = sample_examples(data, "softmax", 5, np.random.default_rng(0))
    # Only impression x has both labels: one positive (a) against negatives drawn from {b, c}.
    assert ex.impression.tolist() == [0]
    assert ex.candidates[0, 0] == 0 and set(ex.candidates[0, 1:].tolist()) <= {1, 2}
    assert ex.labels[0].tolist() == [1, 0, 0, 0, 0, 0]
    bce = sample_examples(data, "bce", 5, np.random.default_rng(0))
    assert len(bce) == 6 and bce.labels[:, 0].tolist() == [1, 0, 0, 1, 1, 0]


def test_subset_keeps_whole_impressions_and_renumbers() -> None:
    _, data = _set()
    part = data.subset(np.array([True, False, True]))
    assert part.impression_ids == ["x", "z"]
    assert part.history.tolist() == [[-1, -1, -1], [1, 2, 3]]
    assert part.row_item.tolist() == [0, 1, 2, 1]
    assert part.row_impression.tolist() == [0, 0, 0, 1]
    assert part.row_keys["impression_id"].to_list() == ["x", "x", "x", "z"]


def _timed_set(times_h: list[int]) -> ImpressionSet:
    """One row per impression ``i0, i1, ...`` shown at the given hours (an impression's rows share its time)."""
    cat = Catalogue(item_ids=["a"], texts=["A"])
    n = len(times_h)
    ids = [f"i{k:02d}" for k in range(n)]
    ts = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in times_h]
    rows = pl.DataFrame({"impression_id": ids, "item_id": ["a"] * n, "clicked": [k % 2 for k in range(n)], "ts": ts})
    hist = pl.DataFrame(
        {"impression_id": ids, "history": [[] for _ in ids]}, schema_overrides={"history": pl.List(pl.String)}
    )
    return ImpressionSet.build(rows, hist, cat, cap=2)


def test_time_cross_fit_never_fits_on_the_scored_time_or_later() -> None:
    times = [5, 1, 9, 3, 3, 7, 2, 8, 6, 4, 0, 3]  # ties at hour 3 must stay in one block
    data = _timed_set(times)
    plan = cross_fit_plan(data, folds=4, scheme="time", seed=0)
    assert len(plan) == 3  # block 0 has nothing before it
    scored = np.zeros(len(times), dtype=int)
    for fit_on, held in plan:
        # Brute force: every fitted impression is strictly older than every scored one.
        assert data.impression_ts[fit_on].max() < data.impression_ts[held].min()
        scored += held
    assert scored.max() == 1  # each impression scored at most once
    unscored = [t for t, s in zip(times, scored, strict=True) if not s]
    assert sorted(unscored) == [0, 1, 2]  # the oldest block (12 // 4 = 3 impressions) is the one left out
    # The hour-3 ties land together in one scored block.
    tie_blocks = {k for k, (_, held) in enumerate(plan) for t, h in zip(times, held, strict=True) if h and t == 3}
    assert len(tie_blocks) == 1


def test_impression_cross_fit_scores_every_impression_once_from_the_others() -> None:
    data = _timed_set(list(range(10)))
    plan = cross_fit_plan(data, folds=3, scheme="impressions", seed=0)
    held = np.stack([h for _, h in plan])
    assert held.sum(axis=0).tolist() == [1] * 10
    for fit_on, h in plan:
        assert not (fit_on & h).any() and (fit_on | h).all()


def test_cross_fit_plan_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="oof_folds: 1"):
        cross_fit_plan(_timed_set([0, 1]), folds=1, scheme="time", seed=0)
    with pytest.raises(ValueError, match="oof_scheme: 'users'"):
        cross_fit_plan(_timed_set([0, 1]), folds=2, scheme="users", seed=0)
    _, untimed = _set()
    with pytest.raises(TextDataError, match="column 'ts'"):
        cross_fit_plan(untimed, folds=2, scheme="time", seed=0)


def test_selection_split_holds_out_the_latest_impressions_ties_together() -> None:
    times = [5, 1, 9, 3, 3, 7, 2, 8, 6, 4, 0, 9]  # the two hour-9 impressions are the latest
    data = _timed_set(times)
    fit, select = selection_split(data, 0.1)  # 10% of 12 impressions: the latest time, both ties with it
    assert sorted(select.impression_ids) == ["i02", "i11"]
    assert sorted(fit.impression_ids) == sorted(set(data.impression_ids) - {"i02", "i11"})
    assert fit.impression_ts.max() < select.impression_ts.min()
    fit, select = selection_split(data, 0.25)  # 3 impressions: hours 8, 9, 9
    assert sorted(select.impression_ids) == ["i02", "i07", "i11"]
    with pytest.raises(TextDataError, match=r"selection_fraction 0\.5: the 2 train impression"):
        selection_split(_timed_set([3, 3]), 0.5)  # one instant: nothing to train on


def test_standardisation_centres_and_scales_the_head_input() -> None:
    from textmodel.towers import ItemTower

    torch.manual_seed(0)
    pooled = torch.randn(50, 6) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) + 40.0  # nearly parallel rows
    tower = ItemTower(backbone=None, hidden_size=6, dim=3, pooling="mean", standardize=True)
    assert torch.equal(tower.pooled_mean, torch.zeros(6)) and torch.equal(tower.pooled_scale, torch.ones(6))
    tower.fit_standardisation(pooled)
    standardised = (pooled - tower.pooled_mean) / tower.pooled_scale
    assert torch.allclose(standardised.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(standardised.std(0), torch.ones(6), atol=1e-5)
    expected = torch.nn.functional.normalize(tower.proj(standardised), dim=-1)
    assert torch.allclose(tower.head(pooled), expected)
    plain = ItemTower(backbone=None, hidden_size=6, dim=3, pooling="mean")  # models saved before: raw input
    plain.fit_standardisation(pooled)  # a no-op
    assert not list(plain.buffers())
