"""The pieces of data-parallel training that run without a cluster: how items and batches are shared, the
sharded cache read back as the whole one, and the collectives on a one-process group (two real workers on two
Ray nodes: tests/offline/test_distributed_train.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from textmodel.data import Batch
from textmodel.encoder import ShardedCache, TensorCache
from textmodel.parallel import DataParallel, share_bounds


@pytest.mark.parametrize(("n", "world"), [(10, 3), (2, 2), (1, 3), (7, 1), (0, 2)])
def test_share_bounds_cover_every_item_once_in_order(n: int, world: int) -> None:
    bounds = [share_bounds(n, r, world) for r in range(world)]
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_sharded_cache_reads_like_the_whole_cache() -> None:
    rng = np.random.default_rng(0)
    states = rng.standard_normal((11, 5, 3)).astype(np.float32)
    bounds = [share_bounds(11, r, 3) for r in range(3)]
    sharded = ShardedCache([states[a:b] for a, b in bounds], [a for a, _ in bounds])
    whole = TensorCache(torch.from_numpy(states))
    index = torch.tensor([10, 0, 4, 3, 7, 7, 8, 1])
    for width in (5, 2):
        torch.testing.assert_close(sharded.take(index, width), whole.take(index, width), rtol=0, atol=0)
    assert sharded.nbytes == whole.nbytes == states.nbytes


def test_sharded_cache_refuses_shards_without_starts() -> None:
    with pytest.raises(ValueError, match="2 cache shard"):
        ShardedCache([np.zeros((1, 1, 1)), np.zeros((1, 1, 1))], [0])


@pytest.fixture
def group(tmp_path: Path):
    """A one-process gloo group (file rendezvous: no socket beyond what gloo opens on loopback)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield DataParallel(torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_data_parallel_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="process group"):
        DataParallel(torch.device("cpu"))


def test_one_worker_keeps_the_batch_its_gradients_and_the_missing_ones(group: DataParallel) -> None:
    batch = Batch(torch.zeros(4, 2, dtype=torch.long), torch.arange(12).view(4, 3), torch.ones(4, 3), None)
    part, weight = group.share(batch)
    assert weight == 1.0 and torch.equal(part.candidates, batch.candidates)
    used, unused = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(3))
    used.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert group.reduce_gradients([used, unused], 0.75) == 0.75
    torch.testing.assert_close(used.grad, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert unused.grad is None  # no gradient anywhere: the optimiser must skip it, as in one process
    items = group.gather_items(lambda index: index.float().unsqueeze(1) * 2, 5)
    torch.testing.assert_close(items, torch.arange(5).float().unsqueeze(1) * 2)
