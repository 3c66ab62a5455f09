"""A trained text model as a folder: what defines it is saved, the backbone is referenced, not copied.

    textmodel.json            config of the text model (its prompt template and token budget included: item
                              texts are rendered with these, not the current config's), backbone identity
                              (name + sha256), training log
    weights.safetensors       the trained weights only: adapters and towers
    item_embeddings.parquet   item_id, vector: the catalogue's item vectors (serving encodes only others)

Loading resolves the backbone by the saved name or path, refuses one whose weights hash differs, rebuilds
the same structure and loads the trained weights into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from conf import TextModelConfig
from features.io import atomic_path
from textmodel.backbone import Backbone, BackboneError, BackboneIdentity, load_backbone
from textmodel.towers import TextModel

META_FILE = "textmodel.json"
WEIGHTS_FILE = "weights.safetensors"
EMBEDDINGS_FILE = "item_embeddings.parquet"


class ArtifactError(ValueError):
    """A text-model folder is incomplete or does not match its backbone."""


def embedding_table(item_ids: list[str], vectors: torch.Tensor) -> pl.DataFrame:
    return pl.DataFrame({"item_id": item_ids, "vector": vectors.float().cpu().numpy()}).with_columns(
        pl.col("vector").cast(pl.Array(pl.Float32, vectors.shape[1]))
    )


def save_text_model(
    folder: str | Path,
    model: TextModel,
    cfg: TextModelConfig,
    identity: BackboneIdentity,
    table: pl.DataFrame,
    extra: dict[str, object],
) -> Path:
    """Write the folder atomically (replacing an older one only when the new one is complete)."""
    weights = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    meta = {"config": cfg.model_dump(mode="json"), "backbone": identity.to_json(), **extra}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(weights, str(tmp / WEIGHTS_FILE))
        table.write_parquet(tmp / EMBEDDINGS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(folder)


@dataclass
class LoadedTextModel:
    model: TextModel
    backbone: Backbone
    config: TextModelConfig
    table: pl.DataFrame
    meta: dict[str, object]


def read_meta(folder: str | Path) -> dict[str, object]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: not found (is {folder} a trained text-model folder?)")
    return json.loads(path.read_text())


def saved_config(folder: str | Path, meta: dict[str, object]) -> TextModelConfig:
    """The text model's own config, checked: a broken saved prompt template is an :class:`ArtifactError` here,
    not a wrong text for every item later. Saved before prompts existed: no ``prompt``, the old join."""
    try:
        return TextModelConfig.model_validate(meta["config"])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ArtifactError(f"{Path(folder) / META_FILE}: saved text-model config is invalid: {problems}") from None


def load_text_model(folder: str | Path, cache_dir: Path, device: torch.device) -> LoadedTextModel:
    """Rebuild the model of ``folder`` on its exact backbone and load the trained weights."""
    from textmodel.model import build_text_model_only

    folder = Path(folder)
    meta = read_meta(folder)
    cfg = saved_config(folder, meta)
    backbone = load_backbone(cfg.backbone, cache_dir)
    saved = meta["backbone"]
    if backbone.identity.sha256 != saved["sha256"]:
        raise BackboneError(
            f"{folder}: trained on backbone {saved['name']} sha256 {saved['sha256'][:12]}..., but "
            f"{cfg.backbone!r} resolves to {backbone.folder} with sha256 {backbone.identity.sha256[:12]}..."
        )
    model = build_text_model_only(cfg, backbone, device)
    weights = load_file(str(folder / WEIGHTS_FILE))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = trainable - set(weights), set(weights) - trainable
    if missing or unexpected:
        raise ArtifactError(
            f"{folder / WEIGHTS_FILE}: weights do not match the model "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    model.load_state_dict({n: w.to(device) for n, w in weights.items()}, strict=False)
    model.eval()
    table = pl.read_parquet(folder / EMBEDDINGS_FILE)
    return LoadedTextModel(model=model, backbone=backbone, config=cfg, table=table, meta=meta)


def table_vectors(table: pl.DataFrame) -> np.ndarray:
    return table["vector"].to_numpy().astype(np.float32)
