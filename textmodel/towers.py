"""The text model as a composition of named parts (no I/O, no loss: training owns the loss).

* :class:`ItemTower`: adapted top layers over cached lower states -> pooled -> projection -> L2 norm.
* :class:`UserTower`: attention pooling over the user's history-item vectors, or a learned default
  vector for users with no history (most rows of ``ml100k``: cold-start users still get a score).
* :class:`TextModel`: both towers and the score, a learned scale times the dot product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textmodel.layers import SplitBackbone


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): the last non-pad token (right padding) or the masked mean."""
    if how == "last":
        last = mask.long().sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"textmodel.pooling: unknown pooling {how!r} (last or mean)")


class ItemTower(nn.Module):
    """Item text -> unit vector of size ``dim``, from the lower-layer states of its tokens."""

    def __init__(self, backbone: SplitBackbone, hidden_size: int, dim: int, pooling: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.proj = nn.Linear(hidden_size, dim)

    def pooled(self, lower_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Top layers + pooling: (B, T, H), (B, T) -> (B, H)."""
        hidden = self.backbone.upper(lower_states, mask)  # (B, T, H)
        return pool(hidden, mask, self.pooling).float()

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Projection + L2 norm: (B, H) -> (B, dim)."""
        return F.normalize(self.proj(pooled), dim=-1)

    def forward(self, lower_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(lower_states, mask))


class UserTower(nn.Module):
    """History-item vectors -> unit user vector (additive attention; learned default when empty)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.out = nn.Linear(dim, dim)
        self.default = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``history`` (B, N, dim), ``mask`` (B, N) bool -> (B, dim)."""
        logits = torch.tanh(self.key(history)) @ self.query  # (B, N)
        logits = logits.masked_fill(~mask, float("-inf"))
        has_history = mask.any(dim=1)  # (B,)
        weights = torch.softmax(logits.masked_fill(~has_history[:, None], 0.0), dim=1) * mask  # (B, N)
        pooled = (weights.unsqueeze(-1) * history).sum(dim=1)  # (B, dim)
        user = torch.where(has_history[:, None], self.out(pooled), self.default.expand_as(pooled))
        return F.normalize(user, dim=-1)


class TextModel(nn.Module):
    """Item tower + user tower + scaled dot-product interest score."""

    def __init__(self, backbone: SplitBackbone, hidden_size: int, dim: int, pooling: str, score_scale: float) -> None:
        super().__init__()
        self.items = ItemTower(backbone, hidden_size, dim, pooling)
        self.users = UserTower(dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(score_scale)))

    def score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, dim) x (B, C, dim) -> (B, C) interest scores."""
        return self.log_scale.exp() * torch.einsum("bd,bcd->bc", user, items)

    def tower_parameters(self) -> list[nn.Parameter]:
        return [*self.items.proj.parameters(), *self.users.parameters(), self.log_scale]

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.items.backbone.parameters() if p.requires_grad]
