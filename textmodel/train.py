"""Click-label training of the text model: the phases of a run and the state they share.

A run is a probe (the head over the cached pooled states of the untouched backbone: linear probing), then
fine-tuning: the item tower's trainable part (adapters or the side network) and the towers at their own rate
(``fine_tune_head_lr``; 0 keeps them fixed), starting from the probe's best state (``fine_tune_from: probe``) or
from the untrained towers (``scratch``, the demo profile's choice; the probe is then only the frozen reference
the export rule compares with), each a
:class:`Phase` of epochs with early stopping on the caller's selection impressions (the pipeline passes the
text model's own: the latest train impressions, never the ranker's validation split). Each part has its own
module: the loss and the validation metric in ``textmodel.objective``, the cross-fitted heads in
``textmodel.crossfit``, the checkpoint format in ``textmodel.resume``, the records a run returns in
``textmodel.results``, a data-parallel worker's gradient exchange in ``textmodel.parallel``. The trainer holds
what the phases share: the epoch sampler, the history memory (item vectors the user tower reads where a step
does not encode them live), the best state so far, the probe's state, and the fine-tuning step counters.

The training loss is also logged at each epoch's end on a fixed draw of train impressions with that epoch's
weights (``held_in_loss``): the curve that shows whether the optimisation works.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from conf import TrainConfig
from runtime.progress import progress as show_progress
from runtime.progress import say
from textmodel.continual import WarmStartError
from textmodel.data import Batch, ImpressionSet, batches, sample_examples
from textmodel.encoder import ItemEncoder
from textmodel.objective import ClickObjective, ValMetric
from textmodel.parallel import DataParallel
from textmodel.peft_methods import step_hook
from textmodel.results import EpochLog, TrainResult
from textmodel.resume import Cursor, capture, restore_run
from textmodel.towers import TextModel

Checkpointer = Callable[[dict], None]  # receives a resumable trainer state (textmodel.resume) to persist

__all__ = ["Checkpointer", "ClickTrainer", "Phase", "ValMetric"]


@dataclass
class Phase:
    """One phase of a run: ``epochs`` epochs (of at most ``max_steps`` steps) optimising ``groups`` (AdamW
    parameter groups, each with its rate). ``pooled`` (N, H) set: a head-only phase (item vectors = head over
    these cached pooled states). ``fresh_best``: the phase's best epoch replaces the run's best even when it
    validates lower (fine-tuning, whose result the export decision weighs against the probe's)."""

    name: str
    epochs: int
    groups: list[dict]
    pooled: torch.Tensor | None = None
    max_steps: int | None = None
    fresh_best: bool = False


class ClickTrainer:
    """Trains a :class:`TextModel` on click labels (the loss and the optimisation live here)."""

    def __init__(
        self,
        model: TextModel,
        encoder: ItemEncoder,
        cfg: TrainConfig,
        device: torch.device,
        val_metric: ValMetric,
        parallel: DataParallel | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        """``parallel``: this worker's data-parallel group (None: one process). ``checkpointer``: called with a
        resumable state at each epoch's end and every ``distributed.checkpoint_every_steps`` steps of :meth:`fit`
        (Ray Train persists it; :meth:`fit` with ``resume=`` that state continues the run)."""
        self.model, self.encoder, self.cfg, self.device = model, encoder, cfg, device
        self.parallel, self.checkpointer = parallel, checkpointer
        self.objective = ClickObjective(model, encoder, cfg, device, val_metric)
        self._resume: dict | None = None  # a checkpoint fit() was asked to continue, until its phase takes it
        self._in_fit = False  # checkpoints are of fit()'s phases only (not of cross-fitted heads)
        # Training state shared by the phases: the epoch sampler, the history memory (item vectors the user
        # tower reads), the best state so far, and the fine-tuning step counters.
        self._rng: np.random.Generator | None = None
        self._memory: torch.Tensor | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._fine_steps, self._fine_seconds = 0, 0.0
        self.warm = False  # set by warm_start: the towers come from a parent, so fit skips the probe
        # Every trainable weight as the probe left it (the head over the untouched backbone): the reference the
        # adapted model must beat to be exported, and the frozen baseline every run reports (None: no probe ran).
        self.probe_state: dict[str, torch.Tensor] | None = None
        self._init_state: dict[str, torch.Tensor] | None = None  # the towers before the probe (fine_tune_from)

    # The objective's scalars and measures, under the names callers use.
    @property
    def bias(self) -> nn.Parameter:
        return self.objective.bias

    @property
    def offset_weight(self) -> nn.Parameter:
        return self.objective.offset_weight

    def loss(self, batch: Batch, memory: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of one batch (:meth:`ClickObjective.loss`)."""
        return self.objective.loss(batch, memory, pooled)

    def validation_loss(self, data: ImpressionSet, memory: torch.Tensor, chunk: int = 4096) -> float | None:
        return self.objective.validation_loss(data, memory, chunk)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of every trainable weight, the trainer's own included (the best epoch's is restored at the end)."""
        state = {n: p.detach().clone() for n, p in self.model.learned_state().items()}
        return {**state, **{f"trainer.{n}": p.detach().clone() for n, p in self._own().items()}}

    def _head_params(self) -> list[nn.Parameter]:
        """What a head fit trains: the towers, the BCE bias and the offset weight."""
        return [*self.model.tower_parameters(), self.bias, self.offset_weight]

    def _own(self) -> dict[str, nn.Parameter]:
        return self.objective.own

    def own_state(self) -> dict[str, float]:
        """The trainer's own trained scalars, saved with the model so a warm start can resume them too."""
        return {name: float(p.detach()) for name, p in self._own().items()}

    def warm_start(self, weights: dict[str, torch.Tensor], trainer_state: dict[str, float]) -> None:
        """Load a parent's trainable weights (every one, same names and shapes) and the trainer's scalars.

        The caller has checked that the parent's definition matches (:func:`textmodel.continual.load_parent`);
        the names and shapes are checked here as well, since loading half a model would train a hybrid.
        """
        trainable = self.model.learned_state()
        missing, unexpected = set(trainable) - set(weights), set(weights) - set(trainable)
        if missing or unexpected:
            raise WarmStartError(
                f"warm start: parent weights do not match the model (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]})"
            )
        for name, param in trainable.items():
            if tuple(weights[name].shape) != tuple(param.shape):
                raise WarmStartError(
                    f"warm start: weight {name}: parent shape {tuple(weights[name].shape)}, model {tuple(param.shape)}"
                )
        own = {f"trainer.{k}": torch.tensor(float(v)) for k, v in trainer_state.items() if k in self._own()}
        self.restore({**{n: w.to(self.device) for n, w in weights.items()}, **own})
        self.warm = True

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` (model weights, and the trainer's own ones when present; others keep their values)."""
        self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("trainer.")}, strict=False)
        with torch.no_grad():
            for name, param in self._own().items():
                if f"trainer.{name}" in state:
                    param.copy_(state[f"trainer.{name}"])

    def _phase(
        self,
        phase: Phase,
        train: ImpressionSet,
        val: ImpressionSet,
        rng: np.random.Generator,
        result: TrainResult,
        progress: bool,
    ) -> None:
        """Run ``phase``'s epochs with early stopping on ``val``; keeps ``result``'s best state up to date and
        leaves the best state so far loaded (the next phase, or the caller, starts from it)."""
        cfg = self.cfg
        groups = [g for g in phase.groups if g["params"]]
        if phase.epochs == 0 or not groups:
            return
        n_examples = len(sample_examples(train, cfg.objective, cfg.negatives, np.random.default_rng(cfg.seed)))
        steps_per_epoch = math.ceil(n_examples / cfg.batch_size)
        if phase.max_steps is not None:
            steps_per_epoch = min(steps_per_epoch, phase.max_steps)
        total = steps_per_epoch * phase.epochs
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)) * max(0.0, 1 - s / max(total, 1))
        )
        params = [p for g in groups for p in g["params"]]
        at = Cursor(phase.name, 0, 0, {}, [], 0, float("-inf") if phase.fresh_best else result.best_val_metric)
        if self._resume is not None and self._resume["cursor"]["phase"] == phase.name:
            # Continue a checkpointed run: same sampler state, same step, same counters.
            at = restore_run(self, self._resume, result, optimizer, scheduler)
            self._resume = None
            rng.bit_generator.state = at.rng_state
        # Head-only phases over cached vectors (probe, cross-fitted heads) follow probe_patience: by default they
        # run their whole schedule, whose rate anneals to zero (cheap, and their curve only plateaus).
        patience = cfg.probe_patience if phase.pooled is not None else cfg.patience
        for epoch_in_phase in range(at.epoch_in_phase, phase.epochs):
            start, epoch_rng, losses = time.perf_counter(), rng.bit_generator.state, list(at.losses)
            self.model.train()
            examples = sample_examples(train, cfg.objective, cfg.negatives, rng)
            steps = batches(train, examples, cfg.batch_size, rng, phase.max_steps)
            bar = show_progress(steps, f"{phase.name} epoch {len(result.epochs)}", steps_per_epoch, progress)
            for i, batch in enumerate(bar):
                if i < at.step_in_epoch:
                    continue  # taken before the checkpoint this run resumed from
                losses.append(self._train_step(batch, phase.pooled, params, optimizer, scheduler, result))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                every = cfg.distributed.checkpoint_every_steps
                if every is not None and result.steps % every == 0:
                    mid = Cursor(phase.name, epoch_in_phase, i + 1, epoch_rng, losses, at.stale, at.phase_best)
                    self._checkpoint(mid, optimizer, scheduler, result)
            at.step_in_epoch, at.losses = 0, []
            improved = self._end_epoch(phase, train, val, losses, time.perf_counter() - start, result, at, progress)
            at.stale = 0 if improved else at.stale + 1
            stop = patience is not None and at.stale > patience
            done = phase.epochs if stop else epoch_in_phase + 1  # a resumed run must not train past an early stop
            end = Cursor(phase.name, done, 0, rng.bit_generator.state, [], at.stale, at.phase_best)
            self._checkpoint(end, optimizer, scheduler, result)
            if stop:
                break
        self.restore(self._best_state)
        self._memory = self._vectors(phase.pooled, progress)

    def _train_step(self, batch: Batch, pooled, params, optimizer, scheduler, result: TrainResult) -> float:
        """One optimiser step with its bookkeeping (step counters, AdaLoRA's budget, the memory's refresh)."""
        t0 = time.perf_counter()
        loss = self._step(batch, pooled, params, optimizer, scheduler)
        result.record_step(loss)
        if pooled is None:
            self._fine_steps += 1
            step_hook(self.model.items.backbone.upper_model, self._fine_steps)  # AdaLoRA's budget (reads grads)
            self._fine_seconds += time.perf_counter() - t0
        optimizer.zero_grad(set_to_none=True)
        if pooled is None:
            self._maybe_refresh_memory()
        return loss

    def _end_epoch(
        self,
        phase: Phase,
        train: ImpressionSet,
        val: ImpressionSet,
        losses: list[float],
        seconds: float,
        result: TrainResult,
        at: Cursor,
        progress: bool,
    ) -> bool:
        """Re-encode the memory, validate, log the epoch, and keep the best state; True when it improved on
        ``at.phase_best`` (which it then raises)."""
        epoch = len(result.epochs)
        self.model.eval()
        self._memory = self._vectors(phase.pooled, progress)
        metric, text_metric = self.objective.evaluate_both(val, self._memory)
        log = EpochLog(
            epoch, float(np.mean(losses)), metric, seconds, len(losses), phase.name, text_metric, result.steps
        )
        log.val_loss = self.validation_loss(val, self._memory)
        log.held_in_loss = self.validation_loss(self.objective.held_in(train), self._memory)
        result.epochs.append(log)
        held = "" if log.held_in_loss is None else f" (held-in {log.held_in_loss:.4f})"
        say(f"{phase.name} epoch {epoch}: loss {log.train_loss:.4f}{held}, val {metric:.4f}, {seconds:.0f}s", progress)
        result.best_by_phase[phase.name] = max(result.best_by_phase.get(phase.name, float("-inf")), metric)
        if metric <= at.phase_best:
            return False
        at.phase_best = metric
        result.best_val_metric, result.best_epoch, result.best_phase = metric, epoch, phase.name
        self._best_state = self.trainable_state()
        return True

    def _step(self, batch: Batch, pooled, params, optimizer, scheduler) -> float:
        """One optimiser step on ``batch``; returns its loss. Data-parallel: this worker's slice of the global
        batch, its loss weighted by the slice's share, gradients summed over the workers before clipping."""
        weight = 1.0
        if self.parallel is not None:
            batch, weight = self.parallel.share(batch)
        value = 0.0
        if len(batch.candidates):
            with self.objective.context():
                loss = self.loss(batch.to(self.device), self._memory, pooled)
            if weight != 1.0:
                loss = loss * weight
            loss.backward()
            value = float(loss.detach())
        if self.parallel is not None:
            value = self.parallel.reduce_gradients(params, value)
        torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return value

    def _checkpoint(self, cursor: Cursor, optimizer, scheduler, result: TrainResult) -> None:
        """Hand a resumable state to the checkpointer (fit() only; nothing without one)."""
        if self.checkpointer is not None and self._in_fit:
            self.checkpointer(capture(self, cursor, optimizer, scheduler, result))

    def _maybe_refresh_memory(self) -> None:
        """Re-encode the history memory every ``memory_refresh_steps`` fine-tuning steps (eval mode: no dropout)."""
        every = self.cfg.memory_refresh_steps
        if every is None or self._fine_steps % every:
            return
        self.model.eval()
        self._memory = self.encoder.encode_all(progress=False)
        self.model.train()

    def _vectors(self, pooled: torch.Tensor | None, progress: bool) -> torch.Tensor:
        if pooled is not None:
            with torch.no_grad():
                return self.model.items.head(pooled)
        return self.encoder.encode_all(progress=progress)

    def fit(
        self, train: ImpressionSet, val: ImpressionSet, progress: bool = True, resume: dict | None = None
    ) -> TrainResult:
        """Probe (head only, over cached pooled vectors), then fine-tune adapters and towers together.

        With a frozen backbone the second phase trains the head alone on the fine-tuning schedule (same steps,
        rate and examples), so frozen and fine-tuned models get the same optimiser-step budget.

        Warm-started (:meth:`warm_start`) the probe is skipped: it exists to give the adapters a trained head to
        start from, and the parent's towers are one (probing would only move them off what the adapters were
        trained with). A frozen backbone keeps its probe, from the parent's towers: with the default
        ``fine_tune_head_lr: 0`` it is the only phase that trains anything there.

        ``resume``: a state this trainer's checkpointer received; the run continues from it (a probe phase
        already finished is not repeated) and ends as the uninterrupted run would.
        """
        self._resume, self._in_fit = resume, True
        try:
            if resume is not None and resume["cursor"]["phase"] != "probe":
                self._rng = np.random.default_rng(self.cfg.seed)  # replaced by the checkpoint's sampler state
                result = TrainResult()
            else:
                result = self.probe(train, val, progress, epochs=0 if self.warm and not self.frozen else None)
            return self.fine_tune(train, val, result, progress)
        finally:
            self._resume, self._in_fit = None, False

    def _from_scratch(self) -> bool:
        """``fine_tune_from: scratch`` applies to adapters after this run's own probe (not a warm start, not a
        resumed fine-tuning phase, whose checkpoint holds its weights)."""
        own_probe = self._init_state is not None and self.probe_state is not None
        return self.cfg.fine_tune_from == "scratch" and not self.frozen and own_probe

    @property
    def frozen(self) -> bool:
        """No adapters to train: the backbone is frozen and only the head learns."""
        return self.model.items.backbone.upper_model is None or not self.model.adapter_parameters()

    def probe(
        self, train: ImpressionSet, val: ImpressionSet, progress: bool = True, epochs: int | None = None
    ) -> TrainResult:
        """Phase 1: the head (towers) over the pooled vectors of the current adapters (untouched unless warm-
        started), early-stopped; ``epochs`` (default ``probe_epochs``) 0 logs the starting point only."""
        cfg = self.cfg
        epochs = cfg.probe_epochs if epochs is None else epochs
        self._rng = np.random.default_rng(cfg.seed)
        towers = {"params": self._head_params(), "lr": cfg.head_lr}
        self.model.eval()
        pooled = self.encoder.pooled_all(progress=progress)
        if not self.warm:  # warm-started: the parent's standardisation, which its towers were trained with
            self.model.items.fit_standardisation(pooled)
        self._memory = self._vectors(pooled, progress)
        init_metric, init_text = self.objective.evaluate_both(val, self._memory)
        result = TrainResult(best_val_metric=init_metric, best_by_phase={"init": init_metric})
        start = EpochLog(0, float("nan"), init_metric, 0.0, 0, "init", init_text)
        start.held_in_loss = self.validation_loss(self.objective.held_in(train), self._memory)
        result.epochs.append(start)
        self._best_state, self._fine_steps, self._fine_seconds = self.trainable_state(), 0, 0.0
        self._init_state = self._best_state
        self._phase(Phase("probe", epochs, [towers], pooled), train, val, self._rng, result, progress)
        if not self.warm:  # a warm-started probe starts from a parent's (adapted) weights: not a frozen baseline
            self.probe_state = self.trainable_state()
        return result

    def fine_tune(
        self, train: ImpressionSet, val: ImpressionSet, result: TrainResult, progress: bool = True
    ) -> TrainResult:
        """Phase 2, from the current (probed) state: adapters + towers at ``lr``, ``epochs`` x
        ``max_steps_per_epoch`` steps; the exported state is this phase's best epoch (``fresh_best``)."""
        cfg = self.cfg
        rng = self._rng if self._rng is not None else np.random.default_rng(cfg.seed)
        if self._best_state is None:
            self._best_state = self.trainable_state()
        # The probe annealed the towers' rate to zero; restarting them at lr undoes it (docs/fine-tuning.md), so
        # by default (fine_tune_head_lr 0) they stay fixed and only the adapters learn.
        head_lr = cfg.lr if cfg.fine_tune_head_lr is None else cfg.fine_tune_head_lr
        if self._from_scratch():  # from the untrained towers; the probe's state stays the frozen reference
            head_lr = cfg.head_lr if cfg.fine_tune_head_lr is None else cfg.fine_tune_head_lr
            self.restore(self._init_state)
            self._best_state, self._memory = self._init_state, None  # the run's best starts over
        towers = {"params": self._head_params() if head_lr > 0 else [], "lr": head_lr}
        if self._memory is None:  # the probe leaves head(pooled), which is encode_all() while adapters are unchanged
            self._memory = self.encoder.encode_all(progress=progress)
        if self.frozen:
            if towers["params"]:
                pooled = self.encoder.pooled_all(progress=progress)
                phase = Phase("head", cfg.epochs, [towers], pooled, cfg.max_steps_per_epoch)
                self._phase(phase, train, val, rng, result, progress)
        else:
            adapters = {"params": self.model.adapter_parameters(), "lr": cfg.lr}
            phase = Phase("fine-tune", cfg.epochs, [adapters, towers], None, cfg.max_steps_per_epoch, fresh_best=True)
            self._phase(phase, train, val, rng, result, progress)
        result.seconds_per_step = self._fine_seconds / max(self._fine_steps, 1)
        return result
