"""Assemble a :class:`~textmodel.towers.TextModel` and its :class:`~textmodel.encoder.ItemEncoder` from config."""

from __future__ import annotations

import torch

from conf import TextModelConfig
from textmodel.backbone import Backbone
from textmodel.data import Catalogue
from textmodel.encoder import ItemEncoder, Tokenized
from textmodel.layers import SplitBackbone
from textmodel.peft_methods import adapt
from textmodel.towers import TextModel


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("textmodel.train.device=cuda but no CUDA device is available")
    return torch.device(name)


def build_text_model_only(
    cfg: TextModelConfig, backbone: Backbone, device: torch.device, total_steps: int = 1000
) -> TextModel:
    """Split the backbone, adapt its top layers with ``cfg.peft.method`` and add the towers."""
    torch.manual_seed(cfg.train.seed)
    for param in backbone.model.parameters():
        param.requires_grad_(False)
    split = SplitBackbone(backbone.model, cfg.trainable_top_layers)
    split.check_exact(len(backbone.tokenizer))  # the split itself, in float32
    split.set_lower_dtype(getattr(torch, cfg.lower_dtype))
    if split.upper_model is not None:
        split.set_upper(adapt(split.upper_model, cfg.peft, backbone.identity.model_type, total_steps))
    return TextModel(split, backbone.identity.hidden_size, cfg.dim, cfg.pooling, cfg.score_scale).to(device)


def build_text_model(
    cfg: TextModelConfig, backbone: Backbone, catalogue: Catalogue, device: torch.device, total_steps: int = 1000
) -> tuple[TextModel, ItemEncoder]:
    """The model and an encoder over the catalogue's tokenized texts."""
    model = build_text_model_only(cfg, backbone, device, total_steps)
    tokens = Tokenized.from_texts(backbone.tokenizer, catalogue.texts, cfg.max_tokens)
    return model, ItemEncoder(model.items, tokens, cfg.train.encode_batch_tokens, device)
