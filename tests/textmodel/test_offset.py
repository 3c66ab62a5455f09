"""Residual training over a behavioural feature (``textmodel.train.offset_feature``): the data carries each
row's logit to the candidates it becomes, and the loss adds it with the trainer's weight."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from textmodel.backbone import load_backbone
from textmodel.data import Batch, TextDataError, load_sets, sample_examples
from textmodel.model import build_text_model
from textmodel.prompt import ItemText, Prompt
from textmodel.train import ClickTrainer

CTR = [0.5, 0.8, 0.2, 0.9, 0.1, 0.6, 0.3, 0.7]
TITLE = ItemText(Prompt.joined(["title"]), tokenizer=None, max_tokens=32)  # the bare titles: no tokenizer needed


def _tables(ctr: list[float | None] = CTR) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    items = pl.DataFrame({"item_id": list("abcdefgh"), "title": [f"Title {c}" for c in "abcdefgh"], "body": [""] * 8})
    features = pl.DataFrame(
        {
            "impression_id": ["x", "x", "x", "y", "y", "y", "z", "w"],
            "item_id": list("abcdefgh"),
            "clicked": [1, 0, 0, 1, 0, 1, 0, 1],
            "split": ["train"] * 6 + ["val", "test"],
            "ts": [datetime(2024, 1, 1, tzinfo=UTC)] * 8,
            "item_ctr_smoothed": ctr,
        },
        schema_overrides={"item_ctr_smoothed": pl.Float64},
    )
    hist = pl.DataFrame(
        {"impression_id": ["x", "y", "z", "w"], "history": [[], ["a"], [], []]},
        schema_overrides={"history": pl.List(pl.String)},
    )
    return items, features, hist


def test_rows_carry_the_logit_of_the_offset_feature() -> None:
    items, features, hist = _tables()
    _, sets = load_sets(items, features, hist, TITLE, 3, offset="item_ctr_smoothed")
    expected = [math.log(p / (1 - p)) for p in CTR[:6]]
    np.testing.assert_allclose(sets["train"].row_offset, expected, rtol=1e-6)
    assert sets["train"].subset(np.array([False, True])).row_offset.tolist() == pytest.approx(expected[3:])
    _, plain = load_sets(items, features, hist, TITLE, 3)
    assert plain["train"].row_offset is None


@pytest.mark.parametrize(
    ("ctr", "offset", "message"),
    [
        (CTR, "item_clicks_before", "column 'item_clicks_before' missing"),
        ([0.5, None, *CTR[2:]], "item_ctr_smoothed", "'item_ctr_smoothed': 1 null value"),
        ([0.5, 3.0, *CTR[2:]], "item_ctr_smoothed", r"1 value\(s\) outside \[0, 1\], e.g. 3.0"),
    ],
)
def test_bad_offset_columns_are_named(ctr, offset: str, message: str) -> None:
    items, features, hist = _tables(ctr)
    with pytest.raises(TextDataError, match=message):
        load_sets(items, features, hist, TITLE, 3, offset=offset)


def test_every_candidate_gets_its_own_row_offset() -> None:
    items, features, hist = _tables()
    _, sets = load_sets(items, features, hist, TITLE, 3, offset="item_ctr_smoothed")
    data = sets["train"]
    own = {(int(m), int(i)): o for m, i, o in zip(data.row_impression, data.row_item, data.row_offset, strict=True)}
    for objective in ("softmax", "bce"):
        ex = sample_examples(data, objective, 4, np.random.default_rng(1))
        assert ex.offsets.shape == ex.candidates.shape
        for m, cands, offs in zip(ex.impression, ex.candidates, ex.offsets, strict=True):
            assert [own[(int(m), int(c))] for c in cands] == offs.tolist()


def test_loss_adds_the_weighted_offset_to_the_scores(tiny_data) -> None:
    cfg, catalogue, _ = tiny_data
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"), total_steps=1)
    trainer = ClickTrainer(model, encoder, cfg.textmodel.train, torch.device("cpu"), lambda frame: 0.0)
    with torch.no_grad():
        trainer.offset_weight.fill_(0.5)
    memory = encoder.encode_all()
    history = torch.tensor([[0, 1, -1], [-1, -1, -1]])
    candidates = torch.tensor([[2, 3, 4], [5, 6, 7]])
    offsets = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    with torch.no_grad():
        got = trainer.loss(Batch(history, candidates, labels, offsets), memory)
        users = model.users(memory[history.clamp(min=0)], history >= 0)
        scores = model.score(users, encoder.encode(torch.arange(len(catalogue.item_ids)))[candidates])
        expected = F.cross_entropy(scores + 0.5 * offsets, torch.zeros(2, dtype=torch.long))
        plain = trainer.loss(Batch(history, candidates, labels), memory)
    assert float(got) == pytest.approx(float(expected), abs=1e-5)
    assert float(plain) == pytest.approx(float(F.cross_entropy(scores, torch.zeros(2, dtype=torch.long))), abs=1e-5)
