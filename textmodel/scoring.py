"""Interest scores from item vectors: one implementation for validation, bulk export and serving.

score(user, item) = exp(log_scale) * <user, item>, where the user vector pools the vectors of the
user's history items (:class:`~textmodel.towers.UserTower`) and item vectors come from the catalogue's
embedding table, or are encoded from text when an item is not in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from textmodel.artifact import LoadedTextModel, table_vectors
from textmodel.data import ImpressionSet
from textmodel.encoder import ItemEncoder, Tokenized
from textmodel.prompt import ItemText
from textmodel.towers import TextModel


@torch.no_grad()
def user_vectors(model: TextModel, memory: torch.Tensor, history: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    """User vectors for histories (M, cap) of item indices (-1 pad), from item vectors ``memory``: (M, dim)."""
    out = []
    for start in range(0, len(history), chunk):
        hist = torch.from_numpy(history[start : start + chunk]).to(memory.device)
        out.append(model.users(memory[hist.clamp(min=0)], hist >= 0))
    return torch.cat(out) if out else torch.empty(0, memory.shape[1], device=memory.device)


@torch.no_grad()
def score_rows(model: TextModel, memory: torch.Tensor, data: ImpressionSet) -> np.ndarray:
    """Interest score of every shown row of ``data``: (R,) float64."""
    users = user_vectors(model, memory, data.history)  # (M, dim)
    imp = torch.from_numpy(data.row_impression).to(memory.device)
    items = torch.from_numpy(data.row_item).to(memory.device)
    scores = model.log_scale.exp() * (users[imp] * memory[items]).sum(dim=-1)
    return scores.double().cpu().numpy()


def scored_frame(data: ImpressionSet, scores: np.ndarray) -> pl.DataFrame:
    return data.row_keys.with_columns(
        pl.Series("clicked", data.row_label, dtype=pl.Int8), pl.Series("score", scores, dtype=pl.Float64)
    )


class TextScorer:
    """Scores candidates for a user from a loaded text model; encodes only items missing from its table."""

    def __init__(self, loaded: LoadedTextModel, device: torch.device) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.backbone.tokenizer
        self.config = loaded.config
        # The saved model's prompt and token budget, not the current config's: items read as in training.
        self.item_text = ItemText.from_config(loaded.config, self.tokenizer)
        self.device = device
        self.item_ids: list[str] = loaded.table["item_id"].to_list()
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.vectors = torch.from_numpy(table_vectors(loaded.table)).to(device)  # (N, dim)
        self.history_cap = int(loaded.meta.get("history_cap", 50))

    def render(self, items: Sequence[Mapping[str, str | None]]) -> list[str]:
        """Texts of items given by their fields (title, body, ...), exactly as the catalogue's were made."""
        return self.item_text.render(items)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Vectors of items given by text (the same lower + upper path as training, uncached): (n, dim).

        ``texts`` come from :meth:`render` (or the catalogue), so they already fit ``max_tokens``.
        """
        tokens = Tokenized.from_texts(self.tokenizer, list(texts), self.config.max_tokens)
        encoder = ItemEncoder(self.model.items, tokens, self.config.train.encode_batch_tokens, self.device)
        return encoder.encode_all()

    def item_vectors(
        self,
        item_ids: Sequence[str],
        texts: Mapping[str, str] | None = None,
        given: Mapping[str, np.ndarray] | None = None,
    ) -> torch.Tensor:
        """Vectors of ``item_ids`` from the table, else from ``given`` (encoded elsewhere, e.g. by the serving
        encoder), else encoded here from ``texts`` (KeyError if absent)."""
        texts = texts or {}
        fresh = {i: torch.as_tensor(v, dtype=self.vectors.dtype, device=self.device) for i, v in (given or {}).items()}
        unknown = [i for i in item_ids if i not in self.index and i not in fresh]
        missing = [i for i in unknown if i not in texts]
        if missing:
            raise KeyError(f"item {missing[0]!r} is not in the embedding table and has no text")
        if unknown:
            fresh.update(zip(unknown, self.encode_texts([texts[i] for i in unknown]), strict=True))
        if not fresh:  # every vector is in the table (the common request): one gather, not one op per item
            return self.vectors[torch.as_tensor([self.index[i] for i in item_ids], device=self.device)]
        return torch.stack([fresh[i] if i in fresh else self.vectors[self.index[i]] for i in item_ids])

    @torch.no_grad()
    def scores(
        self,
        history: Sequence[str],
        candidates: Sequence[str],
        texts: Mapping[str, str] | None = None,
        given: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Interest scores of ``candidates`` for a user whose clicked items are ``history`` (oldest first)."""
        known = [self.index[i] for i in history if i in self.index][-self.history_cap :]
        hist = np.full((1, self.history_cap), -1, dtype=np.int64)
        if known:
            hist[0, -len(known) :] = known
        user = user_vectors(self.model, self.vectors, hist)  # (1, dim)
        items = self.item_vectors(candidates, texts, given)  # (C, dim)
        return (self.model.log_scale.exp() * (items @ user[0])).double().cpu().numpy()


def interest_frame(model: TextModel, memory: torch.Tensor, data: ImpressionSet) -> pl.DataFrame:
    """``impression_id, item_id, interest_score`` for every row of ``data``."""
    return data.row_keys.with_columns(pl.Series("interest_score", score_rows(model, memory, data)))
