"""The text model's training objective: one function, used wherever the model is trained or measured.

:class:`ClickObjective` gives the loss of a batch (sampled softmax, clicked vs unclicked of the same impression,
as NRMS, or pointwise BCE) with the step's candidates and its live history items encoded in one graph; the same
loss on fixed examples from given item vectors (validation, the held-in curve); and the validation metric of
what the loss trains. It owns the two scalars the loss adds to the model (the BCE bias and the weight of the
behavioural offset); the trainer decides what is optimised, and when.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from conf import TrainConfig
from textmodel.adversarial import adversarial_loss
from textmodel.data import Batch, ImpressionSet, TextDataError, batches, sample_examples
from textmodel.encoder import BucketStates, ItemEncoder
from textmodel.scoring import score_impressions, scored_frame
from textmodel.towers import TextModel

ValMetric = Callable[[pl.DataFrame], float]  # frame of impression_id, clicked, score -> a number (higher is better)


class ClickObjective:
    """The click loss of a :class:`TextModel`, and the validation metric of what it trains."""

    def __init__(
        self, model: TextModel, encoder: ItemEncoder, cfg: TrainConfig, device: torch.device, val_metric: ValMetric
    ) -> None:
        self.model, self.encoder, self.cfg, self.device, self.val_metric = model, encoder, cfg, device, val_metric
        self.bias = nn.Parameter(torch.zeros((), device=device))  # BCE only: calibrates the score offset
        # Weight of the behavioural logit added in the loss (batches with offsets only: see ``offset_feature``).
        self.offset_weight = nn.Parameter(torch.ones((), device=device))
        self.autocast = cfg.bf16 == "on" or (cfg.bf16 == "auto" and device.type == "cuda")
        self._held_in_of: tuple[ImpressionSet, ImpressionSet] | None = None  # (train set, its held-in draw)

    @property
    def own(self) -> dict[str, nn.Parameter]:
        """The objective's own trained scalars, by name."""
        return {"bias": self.bias, "offset_weight": self.offset_weight}

    def loss(self, batch: Batch, memory: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of one batch (clean + adversarial when configured); ``pooled`` (N, H) given: item
        vectors come from the cached pooled states through the head (head-only phases).

        The step's candidates and its live history items (:meth:`live`) are encoded together, each unique item
        once, in one graph: the loss depends on the trainable weights through the user vectors as well as the
        candidates, as the score does at validation and serving. Other history items come from ``memory``."""
        live = self.live(batch.history, pooled is not None)
        n_candidates = batch.candidates.numel()
        ids = torch.cat([batch.candidates.reshape(-1), batch.history[live]])
        unique, inverse = torch.unique(ids, return_inverse=True)  # each item encoded once per step
        if pooled is not None:
            head_input = pooled[unique.to(pooled.device)]  # (U, H)
            parts = [BucketStates(torch.arange(len(unique)), head_input, torch.ones(len(unique), 1))]
        else:
            parts = self.encoder.gather(unique)  # lower-layer states per length bucket
        rows, cols = live.nonzero(as_tuple=True)

        def loss_of(inputs: list[BucketStates]) -> torch.Tensor:
            fn = (lambda states, _mask: self.model.items.head(states)) if pooled is not None else None
            vectors = self.encoder.encode_parts(inputs, fn)  # (U, dim)
            items = vectors[inverse[:n_candidates]].view(*batch.candidates.shape, -1)
            history = memory[batch.history.clamp(min=0)]  # (B, cap, dim), no gradient
            if len(rows):
                history = history.index_put(
                    (rows.to(history.device), cols.to(history.device)), vectors[inverse[n_candidates:]]
                )
            return self.of_items(batch, history, items)

        adv = self.cfg.adversarial
        if adv.method == "none":
            return loss_of(parts)
        leaves = [p.states.detach().requires_grad_(True) for p in parts]
        parts = [BucketStates(p.positions, x, p.mask) for p, x in zip(parts, leaves, strict=True)]
        clean = loss_of(parts)
        return clean + adversarial_loss(loss_of, parts, clean, leaves, adv.method, adv.epsilon, adv.steps)

    def live(self, history: torch.Tensor, head_only: bool) -> torch.Tensor:
        """(B, cap) bool: the history positions encoded in the step's graph: the newest ``live_history`` real
        items (histories are right-aligned, newest last), every one in head-only phases (a projection each)."""
        real = history >= 0
        k = None if head_only else self.cfg.live_history
        if k is None:
            return real
        cap = history.shape[1]
        return real & (torch.arange(cap, device=history.device) >= cap - k)[None, :]

    def of_items(self, batch: Batch, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Sampled softmax or BCE of the batch given its history items' vectors ``history`` (B, cap, dim) and its
        candidates' ``items`` (B, C, dim)."""
        users = self.model.users(history, batch.history >= 0)  # (B, dim)
        scores = self.model.score(users, items)  # (B, C)
        if batch.offsets is not None:
            scores = scores + self.offset_weight * batch.offsets
        if self.cfg.objective == "softmax":
            return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
        return F.binary_cross_entropy_with_logits(scores + self.bias, batch.labels)

    def context(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, data: ImpressionSet, memory: torch.Tensor) -> float:
        """The validation metric of what the loss trains: the text score, plus the weighted offset if any."""
        return self.evaluate_both(data, memory)[0]

    @torch.no_grad()
    def validation_loss(self, data: ImpressionSet, memory: torch.Tensor, chunk: int = 4096) -> float | None:
        """The training loss on ``data``'s examples, drawn with a fixed seed, candidates scored from ``memory``."""
        try:
            rng = np.random.default_rng(self.cfg.seed)
            examples = sample_examples(data, self.cfg.objective, self.cfg.negatives, rng)
        except TextDataError:  # no impression with both labels: no loss to report (the AUC still validates)
            return None
        total = 0.0
        for batch in batches(data, examples, chunk, np.random.default_rng(0), None):
            batch = batch.to(self.device)
            history, items = memory[batch.history.clamp(min=0)], memory[batch.candidates]
            total += float(self.of_items(batch, history, items)) * len(batch.candidates)
        return total / len(examples)

    def evaluate_both(self, data: ImpressionSet, memory: torch.Tensor) -> tuple[float, float | None]:
        """(metric of the trained score, metric of the text part alone when an offset is added, else None)."""
        scores = score_impressions(self.model, memory, data)
        if data.row_offset is None:
            return self.val_metric(scored_frame(data, scores)), None
        mixed = scores + float(self.offset_weight.detach()) * data.row_offset
        return self.val_metric(scored_frame(data, mixed)), self.val_metric(scored_frame(data, scores))

    def held_in(self, train: ImpressionSet) -> ImpressionSet:
        """A fixed draw of ``held_in_impressions`` of ``train``'s impressions (the same for every epoch)."""
        if self._held_in_of is None or self._held_in_of[0] is not train:
            m = len(train.impression_ids)
            keep = np.zeros(m, dtype=bool)
            pick = np.random.default_rng(self.cfg.seed + 7).choice(
                m, min(m, self.cfg.held_in_impressions), replace=False
            )
            keep[pick] = True
            self._held_in_of = (train, train.subset(keep))
        return self._held_in_of[1]
