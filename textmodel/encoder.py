"""Item encoding on small machines: tokenize once, cache the frozen lower layers once per item, and run
only the adapted top layers per step, in length buckets.

A catalogue's items are tokenized up front (truncated to ``max_tokens``). :meth:`ItemEncoder.build_cache`
runs the frozen lower layers over every item once and keeps their hidden states (``(N, T, H)``, padded);
a training step then gathers the states of the step's *unique* items and runs the top layers on them.
Batches are cut by a token budget after sorting by length, since titles run from 5 to 70 tokens and
padding a batch to its longest item would waste most of the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from runtime.progress import progress as show_progress
from textmodel.towers import ItemTower


@dataclass
class Tokenized:
    """A catalogue's token ids, right-padded to the longest item: ``ids`` (N, T), ``lengths`` (N,)."""

    ids: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_texts(cls, tokenizer, texts: Sequence[str], max_tokens: int) -> Tokenized:
        if not texts:
            raise ValueError("no item texts to encode")
        enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(dim=1)
        if int(lengths.min()) == 0:
            bad = int((lengths == 0).nonzero()[0, 0])
            raise ValueError(f"item text {bad} tokenizes to nothing: {texts[bad]!r}")
        return cls(ids=enc["input_ids"], lengths=lengths)

    def __len__(self) -> int:
        return self.ids.shape[0]


def length_buckets(lengths: torch.Tensor, token_budget: int) -> Iterator[torch.Tensor]:
    """Positions into ``lengths`` grouped so that (items x longest length) stays within ``token_budget``."""
    order = torch.argsort(lengths, stable=True)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * int(lengths[order[end]]) <= token_budget:
            end += 1
        yield order[start:end]
        start = end


class LowerCache(Protocol):
    """Cached lower-layer states of the catalogue: ``take(index, width)`` -> (B, width, H) float32."""

    def take(self, index: torch.Tensor, width: int) -> torch.Tensor: ...


class ItemSharding(Protocol):
    """Splits a whole-catalogue encode among data-parallel workers (``textmodel.parallel.DataParallel``)."""

    def gather_items(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor: ...


class TensorCache:
    """The whole cache as one tensor on the training device (one process)."""

    def __init__(self, states: torch.Tensor) -> None:
        self.states = states

    def take(self, index: torch.Tensor, width: int) -> torch.Tensor:
        return self.states[index.to(self.states.device), :width]

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()


class ShardedCache:
    """The cache as contiguous item-range shards computed by different workers, read where they lie.

    ``shards[k]`` holds items ``starts[k]..starts[k] + len(shards[k]) - 1``: numpy arrays straight from Ray's
    object store (zero-copy, read-only, one copy per node) or memory-mapped ``.npy`` files; a step copies out
    only the rows (and the ``width`` leading positions) of its own items.
    """

    def __init__(self, shards: Sequence[np.ndarray], starts: Sequence[int]) -> None:
        if len(shards) != len(starts) or not shards:
            raise ValueError(f"{len(shards)} cache shard(s) for {len(starts)} start(s)")
        self.shards = list(shards)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.stops = self.starts + np.array([len(s) for s in self.shards])
        if self.starts[0] != 0 or (self.starts[1:] != self.stops[:-1]).any():
            raise ValueError(f"cache shards do not tile the catalogue: starts {self.starts}, stops {self.stops}")

    def __len__(self) -> int:
        return int(self.stops[-1])

    @property
    def nbytes(self) -> int:
        return sum(int(s.nbytes) for s in self.shards)

    def take(self, index: torch.Tensor, width: int) -> torch.Tensor:
        idx = index.cpu().numpy()
        shard_of = np.searchsorted(self.stops, idx, side="right")
        first = self.shards[0]
        out = torch.empty((len(idx), width, first.shape[-1]), dtype=torch.float32)
        for k in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == k)
            part = np.asarray(self.shards[k][idx[rows] - self.starts[k], :width], dtype=np.float32)
            out[torch.from_numpy(rows)] = torch.from_numpy(part)
        return out


@dataclass
class BucketStates:
    """One length bucket of a batch: ``positions`` into the batch, lower-layer ``states`` (b, T, H), ``mask``."""

    positions: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor


