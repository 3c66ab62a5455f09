"""The interest head's product of user and item vectors: the request path's cheaper gathers give the same bits
as the plain indexing they replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from textmodel.scoring import InterestHead
from textmodel.towers import UserTower


@pytest.mark.parametrize(("dim", "users", "rows"), [(8, 1, 1), (16, 1, 100), (64, 1, 257), (64, 5, 300), (33, 3, 0)])
def test_score_users_equals_indexing_both_tables(dim: int, users: int, rows: int) -> None:
    torch.manual_seed(dim)
    holder = nn.Module()
    holder.users, holder.log_scale = UserTower(dim), nn.Parameter(torch.tensor(0.7))
    head = InterestHead(holder, torch.randn(500, dim, dtype=torch.float64))
    extra = torch.randn(4, dim, dtype=torch.float64)
    rng = np.random.default_rng(dim)
    user_vectors = torch.randn(users, dim, dtype=torch.float64)
    row_user, row_item = rng.integers(0, users, rows), rng.integers(0, 504, rows)
    table = torch.cat([head.vectors, extra])
    want = (head.scale * (user_vectors[torch.from_numpy(row_user)] * table[torch.from_numpy(row_item)]).sum(-1)).numpy()
    assert head.score_users(user_vectors, row_user, row_item, extra).tobytes() == want.tobytes()
    known = row_item % 500
    want = head.scale * (user_vectors[torch.from_numpy(row_user)] * head.vectors[torch.from_numpy(known)]).sum(-1)
    assert head.score_users(user_vectors, row_user, known).tobytes() == want.numpy().tobytes()
