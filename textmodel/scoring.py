"""Interest scores from item vectors: one implementation for validation, bulk export and serving.

score(user, item) = exp(log_scale) * <user, item>, where the user vector pools the vectors of the
user's history items (:class:`~textmodel.towers.UserTower`) and item vectors come from the catalogue's
embedding table, or are encoded from text when an item is not in it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file
from torch import nn

from textmodel.artifact import (
    EMBEDDINGS_FILE,
    WEIGHTS_FILE,
    LoadedTextModel,
    read_meta,
    saved_config,
    table_vectors,
)
from textmodel.backbone import load_tokenizer
from textmodel.data import ImpressionSet
from textmodel.encoder import ItemEncoder, Tokenized
from textmodel.prompt import ItemText
from textmodel.towers import TextModel, UserTower


class InterestHead:
    """The user tower and the score scale in float64, over a float64 table of item vectors: the one place the
    interest score is computed, for validation, the bulk export, serving and batch scoring.

    float64 because the score feeds tree splits: a float32 dot product is summed in an order that depends on
    the batch (a request of one user, a batch of a million rows), and 1 ulp is enough to cross a threshold.
    In float64 the paths agree far below any split the booster learned from float32-trained scores.
    """

    def __init__(self, model: TextModel, vectors: torch.Tensor) -> None:
        self.users = copy.deepcopy(model.users).to(device=vectors.device, dtype=torch.float64).eval()
        self.scale = model.log_scale.detach().to(device=vectors.device, dtype=torch.float64).exp()
        self.vectors = vectors.detach().to(torch.float64)  # (N, dim)

    @torch.no_grad()
    def user_vectors(self, history: np.ndarray, chunk: int = 4096) -> torch.Tensor:
        """User vectors (M, dim) for histories (M, cap) of indices into the table (-1 pad)."""
        out = []
        for start in range(0, len(history), chunk):
            hist = torch.from_numpy(np.ascontiguousarray(history[start : start + chunk])).to(self.vectors.device)
            out.append(self.users(self.vectors[hist.clamp(min=0)], hist >= 0))
        return torch.cat(out) if out else torch.empty(0, self.vectors.shape[1], dtype=torch.float64)

    @torch.no_grad()
    def scores(
        self, history: np.ndarray, row_user: np.ndarray, row_item: np.ndarray, extra: torch.Tensor | None = None
    ) -> np.ndarray:
        """Score of each row ``r``: user ``row_user[r]`` (a row of ``history``) and item ``row_item[r]`` (an index
        into the table, then into ``extra``: vectors of items not in the table), (R,) float64."""
        # One tower pass per distinct history, not per user: every cold-start user shares the empty one.
        history = np.asarray(history, dtype=np.int64)
        if len(history) > 1:  # a request has one: nothing to share, and np.unique costs ~0.5 ms
            history, inverse = np.unique(history, axis=0, return_inverse=True)
            row_user = inverse.reshape(-1)[np.asarray(row_user, dtype=np.int64)]
        return self.score_users(self.user_vectors(history), row_user, row_item, extra)

    def score_users(
        self, users: torch.Tensor, row_user: np.ndarray, row_item: np.ndarray, extra: torch.Tensor | None = None
    ) -> np.ndarray:
        """:meth:`scores` from user vectors already computed (``users``, (M, dim), from :meth:`user_vectors`): row
        ``r`` pairs ``users[row_user[r]]`` with item ``row_item[r]``, (R,) float64.

        No ``no_grad`` of its own (a request pays for the context): nothing here requires a gradient (the table
        and the scale are detached, user vectors come from :meth:`user_vectors`), and if a caller's vectors did,
        ``numpy()`` would refuse them loudly."""
        table = self.vectors if extra is None or not len(extra) else torch.cat([self.vectors, extra.double()])
        device = self.vectors.device
        # index_select, not indexing: the same rows copied, at half the fixed cost (~15 µs a request). One user
        # (a request) is broadcast, not gathered: the same products, so the same sums.
        cpu = device.type == "cpu"  # no device moves to ask for (each is a dispatch a request pays)
        item_at = torch.from_numpy(np.asarray(row_item, dtype=np.int64))
        v = torch.index_select(table, 0, item_at if cpu else item_at.to(device))
        if len(users) == 1:
            u = users
        else:
            user_at = torch.from_numpy(np.asarray(row_user, dtype=np.int64))
            u = torch.index_select(users, 0, user_at if cpu else user_at.to(device))
        scores = self.scale * (u * v).sum(dim=-1)
        return (scores if cpu else scores.cpu()).numpy()


def score_impressions(model: TextModel, memory: torch.Tensor, data: ImpressionSet) -> np.ndarray:
    """Interest score of every shown row of ``data``: (R,) float64."""
    return InterestHead(model, memory).scores(data.history, data.row_impression, data.row_item)


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
        self.head = InterestHead(self.model, self.vectors)
        self.history_cap = int(loaded.meta.get("history_cap", 50))

    @classmethod
    def table_only(cls, folder: str | Path, device: torch.device, cache_dir: Path | None = None) -> TextScorer:
        """A scorer of the catalogue's items from the saved table and user tower alone: no backbone weights.

        What promotion (every test item has a vector) and a serving ingress beside an encoder deployment need:
        an item outside the table must come with its vector (``given``), else it is a clear error. With
        ``cache_dir`` the backbone's tokenizer is loaded too (not its weights), so item text can still be
        rendered exactly as in training, for an encoder elsewhere.
        """
        meta = read_meta(folder)
        cfg = saved_config(folder, meta)
        weights = load_file(str(Path(folder) / WEIGHTS_FILE))
        users = UserTower(cfg.dim, cfg.similarity == "cosine")
        users.load_state_dict({k.removeprefix("users."): w for k, w in weights.items() if k.startswith("users.")})
        holder = nn.Module()  # what InterestHead reads: .users and .log_scale
        holder.users, holder.log_scale = users.to(device).eval(), nn.Parameter(weights["log_scale"].to(device))
        self = cls.__new__(cls)
        self.model, self.tokenizer, self.config, self.item_text, self.device = holder, None, cfg, None, device
        if cache_dir is not None:
            self.item_text = ItemText.from_config(cfg, load_tokenizer(cfg.backbone, cache_dir))
        table = pl.read_parquet(Path(folder) / EMBEDDINGS_FILE)
        self.item_ids = table["item_id"].to_list()
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.vectors = torch.from_numpy(table_vectors(table)).to(device)
        self.head = InterestHead(holder, self.vectors)
        self.history_cap = int(meta.get("history_cap", 50))
        return self

    def render(self, items: Sequence[Mapping[str, str | None]]) -> list[str]:
        """Texts of items given by their fields (title, body, ...), exactly as the catalogue's were made."""
        if self.item_text is None:
            raise KeyError("this text model was loaded without its backbone (table only): it cannot read item text")
        return self.item_text.render(items)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Vectors of items given by text (the same lower + upper path as training, uncached): (n, dim).

        ``texts`` come from :meth:`render` (or the catalogue), so they already fit ``max_tokens``.
        """
        if self.tokenizer is None:
            raise KeyError("this text model was loaded without its backbone (table only): it cannot encode text")
        tokens = Tokenized.from_texts(self.tokenizer, list(texts), self.config.max_tokens)
        encoder = ItemEncoder(self.model.items, tokens, self.config.train.encode_batch_tokens, self.device)
        return encoder.encode_all()

    def item_rows(
        self,
        item_ids: Sequence[str],
        texts: Mapping[str, str] | None = None,
        given: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """Each item's index into the table, then into the returned extra vectors (items not in the table: from
        ``given``, encoded elsewhere, e.g. by the serving encoder, else encoded here once each from ``texts``;
        KeyError if neither has it)."""
        rows = np.fromiter(map(self.index.get, item_ids, itertools.repeat(-1)), np.int64, len(item_ids))
        if len(rows) and rows.min() >= 0:  # every vector is in the table (the common request)
            return rows, None
        texts, given = texts or {}, given or {}
        extra: dict[str, int] = {}
        for item in item_ids:
            if item not in self.index and item not in extra:
                if item not in given and item not in texts:
                    raise KeyError(f"item {item!r} is not in the embedding table and has no text")
                extra[item] = len(self.index) + len(extra)
        rows = np.fromiter((self.index[i] if i in self.index else extra[i] for i in item_ids), np.int64, len(item_ids))
        if not extra:  # every vector is in the table (the common request)
            return rows, None
        to_encode = [i for i in extra if i not in given]
        encoded = {}
        if to_encode:
            encoded = dict(zip(to_encode, self.encode_texts([texts[i] for i in to_encode]), strict=True))
        vectors = [
            torch.as_tensor(given[i], dtype=self.vectors.dtype, device=self.device) if i in given else encoded[i]
            for i in extra
        ]
        return rows, torch.stack(vectors)

    def history_matrix(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(M, cap) table indices of each history's items in the table, newest ``cap`` kept, right-aligned
        (newest last, -1 pad): the layout training used (:class:`~textmodel.data.ImpressionSet`)."""
        out = np.full((len(histories), self.history_cap), -1, dtype=np.int64)
        for row, history in enumerate(histories):
            known = [self.index[i] for i in history if i in self.index][-self.history_cap :]
            if known:
                out[row, -len(known) :] = known
        return out

    @torch.no_grad()
    def scores_rows(
        self,
        histories: Sequence[Sequence[str]],
        row_user: np.ndarray,
        item_ids: Sequence[str],
        texts: Mapping[str, str] | None = None,
        given: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Interest scores of many rows at once: row ``r`` pairs the user of ``histories[row_user[r]]`` with
        ``item_ids[r]``. One user-tower pass per history, one gather, one product: (R,) float64."""
        rows, extra = self.item_rows(item_ids, texts, given)
        return self.head.scores(self.history_matrix(histories), row_user, rows, extra)

    def user_vectors(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """The user vector of each history, (M, dim) float64: for one history, the very pass
        :meth:`scores_rows` makes (a tower pass over one row), so its scores through :meth:`scores_users` are the
        same bits."""
        return self.head.user_vectors(self.history_matrix(histories))

    def scores_users(
        self,
        users: torch.Tensor,
        row_user: np.ndarray,
        item_ids: Sequence[str],
        texts: Mapping[str, str] | None = None,
        given: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """:meth:`scores_rows` from user vectors already computed (:meth:`user_vectors`): row ``r`` pairs
        ``users[row_user[r]]`` with ``item_ids[r]``, (R,) float64."""
        rows, extra = self.item_rows(item_ids, texts, given)
        return self.head.score_users(users, row_user, rows, extra)

    def scores(
        self,
        history: Sequence[str],
        candidates: Sequence[str],
        texts: Mapping[str, str] | None = None,
        given: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Interest scores of ``candidates`` for a user whose clicked items are ``history`` (oldest first)."""
        return self.scores_rows([history], np.zeros(len(candidates), dtype=np.int64), candidates, texts, given)


def interest_frame(model: TextModel, memory: torch.Tensor, data: ImpressionSet) -> pl.DataFrame:
    """``impression_id, item_id, interest_score`` for every row of ``data``."""
    return data.row_keys.with_columns(pl.Series("interest_score", score_impressions(model, memory, data)))
