"""Adversarial fine-tuning: perturb what the trainable layers read, in the direction that raises the loss.

The perturbed tensors are the inputs of the trainable part of the item tower: the cached lower-layer
hidden states when adapters train (fine-tune phase), the pooled vectors when only the head trains (probe
phase). FGM (Miyato et al. 2017) takes one step of size epsilon along the normalised gradient; PGD (Madry
et al. 2018) takes ``steps`` steps of ``2 * epsilon / steps``, each projected back into the epsilon ball.
The trainer adds the loss at the perturbed inputs to the clean loss.

``epsilon`` is relative to each item's input norm (||delta_i|| <= epsilon * ||h_i||): hidden-state norms
differ by orders of magnitude between layers and backbones, so an absolute radius would need re-tuning for
each cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from textmodel.encoder import BucketStates

LossFn = Callable[[Sequence[BucketStates]], torch.Tensor]


def _item_norms(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each item's slice, broadcastable to ``x``: (b, 1[, 1])."""
    norms = x.float().flatten(1).norm(dim=1).clamp(min=1e-12)
    return norms.view(-1, *([1] * (x.dim() - 1)))


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padding positions of token states (b, T, H); pooled inputs (b, H) pass through."""
    return x * mask[..., None].to(x.dtype) if x.dim() == 3 else x


def _with_states(parts: Sequence[BucketStates], states: Sequence[torch.Tensor]) -> list[BucketStates]:
    return [BucketStates(p.positions, s, p.mask) for p, s in zip(parts, states, strict=True)]


def adversarial_loss(
    loss_fn: LossFn,
    parts: Sequence[BucketStates],
    clean: torch.Tensor,
    leaves: Sequence[torch.Tensor],
    method: str,
    epsilon: float,
    steps: int,
) -> torch.Tensor:
    """The loss at adversarially perturbed inputs (to be added to ``clean``).

    ``leaves`` are the states of ``parts`` with ``requires_grad`` and ``clean = loss_fn(parts)`` was computed
    from them (its graph is kept for the caller's backward). Perturbations are constants: no gradient flows
    through them, as in FGM/PGD training.
    """
    radius = [epsilon * _item_norms(x.detach()) for x in leaves]
    if method == "fgm":
        grads = torch.autograd.grad(clean, leaves, retain_graph=True)
        masked = [_masked(g, p.mask) for g, p in zip(grads, parts, strict=True)]
        deltas = [r * g / _item_norms(g) for g, r in zip(masked, radius, strict=True)]
    elif method == "pgd":
        alpha = 2.0 / steps
        deltas = [torch.zeros_like(x) for x in leaves]
        loss, inputs = clean, leaves
        for step in range(steps):
            grads = torch.autograd.grad(loss, inputs, retain_graph=step == 0)
            new = []
            for d, g, r, p in zip(deltas, grads, radius, parts, strict=True):
                g = _masked(g, p.mask)
                d = d + alpha * r * g / _item_norms(g)
                new.append(d * torch.clamp(r / _item_norms(d), max=1.0))  # project into the epsilon ball
            deltas = new
            if step < steps - 1:
                inputs = [(x.detach() + d).requires_grad_(True) for x, d in zip(leaves, deltas, strict=True)]
                loss = loss_fn(_with_states(parts, inputs))
    else:
        raise ValueError(f"textmodel.train.adversarial.method: {method!r} is not one of 'none', 'fgm', 'pgd'")
    perturbed = [x.detach() + d.detach() for x, d in zip(leaves, deltas, strict=True)]
    return loss_fn(_with_states(parts, perturbed))
