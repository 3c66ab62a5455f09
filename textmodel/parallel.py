"""Data-parallel training of the text model over a ``torch.distributed`` process group (Ray Train sets it up).

What DDP does, done explicitly: the trainer's loss is spread over the encoder, the towers and the trainer's
own scalars (BCE bias, offset weight), not one module's ``forward``, so it is not wrapped in
``DistributedDataParallel``; instead every step all-reduces the gradients of every trainable weight
(the trainer's own included) in one flat buffer, and clipping and the optimiser step then run on identical
gradients on every worker, which keeps the weights identical without broadcasting them.

Batches are worker-count independent by construction: every worker draws the same global batch (same seed,
same sampler, negatives included) and keeps its contiguous ``1/N`` slice; each slice's mean loss is
weighted by its share of the batch, so the summed gradient is the gradient of the global batch's mean loss:
N workers take the single-process steps (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from textmodel.data import Batch


def share_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[start, stop)`` of ``n`` things split among ``world`` (sizes differ by
    at most one; the last ranks get nothing when ``n < world``)."""
    return n * rank // world, n * (rank + 1) // world


class DataParallel:
    """This worker's place in the process group, and the collectives the trainer and the encoder use."""

    def __init__(self, device: torch.device) -> None:
        if not dist.is_initialized():
            raise RuntimeError("data-parallel training needs a torch.distributed process group (Ray Train sets it up)")
        self.rank, self.world, self.device = dist.get_rank(), dist.get_world_size(), device

    def share(self, batch: Batch) -> tuple[Batch, float]:
        """This worker's slice of the global ``batch`` and the weight of its mean loss (slice / batch size)."""
        n = len(batch.candidates)
        start, stop = share_bounds(n, self.rank, self.world)
        part = slice(start, stop)
        offsets = None if batch.offsets is None else batch.offsets[part]
        return Batch(batch.history[part], batch.candidates[part], batch.labels[part], offsets), (stop - start) / n

    def reduce_gradients(self, params: Sequence[nn.Parameter], loss: float) -> float:
        """Sum every parameter's gradient over the workers, in place, and return the summed ``loss``.

        A parameter no worker produced a gradient for keeps ``grad = None`` (the optimiser skips it, as in one
        process: a zero gradient would still move it through weight decay and momentum).
        """
        flags = torch.tensor([p.grad is not None for p in params] + [loss], dtype=torch.float64, device=self.device)
        dist.all_reduce(flags)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for param, present in zip(params, flags[:-1].tolist(), strict=True):
            n = param.numel()
            param.grad = flat[offset : offset + n].view_as(param).clone() if present else None
            offset += n
        return float(flags[-1])

    def broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` to every worker (the starting weights)."""
        for tensor in tensors:
            data = tensor.data
            dist.broadcast(data, src=0)

    def gather_items(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
        """``fn(index)`` over items ``0..n-1``: each worker computes its contiguous share, all gather the rest."""
        start, stop = share_bounds(n, self.rank, self.world)
        local = fn(torch.arange(start, stop))
        width = -(-n // self.world)  # all_gather needs equal sizes: pad every share to the largest
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        sizes = [share_bounds(n, r, self.world) for r in range(self.world)]
        return torch.cat([part[: b - a] for part, (a, b) in zip(parts, sizes, strict=True)])
