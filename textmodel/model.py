"""Assemble a :class:`~textmodel.towers.TextModel` and its :class:`~textmodel.encoder.ItemEncoder` from config."""

from __future__ import annotations

from pathlib import Path

import torch

from conf import TextModelConfig
from textmodel.backbone import Backbone
from textmodel.data import Catalogue
from textmodel.encoder import ItemEncoder, Tokenized
from textmodel.layers import SplitBackbone
from textmodel.peft_methods import adapt
from textmodel.side import SideBackbone
from textmodel.towers import TextModel


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("textmodel.train.device=cuda but no CUDA device is available")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run in hardware: CUDA, or a CPU with AVX512-BF16 or AMX (Linux flags).

    Elsewhere torch emulates bf16 on the CPU, ~75x slower than float32 (an AVX2 AMD EPYC, measured).
    """
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: do not guess
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_lower_dtype(name: str, device: torch.device) -> torch.dtype:
    """``textmodel.lower_dtype`` as a dtype: auto = bfloat16 where it is native (:func:`native_bf16`)."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, name)


def build_text_model_only(
    cfg: TextModelConfig, backbone: Backbone, device: torch.device, total_steps: int = 1000
) -> TextModel:
    """Split the backbone, adapt its top layers with ``cfg.peft.method`` and add the towers (``side``: the
    backbone is read at its top layers and a side network is trained beside it, :mod:`textmodel.side`)."""
    torch.manual_seed(cfg.train.seed)
    for param in backbone.model.parameters():
        param.requires_grad_(False)
    split: SplitBackbone | SideBackbone
    if cfg.peft.method == "side" and cfg.trainable_top_layers > 0:
        split = SideBackbone(
            backbone.model, cfg.trainable_top_layers, cfg.pooling, cfg.peft.side_width, cfg.peft.dropout
        )
    else:
        split = SplitBackbone(backbone.model, cfg.trainable_top_layers)
        split.check_exact(len(backbone.tokenizer))  # the split itself, in float32
    split.set_lower_dtype(resolve_lower_dtype(cfg.lower_dtype, device))
    if split.upper_model is not None:
        split.set_upper(adapt(split.upper_model, cfg.peft, backbone.identity.model_type, total_steps))
    hidden = backbone.identity.hidden_size
    return TextModel(split, hidden, cfg.dim, cfg.pooling, cfg.score_scale, cfg.standardize, cfg.similarity).to(device)


def build_text_model(
    cfg: TextModelConfig, backbone: Backbone, catalogue: Catalogue, device: torch.device, total_steps: int = 1000
) -> tuple[TextModel, ItemEncoder]:
    """The model and an encoder over the catalogue's tokenized texts."""
    model = build_text_model_only(cfg, backbone, device, total_steps)
    tokens = Tokenized.from_texts(backbone.tokenizer, catalogue.texts, cfg.max_tokens)
    return model, ItemEncoder(model.items, tokens, cfg.train.encode_batch_tokens, device)
