"""Training and scoring data for the text model, in index form, and typed batches.

Items are referred to by their index in the catalogue; an :class:`ImpressionSet` holds one split's
impressions (their histories) and shown rows (item, label); :func:`sample_examples` draws an epoch's
examples from it and :func:`batches` cuts them into :class:`Batch` objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from textmodel.prompt import ItemText


class TextDataError(ValueError):
    """The data cannot feed the text model; the message names the table and column."""


@dataclass
class Catalogue:
    """Catalogue items in a fixed order: ``item_ids[i]`` has text ``texts[i]``."""

    item_ids: list[str]
    texts: list[str]

    @classmethod
    def from_items(cls, items: pl.DataFrame, text: ItemText) -> Catalogue:
        """Texts rendered by ``text`` (the text model's prompt, fitted to its token budget), in one batch."""
        fields = list(text.fields)
        missing = [f for f in fields if f not in items.columns]
        if missing:
            raise TextDataError(f"items: column {missing[0]!r} missing (the text model's prompt reads {fields})")
        items = items.sort("item_id")
        rows = items.select(fields).to_dicts()
        empty = [items["item_id"][i] for i, row in enumerate(rows) if not text.has_text(row)]
        if empty:
            raise TextDataError(
                f"items: {len(empty)} item(s) have no text in {fields}, e.g. {empty[0]!r}: "
                "the text model needs item text"
            )
        return cls(item_ids=items["item_id"].to_list(), texts=text.render(rows))

    def index_of(self, ids: pl.Series) -> np.ndarray:
        lookup = pl.DataFrame({"item_id": self.item_ids, "_idx": np.arange(len(self.item_ids))})
        out = pl.DataFrame({"item_id": ids}).join(lookup, on="item_id", how="left", maintain_order="left")["_idx"]
        if out.null_count():
            raise TextDataError(f"{out.null_count()} item id(s) not in the catalogue, e.g. {ids[out.is_null()][0]!r}")
        return out.to_numpy().astype(np.int64)


@dataclass
class ImpressionSet:
    """One split's impressions as arrays: histories (M, cap) padded with -1; rows (item, impression, label)."""

    impression_ids: list[str]
    history: np.ndarray  # (M, cap) int64 item indices, -1 = padding, newest last
    row_item: np.ndarray  # (R,) item index of each shown row
    row_impression: np.ndarray  # (R,) impression index of each row
    row_label: np.ndarray  # (R,) 0/1
    row_keys: pl.DataFrame  # (R,) impression_id, item_id: to write scores back
    impression_ts: np.ndarray | None = None  # (M,) impression time (epoch microseconds) when the rows carry ``ts``
    row_offset: np.ndarray | None = None  # (R,) behavioural logit the text score is trained on top of (``offset``)

    @classmethod
    def build(cls, rows: pl.DataFrame, histories: pl.DataFrame, catalogue: Catalogue, cap: int) -> ImpressionSet:
        """``rows``: impression_id, item_id, clicked, optional ts (one split); ``histories``: impression_id, history."""
        rows = rows.sort("impression_id", maintain_order=True)
        has_ts = "ts" in rows.columns
        imps = rows.select("impression_id", *(["ts"] if has_ts else [])).unique("impression_id", maintain_order=True)
        hist = imps.join(
            histories.select("impression_id", "history"), on="impression_id", how="left", maintain_order="left"
        )
        if hist["history"].null_count():
            raise TextDataError("histories: some impressions have no history row")
        hist = hist.with_columns(pl.col("history").list.tail(cap))  # newest ``cap`` only
        history = np.full((imps.height, cap), -1, dtype=np.int64)
        flat = hist["history"].explode().drop_nulls()
        lengths = hist["history"].list.len().to_numpy()
        if len(flat):
            idx = catalogue.index_of(flat)
            row_of = np.repeat(np.arange(imps.height), lengths)
            col_of = np.concatenate([np.arange(cap - n, cap) for n in lengths if n]) if lengths.any() else []
            history[row_of, col_of] = idx  # right-aligned: newest last
        imp_index = imps.with_row_index("_m")
        keyed = rows.join(imp_index, on="impression_id", how="left", maintain_order="left")
        return cls(
            impression_ids=imps["impression_id"].to_list(),
            history=history,
            row_item=catalogue.index_of(rows["item_id"]),
            row_impression=keyed["_m"].to_numpy().astype(np.int64),
            row_label=rows["clicked"].to_numpy().astype(np.int64),
            row_keys=rows.select("impression_id", "item_id"),
            impression_ts=_epoch_us(imps["ts"]) if has_ts else None,
            row_offset=rows["offset"].to_numpy().astype(np.float32) if "offset" in rows.columns else None,
        )

    @property
    def num_rows(self) -> int:
        return len(self.row_item)

    def subset(self, keep: np.ndarray) -> ImpressionSet:
        """The impressions where ``keep`` (M,) is true, with their rows (impression indices renumbered)."""
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        rows = keep[self.row_impression]
        return ImpressionSet(
            impression_ids=[i for i, k in zip(self.impression_ids, keep, strict=True) if k],
            history=self.history[keep],
            row_item=self.row_item[rows],
            row_impression=new_index[self.row_impression[rows]],
            row_label=self.row_label[rows],
            row_keys=self.row_keys.filter(pl.Series(rows)),
            impression_ts=None if self.impression_ts is None else self.impression_ts[keep],
            row_offset=None if self.row_offset is None else self.row_offset[rows],
        )


def cross_fit_plan(data: ImpressionSet, folds: int, scheme: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit_on, score)`` impression masks, one pair per fitted head, for cross-fitted scores of ``data``.

    ``impressions``: ``folds`` random folds; each is scored by a head fitted on all the others. ``time``: the
    impressions are cut into ``folds`` consecutive time blocks (equal times stay in one block); block k is
    scored by a head fitted on blocks 0..k-1 only, so no score knows a click from its own time or later, as
    at serving time. Block 0 has nothing before it and is left unscored.
    """
    m = len(data.impression_ids)
    if folds < 2:
        raise ValueError(f"textmodel.train.oof_folds: {folds}: cross-fitting needs at least 2 folds")
    if scheme == "impressions":
        fold_of = np.random.default_rng(seed).integers(0, folds, m)
        return [(fold_of != k, fold_of == k) for k in range(folds)]
    if scheme != "time":
        raise ValueError(f"textmodel.train.oof_scheme: {scheme!r} is not one of 'time', 'impressions'")
    if data.impression_ts is None:
        raise TextDataError("cross-fitting by time needs the impressions' times (column 'ts')")
    ordered = np.sort(data.impression_ts)
    cuts = ordered[[k * m // folds for k in range(1, folds)]]
    fold_of = np.searchsorted(cuts, data.impression_ts, side="right")  # block index, ties kept together
    return [(fold_of < k, fold_of == k) for k in range(1, folds) if (fold_of < k).any() and (fold_of == k).any()]


def selection_split(data: ImpressionSet, fraction: float) -> tuple[ImpressionSet, ImpressionSet]:
    """``(fit, select)``: ``data``'s impressions before and from the time that leaves the latest ``fraction`` of
    them (impressions at one instant stay on one side). The text model trains on ``fit`` and is selected on
    ``select`` only, so no split it was selected on judges what is built on its scores."""
    if data.impression_ts is None:
        raise TextDataError("a selection set by time needs the impressions' times (column 'ts')")
    m = len(data.impression_ts)
    ordered = np.sort(data.impression_ts)
    start = ordered[min(m - 1, int(np.floor(m * (1 - fraction))))]
    select = data.impression_ts >= start
    if select.all() or not select.any():
        raise TextDataError(
            f"textmodel.train.selection_fraction {fraction}: the {m} train impression(s) cannot be cut into a "
            "training and a selection part (too few distinct times)"
        )
    return data.subset(~select), data.subset(select)


def _epoch_us(ts: pl.Series) -> np.ndarray:
    if ts.null_count():
        raise TextDataError(f"impressions: column 'ts': {ts.null_count()} null time(s)")
    return ts.dt.epoch("us").to_numpy().astype(np.int64)


@dataclass
class Batch:
    """``history`` (B, cap) item indices (-1 pad); ``candidates`` (B, C); ``labels`` (B, C) float.

    softmax: candidate 0 is the clicked item, the rest unclicked; bce: one candidate with its label.
    """

    history: torch.Tensor
    candidates: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor | None = None  # (B, C) behavioural logits added to the scores in the loss

    def to(self, device: torch.device) -> Batch:
        offsets = None if self.offsets is None else self.offsets.to(device)
        return Batch(self.history.to(device), self.candidates.to(device), self.labels.to(device), offsets)


@dataclass
class Examples:
    impression: np.ndarray  # (E,)
    candidates: np.ndarray  # (E, C)
    labels: np.ndarray  # (E, C)
    offsets: np.ndarray | None = None  # (E, C)

    def __len__(self) -> int:
        return len(self.impression)


def sample_examples(data: ImpressionSet, objective: str, negatives: int, rng: np.random.Generator) -> Examples:
    """One epoch's examples. softmax: every clicked row with ``negatives`` unclicked rows of its impression,
    drawn without replacement (an impression with fewer gives each of its own in turn, in a random order;
    impressions without both labels give none); bce: every row."""
    if objective == "bce":
        offsets = None if data.row_offset is None else data.row_offset[:, None]
        return Examples(
            data.row_impression, data.row_item[:, None], data.row_label[:, None].astype(np.float32), offsets
        )
    order = np.lexsort((data.row_label, data.row_impression))  # by impression, negatives first
    imp, item, lab = data.row_impression[order], data.row_item[order], data.row_label[order]
    m = len(data.impression_ids)
    neg_count = np.bincount(imp[lab == 0], minlength=m)
    first = np.searchsorted(imp, np.arange(m))  # each impression's negatives start here
    positives = np.flatnonzero((lab == 1) & (neg_count[imp] > 0))
    if len(positives) == 0:
        raise TextDataError("no impression has both a clicked and an unclicked item: nothing to train on")
    p_imp = imp[positives]
    counts = neg_count[p_imp]  # (P,) unclicked rows of each positive's impression
    keys = rng.random((len(positives), int(counts.max())))
    keys[np.arange(keys.shape[1])[None, :] >= counts[:, None]] = 2.0  # beyond the impression's own: sorted last
    permutation = np.argsort(keys, axis=1)  # a random order of each impression's unclicked rows
    turn = np.arange(negatives)[None, :] % counts[:, None]
    draws = first[p_imp][:, None] + np.take_along_axis(permutation, turn, axis=1)
    candidates = np.concatenate([item[positives][:, None], item[draws]], axis=1)
    labels = np.zeros(candidates.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    offsets = None
    if data.row_offset is not None:
        off = data.row_offset[order]
        offsets = np.concatenate([off[positives][:, None], off[draws]], axis=1)
    return Examples(p_imp, candidates, labels, offsets)


def batches(
    data: ImpressionSet, examples: Examples, batch_size: int, rng: np.random.Generator, max_steps: int | None
) -> Iterator[Batch]:
    """Shuffled batches of ``examples`` (at most ``max_steps`` of them)."""
    order = rng.permutation(len(examples))
    if max_steps is not None:
        order = order[: max_steps * batch_size]
    for start in range(0, len(order), batch_size):
        pick = order[start : start + batch_size]
        yield Batch(
            history=torch.from_numpy(data.history[examples.impression[pick]]),
            candidates=torch.from_numpy(examples.candidates[pick]),
            labels=torch.from_numpy(examples.labels[pick]),
            offsets=None if examples.offsets is None else torch.from_numpy(examples.offsets[pick]),
        )


def load_sets(
    items: pl.DataFrame,
    features: pl.DataFrame,
    histories: pl.DataFrame,
    text: ItemText,
    cap: int,
    offset: str | None = None,
) -> tuple[Catalogue, dict[str, ImpressionSet]]:
    """The catalogue (texts rendered by ``text``) and one :class:`ImpressionSet` per split of the feature table
    (train and val must have rows; an empty test split is left out).

    ``offset`` names a probability-valued behavioural feature (``item_ctr_smoothed``): its logit rides along
    with each row, so the text model can be trained on what that feature does not already explain.
    """
    catalogue = Catalogue.from_items(items, text)
    extra = []
    if offset is not None:
        if offset not in features.columns:
            raise TextDataError(f"features: column {offset!r} missing (textmodel.train.offset_feature)")
        p = pl.col(offset).cast(pl.Float64).clip(1e-4, 1 - 1e-4)
        extra = [(p.log() - (1 - p).log()).alias("offset")]
    sets = {}
    for split in ("train", "val", "test"):
        part = features.filter(pl.col("split") == split)
        if part.height == 0 and split == "test":
            continue  # cut-offs at the data's edge (continual training): nothing to test yet, nothing to score
        if part.height == 0:
            raise TextDataError(f"features: no rows in the {split} split")
        if offset is not None:
            raw = part[offset]
            if raw.null_count():
                raise TextDataError(f"features: column {offset!r}: {raw.null_count()} null value(s)")
            outside = raw.filter((raw < 0) | (raw > 1))
            if len(outside):
                raise TextDataError(
                    f"features: column {offset!r}: {len(outside)} value(s) outside [0, 1], e.g. {outside[0]} "
                    "(textmodel.train.offset_feature must be a probability, such as item_ctr_smoothed)"
                )
        rows = part.select("impression_id", "item_id", "clicked", "ts", *extra)
        sets[split] = ImpressionSet.build(rows, histories, catalogue, cap)
    return catalogue, sets
