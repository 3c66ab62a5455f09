"""Where a training run stands, so a restarted run continues it step for step (Ray Train checkpoints).

A checkpoint is one ``torch.save`` file of plain types and tensors (loadable with ``weights_only=True``):
the :class:`Cursor` (phase, epoch, step within the epoch, the sampler's state at the epoch's start, the
epoch's losses so far, the early-stopping counters), every trainable weight, the optimiser and scheduler
states, the best state so far, the run's :class:`~textmodel.results.TrainResult` and the history memory.
Resuming re-draws the epoch's examples from the saved sampler state and skips the steps already taken, so
the resumed run takes the same batches as one that never stopped.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"


@dataclass
class Cursor:
    """A phase's position: resume at ``step_in_epoch`` of epoch ``epoch_in_phase`` (``epochs`` = phase done)."""

    phase: str
    epoch_in_phase: int
    step_in_epoch: int
    rng_state: dict[str, Any]  # numpy bit-generator state at that epoch's start
    losses: list[float] = field(default_factory=list)
    stale: int = 0
    phase_best: float = float("-inf")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def save_state(state: dict[str, Any], folder: Path) -> Path:
    """Write ``state`` to ``folder/trainer_state.pt`` through a temporary file (never half-written)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(folder: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_state` (plain types and tensors only)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trainer state in this checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)
