"""Split a decoder into a frozen lower part (computed once per item and cached) and an upper part that
carries the adapters and runs every training step.

The upper part is the same Hugging Face model object with its layer list cut to the top ``k`` layers and
fed ``inputs_embeds`` = the cached hidden states; the model's own code then builds masks, rotary
positions and the final norm, so nothing of the architecture is re-implemented here. Absolute position
embeddings (GPT-2's ``wpe``) were already added below the cut, so the upper copy gets zeroed ones.
The split is checked numerically when built: lower + upper must equal the plain forward.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import nn

from textmodel.backbone import BackboneError

_ABSOLUTE_POSITIONS = ("wpe", "embed_positions")


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): the last non-pad token (right padding) or the masked mean."""
    if how == "last":
        last = mask.long().sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"textmodel.pooling: unknown pooling {how!r} (last or mean)")


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` with its weights in ``dtype``; parameter-free children (rotary tables) are shared, not
    cast, so positions keep float32 precision."""
    out = copy.deepcopy(module).to(dtype)
    for key, child in module._modules.items():
        if child is not None and next(child.parameters(), None) is None:
            out._modules[key] = child
    return out


class ItemBackbone(Protocol):
    """What the item tower and the encoder need of a backbone: a frozen, cacheable part (``lower``) and a
    trainable part run every step (``pooled``). :class:`SplitBackbone` cuts the decoder's layers (LoRA, IA3,
    prefix, full); :class:`textmodel.side.SideBackbone` caches every read layer's pooled state and trains a side
    network over them."""

    top_layers: int
    upper_model: nn.Module | None

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def state_width(self, token_width: int) -> int: ...

    def state_mask(self, token_mask: torch.Tensor) -> torch.Tensor: ...

    def pooled(self, states: torch.Tensor, mask: torch.Tensor, how: str, scale: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H), (B, T) -> (B, H); ``scale`` (H,): the spread the item tower standardises by, or None."""
        ...


def _layer_list_name(base: nn.Module) -> str:
    n = int(base.config.num_hidden_layers)
    for name, child in base.named_children():
        if isinstance(child, nn.ModuleList) and len(child) == n:
            return name
    raise BackboneError(f"{type(base).__name__}: no list of {n} decoder layers found; cannot cache lower layers")


def _with_layers(base: nn.Module, name: str, keep: slice) -> nn.Module:
    """A shallow copy of ``base`` whose layer list is ``layers[keep]``; every other submodule is shared."""
    part = copy.copy(base)
    part._modules = dict(base._modules)
    part._modules[name] = nn.ModuleList(list(getattr(base, name))[keep])
    part.config = copy.deepcopy(base.config)  # keeps num_hidden_layers = L: layer indices stay valid
    return part


class SplitBackbone(nn.Module):
    """``lower(input_ids, mask)`` -> hidden states entering layer ``L - k``; ``upper(h, mask)`` -> last hidden.

    ``k = 0``: lower is the whole model (final hidden states), upper is the identity.
    ``k = L``: lower is the token-embedding lookup, upper the whole model.
    """

    def __init__(self, base: nn.Module, top_layers: int) -> None:
        super().__init__()
        total = int(base.config.num_hidden_layers)
        if not 0 <= top_layers <= total:
            raise ValueError(f"textmodel.trainable_top_layers={top_layers}: the backbone has {total} layers")
        self.base = base
        self.total_layers = total
        self.top_layers = top_layers
        name = _layer_list_name(base) if top_layers > 0 else ""
        self._layers_name = name
        # The lower part runs only the frozen layers (the uncached path must not pay for the top ones).
        self.lower_model = _with_layers(base, name, slice(0, total - top_layers)) if top_layers else base
        if top_layers == total:
            self.upper_model = base  # every layer adapted: the model itself, fed token embeddings
        else:
            self.upper_model = self._make_upper(base, name, top_layers) if top_layers else None

    @staticmethod
    def _make_upper(base: nn.Module, name: str, k: int) -> nn.Module:
        upper = _with_layers(base, name, slice(-k, None))
        for pos_name in _ABSOLUTE_POSITIONS:
            pos = base._modules.get(pos_name)
            if isinstance(pos, nn.Embedding):
                zeros = nn.Embedding(pos.num_embeddings, pos.embedding_dim).to(pos.weight.dtype)
                nn.init.zeros_(zeros.weight)
                zeros.weight.requires_grad_(False)
                upper._modules[pos_name] = zeros
        return upper

    @torch.no_grad()
    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the frozen layers: (B, T, H)."""
        if self.top_layers == 0:
            return self.lower_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        if self.top_layers == self.total_layers:  # nothing frozen but the token embeddings
            return self.base.get_input_embeddings()(input_ids)
        # The raw residual stream leaving the last frozen layer (a truncated model would norm its last output).
        captured: list[torch.Tensor] = []
        last = getattr(self.lower_model, self._layers_name)[-1]
        handle = last.register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            self.lower_model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            handle.remove()
        return captured[-1].float()

    def set_lower_dtype(self, dtype: torch.dtype) -> None:
        """Run the frozen lower layers from a copy of their weights in ``dtype`` (bf16: ~3x faster on CPUs with
        AVX512-BF16 and on GPUs); their output is cast back to float32, so the trainable top layers, the cache
        and everything after stay float32. The base model keeps its own weights (the full-model check and the
        top layers are untouched). Parameter-free children (rotary tables) are shared, not cast: positions
        keep float32 precision.
        """
        if dtype == torch.float32 or self.top_layers == self.total_layers:
            return  # nothing below the cut but the embedding lookup
        self.lower_model = cast_copy(self.lower_model, dtype)

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The adapted top layers (+ final norm) on cached hidden states: (B, T, H)."""
        if self.upper_model is None:
            return hidden
        return self.upper_model(inputs_embeds=hidden, attention_mask=attention_mask).last_hidden_state

    def set_upper(self, module: nn.Module) -> None:
        """Install the PEFT-wrapped upper model."""
        self.upper_model = module

    def state_width(self, token_width: int) -> int:
        """Positions of the cached states of items ``token_width`` tokens long: one per token."""
        return token_width

    def state_mask(self, token_mask: torch.Tensor) -> torch.Tensor:
        """The mask of the cached states: the tokens'."""
        return token_mask

    def pooled(self, states: torch.Tensor, mask: torch.Tensor, how: str, scale: torch.Tensor | None) -> torch.Tensor:
        """The upper layers over cached states, pooled over the tokens: (B, T, H), (B, T) -> (B, H)."""
        return pool(self.upper(states, mask), mask, how)

    @torch.no_grad()
    def check_exact(self, vocab_size: int, atol: float = 1e-4) -> float:
        """Lower + upper against the plain forward on a small batch; raise if they disagree."""
        if self.upper_model is None:
            return 0.0
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(3, max(vocab_size, 4), (2, 6), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 4:] = 0
        full = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
        split = self.upper(self.lower(ids, mask), mask)
        diff = float((full - split)[mask.bool()].abs().max())
        if diff > atol:
            raise BackboneError(
                f"{type(self.base).__name__}: caching the lower layers changes the output (max diff {diff:.2e}); "
                "set textmodel.trainable_top_layers to 0 or to the number of layers"
            )
        return diff
