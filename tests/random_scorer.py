"""A text scorer over random item vectors and a random user tower, for pipeline tests that need interest
scores but no backbone."""

from __future__ import annotations

import torch
from torch import nn

from textmodel.scoring import InterestHead, TextScorer
from textmodel.towers import UserTower


def random_text_scorer(item_ids: list[str], seed: int, history_cap: int, dim: int = 8) -> TextScorer:
    """A table-only scorer (as :meth:`TextScorer.table_only` builds one) over random vectors and a random tower."""
    torch.manual_seed(seed)
    holder = nn.Module()
    holder.users, holder.log_scale = UserTower(dim).eval(), nn.Parameter(torch.tensor(1.5))
    scorer = TextScorer.__new__(TextScorer)
    scorer.model, scorer.tokenizer, scorer.config, scorer.item_text, scorer.device = holder, None, None, None, "cpu"
    scorer.item_ids, scorer.index = item_ids, {item: i for i, item in enumerate(item_ids)}
    scorer.vectors = torch.randn(len(item_ids), dim, dtype=torch.float64)
    scorer.head, scorer.history_cap = InterestHead(holder, scorer.vectors), history_cap
    return scorer
