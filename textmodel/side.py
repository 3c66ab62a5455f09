"""The side-network PEFT method (``textmodel.peft.method: side``): a frozen backbone read at several layers,
and a small trained network beside it.

IISAN (Fu et al., SIGIR 2024) and ladder side-tuning keep the backbone frozen and train a side network over
its intermediate states instead of adapters inside it: no backward pass through the backbone, so every item a
step touches, history included, can be encoded with gradients at about the cost of the probe. Here the frozen
part runs once per item (:meth:`SideBackbone.lower`) and caches the pooled state of each of the top ``layers``
layers, the last one being the final (normed) output the probe reads. The side network then maps those
``(layers, hidden)`` states to a correction added to that final state (in the item tower's standardised units);
its output layer starts at zero, so an untrained side network gives exactly the probe's item vectors
(fine-tuning starts where the probe ended).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textmodel.layers import cast_copy, pool


class SideNetwork(nn.Module):
    """Gated ladder over per-layer pooled states -> a correction in the backbone's hidden space.

    Each layer's state is normalised (the residual stream's scale grows with depth) and projected to ``width``;
    a gate per layer mixes it into a running state from the lowest read layer up, as IISAN's gated fusion. The
    result goes through one hidden layer and an output projection initialised to zero.
    """

    def __init__(self, layers: int, hidden: int, width: int, dropout: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.down = nn.ModuleList(nn.Linear(hidden, width) for _ in range(layers))
        self.gates = nn.Parameter(torch.zeros(layers))  # sigmoid(0) = 1/2: an even mix to start
        self.mix = nn.Linear(width, width)
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``states`` (B, layers, hidden) -> correction (B, hidden)."""
        running = None
        for k, (norm, down) in enumerate(zip(self.norms, self.down, strict=True)):
            part = F.gelu(down(self.dropout(norm(states[:, k]))))
            gate = torch.sigmoid(self.gates[k])
            running = part if running is None else gate * running + (1 - gate) * part
        return self.up(self.dropout(F.gelu(self.mix(running))))


class SideBackbone(nn.Module):
    """A frozen decoder whose top ``layers`` layers' pooled states are cached per item, and a side network.

    ``lower(ids, mask)`` -> (B, layers, H): the pooled outputs of layers ``L - layers + 1 .. L - 1`` (the raw
    residual stream) and the final hidden state (after the model's last norm), in that order. The cached
    "states" of an item are these rows, so the encoder's cache, sharding and buckets work unchanged; their mask
    is all ones. ``pooled(states)`` = final state + side network (states).
    """

    def __init__(self, base: nn.Module, layers: int, pooling: str, width: int, dropout: float) -> None:
        super().__init__()
        total = int(base.config.num_hidden_layers)
        if not 1 <= layers <= total:
            raise ValueError(f"textmodel.trainable_top_layers={layers}: the side network reads 1 to {total} layers")
        self.base = base
        self.lower_model = base
        self.total_layers = total
        self.top_layers = layers
        self.pooling = pooling
        hidden = int(base.config.hidden_size)
        self.upper_model: nn.Module | None = SideNetwork(layers, hidden, width, dropout)

    @torch.no_grad()
    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.lower_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        # hidden_states: the embeddings, then each layer's output; the final state is read from
        # last_hidden_state, which is normed whatever the model's convention for the last hidden_states entry.
        inner = list(out.hidden_states[self.total_layers - self.top_layers + 1 : self.total_layers])
        states = [*inner, out.last_hidden_state]
        return torch.stack([pool(h.float(), attention_mask, self.pooling) for h in states], dim=1)

    def state_width(self, token_width: int) -> int:
        return self.top_layers

    def state_mask(self, token_mask: torch.Tensor) -> torch.Tensor:
        return torch.ones(token_mask.shape[0], self.top_layers, dtype=token_mask.dtype, device=token_mask.device)

    def pooled(self, states: torch.Tensor, mask: torch.Tensor, how: str, scale: torch.Tensor | None) -> torch.Tensor:
        """Final state + the side network's correction, in units of ``scale`` (the spread the item tower
        standardises by): the correction is learned in standardised units whatever each dimension's spread
        (SmolLM2's final states: 0.2 to 5.3), so one rate suits every dimension."""
        final = states[:, -1]
        if self.upper_model is None:
            return final
        correction = self.upper_model(states)
        return final + (correction if scale is None else correction * scale)

    def set_upper(self, module: nn.Module) -> None:
        self.upper_model = module

    def set_lower_dtype(self, dtype: torch.dtype) -> None:
        """Run the frozen backbone from a ``dtype`` copy of its weights (as :class:`SplitBackbone`)."""
        if dtype != torch.float32:
            self.lower_model = cast_copy(self.lower_model, dtype)
