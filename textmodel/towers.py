"""The text model as a composition of named parts (no I/O, no loss: training owns the loss).

* :class:`ItemTower`: adapted top layers over cached lower states -> pooled -> standardised -> projection -> L2
  norm.
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
    """Item text -> unit vector of size ``dim``, from the lower-layer states of its tokens.

    ``standardize``: the pooled vectors are centred and scaled by the catalogue's mean and spread before the
    projection (buffers ``pooled_mean`` / ``pooled_scale``, set once by :meth:`fit_standardisation` from the
    untouched backbone, then fixed and saved with the model). A causal LM's mean-pooled states are nearly
    parallel (mean cosine 0.91-0.95 on the catalogues here): raw, one shared direction dominates what the
    projection sees, and the probe's validation AUC swung by 0.03-0.07 between epochs at the head's rate;
    standardised it rose faster and steadily (bench/text_defaults.py). Models saved before have no buffers.
    """

    def __init__(self, backbone: SplitBackbone, hidden_size: int, dim: int, pooling: str, standardize: bool = False):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.proj = nn.Linear(hidden_size, dim)
        self.standardize = standardize
        if standardize:
            self.register_buffer("pooled_mean", torch.zeros(hidden_size))
            self.register_buffer("pooled_scale", torch.ones(hidden_size))

    @torch.no_grad()
    def fit_standardisation(self, pooled: torch.Tensor) -> None:
        """Set the centring and scaling from the pooled vectors of the whole catalogue (N, H)."""
        if self.standardize:
            pooled = pooled.float()
            self.pooled_mean.copy_(pooled.mean(dim=0))
            self.pooled_scale.copy_(pooled.std(dim=0).clamp(min=1e-6))

    def pooled(self, lower_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Top layers + pooling: (B, T, H), (B, T) -> (B, H)."""
        hidden = self.backbone.upper(lower_states, mask)  # (B, T, H)
        return pool(hidden, mask, self.pooling).float()

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(Standardisation +) projection + L2 norm: (B, H) -> (B, dim)."""
        if self.standardize:
            pooled = (pooled - self.pooled_mean) / self.pooled_scale
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

    def __init__(
        self,
        backbone: SplitBackbone,
        hidden_size: int,
        dim: int,
        pooling: str,
        score_scale: float,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.items = ItemTower(backbone, hidden_size, dim, pooling, standardize)
        self.users = UserTower(dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(score_scale)))

    def score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, dim) x (B, C, dim) -> (B, C) interest scores."""
        return self.log_scale.exp() * torch.einsum("bd,bcd->bc", user, items)

    def tower_parameters(self) -> list[nn.Parameter]:
        return [*self.items.proj.parameters(), *self.users.parameters(), self.log_scale]

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.items.backbone.parameters() if p.requires_grad]

    def learned_state(self) -> dict[str, torch.Tensor]:
        """What training decides, by name: every trainable weight and the item tower's standardisation (a
        statistic of the catalogue, not a gradient's work). The artifact saves exactly this."""
        state = {n: p for n, p in self.named_parameters() if p.requires_grad}
        if self.items.standardize:
            state.update({f"items.{n}": b for n, b in self.items.named_buffers(recurse=False)})
        return state
