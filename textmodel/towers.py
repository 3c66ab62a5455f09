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

from textmodel.layers import ItemBackbone, pool

__all__ = ["ItemTower", "TextModel", "UserTower", "pool"]


class ItemTower(nn.Module):
    """Item text -> unit vector of size ``dim``, from the lower-layer states of its tokens.

    ``standardize``: the pooled vectors are centred and scaled by the catalogue's mean and spread before the
    projection (buffers ``pooled_mean`` / ``pooled_scale``, set once by :meth:`fit_standardisation` from the
    untouched backbone, then fixed and saved with the model). A causal LM's mean-pooled states are nearly
    parallel (mean cosine 0.91-0.95 on the catalogues here): raw, one shared direction dominates what the
    projection sees, and the probe's validation AUC swung by 0.03-0.07 between epochs at the head's rate;
    standardised it rose faster and steadily (bench/text_defaults.py). Models saved before have no buffers.
    """

    def __init__(
        self,
        backbone: ItemBackbone,
        hidden_size: int,
        dim: int,
        pooling: str,
        standardize: bool = False,
        normalize: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize
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
        """The trainable part of the backbone + pooling: cached states (B, T, H), (B, T) -> (B, H)."""
        scale = self.pooled_scale if self.standardize else None
        return self.backbone.pooled(lower_states, mask, self.pooling, scale).float()

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(Standardisation +) projection (+ L2 norm for the cosine score): (B, H) -> (B, dim)."""
        if self.standardize:
            pooled = (pooled - self.pooled_mean) / self.pooled_scale
        out = self.proj(pooled)
        return F.normalize(out, dim=-1) if self.normalize else out

    def forward(self, lower_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(lower_states, mask))


class UserTower(nn.Module):
    """History-item vectors -> user vector (additive attention; learned default when empty), unit length for
    the cosine score."""

    def __init__(self, dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
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
        return F.normalize(user, dim=-1) if self.normalize else user


class TextModel(nn.Module):
    """Item tower + user tower + interest score: a learned scale times the cosine of the user and item vectors
    (``similarity: cosine``, both unit length) or times their plain dot product (``dot``)."""

    def __init__(
        self,
        backbone: ItemBackbone,
        hidden_size: int,
        dim: int,
        pooling: str,
        score_scale: float,
        standardize: bool = False,
        similarity: str = "cosine",
    ) -> None:
        super().__init__()
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"textmodel.similarity: {similarity!r} is not one of 'cosine', 'dot'")
        self.items = ItemTower(backbone, hidden_size, dim, pooling, standardize, similarity == "cosine")
        self.users = UserTower(dim, similarity == "cosine")
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