class ItemEncoder:
    """Encodes catalogue items (by index) with an :class:`ItemTower`, through the lower-layer cache."""

    def __init__(self, tower: ItemTower, tokens: Tokenized, token_budget: int, device: torch.device) -> None:
        self.tower = tower
        self.tokens = tokens
        self.token_budget = token_budget
        self.device = device
        self.cache: LowerCache | None = None  # (N, T, H) lower-layer states
        # Set on data-parallel workers: whole-catalogue encodes are split among them and gathered.
        self.parallel: ItemSharding | None = None

    def _mask(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        return (torch.arange(width)[None, :] < lengths[:, None]).long().to(self.device)

    def lower_states(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower-layer states and mask for items ``index`` (from the cache when built): (B, T, H), (B, T).

        T is the items' longest token length for a cut decoder, the number of read layers for a side network
        (``backbone.state_width``)."""
        lengths = self.tokens.lengths[index]
        width = int(lengths.max())
        mask = self._mask(lengths, width)
        backbone = self.tower.backbone
        if self.cache is not None:
            return self.cache.take(index, backbone.state_width(width)).to(self.device), backbone.state_mask(mask)
        ids = self.tokens.ids[index, :width].to(self.device)
        return backbone.lower(ids, mask), backbone.state_mask(mask)

    @torch.no_grad()
    def build_cache(self, progress: bool = True) -> None:
        """Run the frozen lower layers over every item once (the top layers are what training changes)."""
        self.cache = None
        self.cache = TensorCache(self.lower_shard(0, len(self.tokens), progress))

    @torch.no_grad()
    def lower_shard(self, start: int, stop: int, progress: bool = False) -> torch.Tensor:
        """Lower-layer states of items ``start..stop-1`` (in that order), padded to the catalogue's width
        ``(n, T, H)``: one shard of the cache (data-parallel workers each compute one; :class:`ShardedCache`)."""
        index = torch.arange(start, stop)
        width = self.tower.backbone.state_width(self.tokens.ids.shape[1])
        chunks, order = [], []
        buckets = list(length_buckets(self.tokens.lengths[index], self.token_budget))
        for bucket in show_progress(buckets, "cache lower layers", len(buckets), progress):
            states, _ = self.lower_states(index[bucket])
            padded = torch.zeros(len(bucket), width, states.shape[-1], dtype=states.dtype, device=self.device)
            padded[:, : states.shape[1]] = states
            chunks.append(padded)
            order.append(bucket)
        return _scatter(torch.cat(order).to(self.device), torch.cat(chunks))

    def encode(self, index: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Vectors of items ``index`` in that order: (B, dim). Gradients flow into the adapters and the
        projection unless called under ``torch.no_grad()``."""
        return self._per_bucket(index, self.tower, "encode items", progress)

    @torch.no_grad()
    def pooled_all(self, progress: bool = False) -> torch.Tensor:
        """Pooled top-layer outputs of every item, before the projection: (N, H). While the adapters are
        fixed these do not change, so a head-only (probe) phase trains on them at almost no cost."""
        return self._all_items(lambda index: self._per_bucket(index, self.tower.pooled, "pool items", progress))

    def gather(self, index: torch.Tensor) -> list[BucketStates]:
        """Lower-layer states of items ``index`` in length buckets (the input of the trainable layers).

        With :meth:`encode_parts` this is :meth:`encode` in two halves, so a caller can perturb the states
        in between (adversarial training) or take their gradient.
        """
        buckets = list(length_buckets(self.tokens.lengths[index], self.token_budget))
        return [BucketStates(bucket, *self.lower_states(index[bucket])) for bucket in buckets]

    def encode_parts(self, parts: Sequence[BucketStates], fn=None) -> torch.Tensor:
        """``fn(states, mask)`` (default: the item tower) over :meth:`gather`'s buckets, in input order."""
        fn = fn or self.tower
        out = [fn(p.states, p.mask) for p in parts]
        return _scatter(torch.cat([p.positions for p in parts]).to(self.device), torch.cat(out))

    def _per_bucket(self, index: torch.Tensor, fn, desc: str, progress: bool) -> torch.Tensor:
        """``fn(lower states, mask)`` over length buckets of ``index`` under the token budget, in input order."""
        buckets = list(length_buckets(self.tokens.lengths[index], self.token_budget))
        parts = []
        for bucket in show_progress(buckets, desc, len(buckets), progress):
            states, mask = self.lower_states(index[bucket])
            parts.append(fn(states, mask))
        return _scatter(torch.cat(buckets).to(self.device), torch.cat(parts))

    @torch.no_grad()
    def encode_all(self, progress: bool = False) -> torch.Tensor:
        """Vectors of every catalogue item, without gradients: (N, dim)."""
        return self._all_items(lambda index: self.encode(index, progress=progress))

    def _all_items(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn`` over every catalogue item; on data-parallel workers each encodes its share and all gather."""
        if self.parallel is None:
            return fn(torch.arange(len(self.tokens)))
        return self.parallel.gather_items(fn, len(self.tokens))


def _scatter(positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Put ``vectors`` back in input order, differentiably: out[positions[i]] = vectors[i]."""
    inverse = torch.empty_like(positions)
    inverse[positions] = torch.arange(len(positions), device=positions.device)
    return vectors[inverse]
