"""A trained text model as a folder: what defines it is saved, the backbone is referenced, not copied.

    textmodel.json            the text model's definition (its config less the runtime knobs, see
                              :class:`TextRuntime`; its prompt template and token budget included: item texts are
                              rendered with these, not the current config's), backbone identity (name + sha256),
                              training log
    weights.safetensors       the trained weights only: adapters and towers (and the tower's standardisation)
    item_embeddings.parquet   item_id, vector: the catalogue's item vectors (serving encodes only others)

Loading resolves the backbone by the saved name or path, refuses one whose weights hash differs, rebuilds
the same structure and loads the trained weights into it. What the machine decides (device, dtypes, batch
sizes, where backbones are cached) comes from the caller's :class:`TextRuntime`, never from the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from conf import TextModelConfig
from conf.migrations import TEXTMODEL_CONFIG_VERSION, upgrade_textmodel
from features.io import atomic_path
from textmodel.backbone import Backbone, BackboneError, BackboneIdentity, load_backbone
from textmodel.towers import TextModel

META_FILE = "textmodel.json"
WEIGHTS_FILE = "weights.safetensors"
EMBEDDINGS_FILE = "item_embeddings.parquet"


class ArtifactError(ValueError):
    """A text-model folder is incomplete or does not match its backbone."""


# Fields of TextModelConfig that say how a machine runs the model, not what the model is: never saved with it,
# always taken from the one who loads it. Dotted paths into the config, each the name of a TextRuntime field.
RUNTIME_FIELDS = {
    "cache_dir": "cache_dir",
    "lower_dtype": "lower_dtype",
    "train.device": "device",
    "train.bf16": "bf16",
    "train.encode_batch_tokens": "encode_batch_tokens",
}


@dataclass(frozen=True)
class TextRuntime:
    """How this machine runs a text model: the runtime knobs of ``TextModelConfig``, not saved with the model
    (PEFT's ``LoraRuntimeConfig``). The defaults are ``conf/default.yaml``'s, each safe on any machine.

    ``lower_dtype`` is a runtime knob, not part of the definition. The trained weights are float32 and the
    lower layers are frozen copies of the backbone's, so float32 and bfloat16 lower layers run the *same*
    model, the second with bf16 rounding in its activations; which one is worth running is a fact about the
    machine (bf16 is ~1.7x faster where it is native and ~75x slower where it is emulated:
    :func:`textmodel.model.native_bf16`), and ``auto`` lets each machine decide. The saved embedding table was
    computed with whatever the training machine ran; an item encoded at load time on a machine that resolves
    otherwise differs from a table vector by that rounding only.
    """

    cache_dir: Path = Path("data/models")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: Literal["auto", "on", "off"] = "auto"  # training's autocast: loaded models do not autocast
    encode_batch_tokens: int = 4096
    lower_dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    def __post_init__(self) -> None:
        if self.encode_batch_tokens <= 0:
            raise ValueError(f"encode_batch_tokens must be > 0, got {self.encode_batch_tokens}")

    @classmethod
    def from_config(cls, cfg: TextModelConfig) -> TextRuntime:
        """The runtime knobs of the caller's current config."""
        dumped = cfg.model_dump()
        return cls(**{attr: _get(dumped, path) for path, attr in RUNTIME_FIELDS.items()})


def _get(tree: dict, path: str) -> object:
    for key in path.split("."):
        tree = tree[key]
    return tree


def model_definition(cfg: TextModelConfig) -> dict[str, object]:
    """``cfg`` as saved with the model: everything but the runtime knobs (:data:`RUNTIME_FIELDS`)."""
    out = cfg.model_dump(mode="json")
    for path in RUNTIME_FIELDS:
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return out


def with_runtime(definition: dict[str, object], runtime: TextRuntime) -> dict[str, object]:
    """A saved definition completed with ``runtime``'s knobs: the raw form of the config the model runs under.

    Models saved before the runtime knobs were split off carry them too: those saved values are overwritten
    (what the saving machine ran says nothing about this one).
    """
    out = json.loads(json.dumps(definition))  # a deep copy: the caller's meta stays as read
    for path, attr in RUNTIME_FIELDS.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        value = getattr(runtime, attr)
        node[leaf] = str(value) if isinstance(value, Path) else value
    return out


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
    weights = {n: p.detach().float().cpu().contiguous() for n, p in model.learned_state().items()}
    meta = {
        "config": model_definition(cfg),
        "config_version": TEXTMODEL_CONFIG_VERSION,
        "backbone": identity.to_json(),
        **extra,
    }
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
    config: TextModelConfig  # the saved definition under the loader's runtime knobs (TextRuntime)
    table: pl.DataFrame
    meta: dict[str, object]


def read_meta(folder: str | Path) -> dict[str, object]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: not found (is {folder} a trained text-model folder?)")
    return json.loads(path.read_text())


def saved_config(folder: str | Path, meta: dict[str, object], runtime: TextRuntime | None = None) -> TextModelConfig:
    """The text model's own definition under ``runtime``'s knobs (default :class:`TextRuntime`), checked: a
    broken saved prompt template is an :class:`ArtifactError` here, not a wrong text for every item later.
    Saved before prompts existed: no ``prompt``, the old join. Saved with runtime knobs: those are ignored."""
    try:
        definition = upgrade_textmodel(meta["config"], int(meta.get("config_version", 0)))
        return TextModelConfig.model_validate(with_runtime(definition, runtime or TextRuntime()))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ArtifactError(f"{Path(folder) / META_FILE}: saved text-model config is invalid: {problems}") from None


def load_text_model(
    folder: str | Path,
    cache_dir: Path,
    device: torch.device,
    runtime: TextRuntime | None = None,
    packed_backbone: Path | None = None,
) -> LoadedTextModel:
    """Rebuild the model of ``folder`` on its exact backbone and load the trained weights.

    The runtime knobs come from the caller: ``cache_dir`` and ``device`` are the ones this load uses, the
    others (lower-layer dtype, encoding batch budget) come from ``runtime`` (default :class:`TextRuntime`;
    pass ``TextRuntime.from_config(cfg.textmodel)`` to run as the current config says). ``packed_backbone``: a
    registered model's packed backbone source (:func:`textmodel.backbone.backbone_source`), for machines without
    the wheel or the folder; whatever it resolves to must have the saved sha256.
    """
    from textmodel.model import build_text_model_only

    folder = Path(folder)
    meta = read_meta(folder)
    device_name = device.type if device.type in ("cpu", "cuda") else "auto"
    runtime = replace(runtime or TextRuntime(), cache_dir=Path(cache_dir), device=device_name)
    cfg = saved_config(folder, meta, runtime)
    backbone = load_backbone(cfg.backbone, cache_dir, packed=packed_backbone)
    saved = meta["backbone"]
    if backbone.identity.sha256 != saved["sha256"]:
        raise BackboneError(
            f"{folder}: trained on backbone {saved['name']} sha256 {saved['sha256'][:12]}..., but "
            f"{cfg.backbone!r} resolves to {backbone.folder} with sha256 {backbone.identity.sha256[:12]}..."
        )
    model = build_text_model_only(cfg, backbone, device)
    weights = load_file(str(folder / WEIGHTS_FILE))
    trainable = set(model.learned_state())
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
