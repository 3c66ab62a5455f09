"""Where a training run stands, so a restarted run continues it step for step (Ray Train checkpoints).

A checkpoint is one ``torch.save`` file of plain types and tensors (loadable with ``weights_only=True``):
the :class:`Cursor` (phase, epoch, step within the epoch, the sampler's state at the epoch's start, the
epoch's losses so far, the early-stopping counters), every trainable weight, the optimiser and scheduler
states, the best state so far, the run's :class:`~textmodel.results.TrainResult` and the history memory.
Resuming re-draws the epoch's examples from the saved sampler state and skips the steps already taken, so
the resumed run takes the same batches as one that never stopped.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from features.io import atomic_path
from textmodel.results import TrainResult


class ClickTrainer(Protocol):
    """What a checkpoint captures and restores of a trainer (:class:`textmodel.train.ClickTrainer`), named here
    so this module need not import the trainer that imports it."""

    device: torch.device
    probe_state: dict[str, torch.Tensor] | None
    _memory: torch.Tensor | None
    _best_state: dict[str, torch.Tensor] | None
    _fine_steps: int
    _fine_seconds: float

    def trainable_state(self) -> dict[str, torch.Tensor]: ...

    def restore(self, state: dict[str, torch.Tensor]) -> None: ...


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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(folder: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_state` (plain types and tensors only)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trainer state in this checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def capture(trainer: ClickTrainer, cursor: Cursor, optimizer, scheduler, result: TrainResult) -> dict[str, Any]:
    """Everything a run needs to continue from ``cursor``: the state a checkpointer persists."""
    device = trainer.device
    return {
        "cursor": cursor.to_json(),
        "weights": trainer.trainable_state(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "best_state": trainer._best_state,
        "probe_state": trainer.probe_state,
        "result": result.to_json(),
        "fine_steps": trainer._fine_steps,
        "fine_seconds": trainer._fine_seconds,
        "memory": trainer._memory.detach().cpu(),
        "torch_rng": torch.get_rng_state(),  # dropout masks: the resumed run draws the same ones
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_run(trainer: ClickTrainer, state: dict[str, Any], result: TrainResult, optimizer, scheduler) -> Cursor:
    """Put the state :func:`capture` took back into ``trainer``, ``result``, ``optimizer`` and ``scheduler`` (the
    optimiser state copied: stepping would otherwise change the checkpoint's own moment tensors in place)."""
    trainer.restore(state["weights"])
    optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    trainer._best_state = state["best_state"]
    trainer.probe_state = state.get("probe_state")
    result.__dict__.update(TrainResult.from_json(state["result"]).__dict__)
    trainer._fine_steps, trainer._fine_seconds = state["fine_steps"], state["fine_seconds"]
    trainer._memory = state["memory"].to(trainer.device)
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)
    return Cursor(**state["cursor"])
