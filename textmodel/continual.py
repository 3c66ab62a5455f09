"""Continual training: start a text model from a registered parent's weights, and train on a time window.

A warm start copies every trainable weight of the parent (adapters, towers, the trainer's BCE bias and offset
weight) into a freshly built model, then fine-tunes it on the data as configured. That is only sound when the
weights mean the same thing in both: the same backbone (name + content hash) and the same definition (PEFT
method and its shape, trainable layers, vector size, pooling, the text the encoder reads). Anything else is
refused with a :class:`WarmStartError` naming the field and both values, before anything is trained or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from conf import TextModelConfig
from textmodel.artifact import WEIGHTS_FILE, ArtifactError, model_definition, read_meta, saved_config
from textmodel.backbone import BackboneIdentity
from textmodel.data import ImpressionSet, TextDataError

# Definition fields (dotted paths of TextModelConfig) that decide the shape or the meaning of the trained
# weights for every PEFT method. Training knobs (rates, epochs, negatives, objective...) are free to change.
SHARED_FIELDS = (
    "peft.method",
    "trainable_top_layers",
    "dim",
    "pooling",
    "prompt",
    "max_tokens",
    "train.offset_feature",  # a residual-over-CTR text score means something else than a plain one
    "standardize",
    "similarity",
)
# What each method's weights also depend on (LoRA's scale is alpha / r; prefix tuning's shape is its tokens).
PEFT_FIELDS = {
    "lora": ("peft.r", "peft.alpha", "peft.target_modules"),
    "adalora": ("peft.r", "peft.alpha", "peft.target_modules"),
    "ia3": ("peft.target_modules",),
    "prefix": ("peft.prefix_tokens",),
    "full": (),
    "side": ("peft.side_width",),
}


class WarmStartError(ValueError):
    """The parent text model cannot seed this one: a different backbone or definition (named in the message)."""


@dataclass
class Parent:
    """A text model to warm-start from: its registry version (when it has one), folder, meta and weights."""

    version: str | None
    folder: Path
    meta: dict[str, object]
    weights: dict[str, torch.Tensor]
    trainer_state: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        return f"textmodel version {self.version}" if self.version is not None else str(self.folder)


def _get(tree: dict, path: str) -> object:
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def compared_fields(cfg: TextModelConfig) -> tuple[str, ...]:
    """The definition fields a parent must share with ``cfg`` (the method's own ones for ``cfg``'s method)."""
    return (*SHARED_FIELDS, *PEFT_FIELDS.get(cfg.peft.method, ()))


def check_compatible(
    meta: dict[str, object], parent_cfg: TextModelConfig, cfg: TextModelConfig, identity: BackboneIdentity, where: str
) -> None:
    """Refuse a parent whose backbone identity or weight-defining config differs from the configured one."""
    saved = meta.get("backbone") or {}
    for key in ("name", "sha256"):
        ours = getattr(identity, key)
        if saved.get(key) != ours:
            raise WarmStartError(
                f"warm start from {where}: backbone.{key} differs: parent {saved.get(key)!r}, configured {ours!r}"
            )
    theirs, ours = model_definition(parent_cfg), model_definition(cfg)
    fields = compared_fields(cfg)
    if parent_cfg.prompt is None or cfg.prompt is None:  # the join of text_fields is then the item text
        fields = (*fields, "text_fields")
    for path in fields:
        if _get(theirs, path) != _get(ours, path):
            raise WarmStartError(
                f"warm start from {where}: textmodel.{path} differs: parent {_get(theirs, path)!r}, "
                f"configured {_get(ours, path)!r}"
            )


def trainer_state_of(meta: dict[str, object]) -> dict[str, float]:
    """The trainer's own weights saved with a model; older models saved only the offset weight (if any)."""
    saved = meta.get("trainer_state")
    if isinstance(saved, dict):
        return {k: float(v) for k, v in saved.items()}
    offset = meta.get("offset_weight")
    return {} if offset is None else {"offset_weight": float(offset)}


def load_parent(
    folder: str | Path, cfg: TextModelConfig, identity: BackboneIdentity, version: str | None = None
) -> Parent:
    """Read and check a parent folder against the configured model; its weights stay on the CPU.

    Cheap (no model is built): the stage calls it before anything heavy, so a refused warm start costs seconds.
    """
    folder = Path(folder)
    parent = Parent(version, folder, {}, {})
    try:
        meta = read_meta(folder)
        parent_cfg = saved_config(folder, meta)
    except ArtifactError as exc:
        raise WarmStartError(f"warm start from {parent.describe()}: {exc}") from None
    check_compatible(meta, parent_cfg, cfg, identity, parent.describe())
    weights = load_file(str(folder / WEIGHTS_FILE))
    return Parent(version, folder, meta, weights, trainer_state_of(meta))


def train_window(data: ImpressionSet, since: datetime | None) -> ImpressionSet:
    """The impressions at or after ``since`` (all when None): fine-tuning on new data only."""
    if since is None:
        return data
    if data.impression_ts is None:
        raise TextDataError("textmodel.train.since needs the impressions' times (column 'ts')")
    cut = int(since.timestamp() * 1_000_000)  # impression_ts is epoch microseconds (UTC)
    keep = data.impression_ts >= cut
    if not keep.any():
        last = np.datetime64(int(data.impression_ts.max()), "us")
        raise TextDataError(
            f"textmodel.train.since={since.isoformat()}: no train impression at or after it (last {last})"
        )
    return data.subset(keep)
