"""What a training run reports: one :class:`EpochLog` per validated epoch, and the run's :class:`TrainResult`.

Both are plain records that go to JSON (the artifact's ``train.json``, a Ray Train checkpoint) and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STEP_LOSS_CAP = 10_000


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_metric: float
    seconds: float
    steps: int
    phase: str = "fine-tune"
    val_text: float | None = None  # the exported score (text part alone) when the loss adds an offset
    # Optimiser steps of the whole run when this epoch was validated (all phases): with ``val_metric`` and
    # ``phase``, the learning curve a bench compares between warm-started and from-scratch training.
    step: int = 0
    # The loss on validation examples drawn once with a fixed seed (same negatives every epoch and every run):
    # the curve a data-parallel run is compared on with the single-process one.
    val_loss: float | None = None
    # The training loss on a fixed draw of train impressions (``held_in_impressions``) with this epoch's final
    # weights and freshly encoded vectors: unlike ``train_loss`` (a mean over steps of a moving model), a rise
    # here is the model getting worse at its own objective.
    held_in_loss: float | None = None


@dataclass
class TrainResult:
    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_val_metric: float = float("nan")
    best_phase: str = "init"  # the phase the exported state comes from: init, probe or fine-tune
    best_by_phase: dict[str, float] = field(default_factory=dict)  # each phase's best validation metric
    steps: int = 0
    seconds_per_step: float = float("nan")
    # The loss of each optimiser step (of the whole global batch on data-parallel workers), the first
    # STEP_LOSS_CAP steps: what a distributed run is compared on with the single-process one.
    step_losses: list[float] = field(default_factory=list)

    def record_step(self, loss: float) -> None:
        self.steps += 1
        if len(self.step_losses) < STEP_LOSS_CAP:
            self.step_losses.append(loss)

    @classmethod
    def from_json(cls, data: dict) -> TrainResult:
        epochs = [EpochLog(**e) for e in data["epochs"]]
        return cls(**{**data, "epochs": epochs})

    def to_json(self) -> dict[str, object]:
        return {
            "epochs": [e.__dict__ for e in self.epochs],
            "best_epoch": self.best_epoch,
            "best_val_metric": self.best_val_metric,
            "best_phase": self.best_phase,
            "best_by_phase": self.best_by_phase,
            "steps": self.steps,
            "seconds_per_step": self.seconds_per_step,
            "step_losses": self.step_losses,
        }
