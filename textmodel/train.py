"""Click-label training of the text model. The trainer owns the loss; the model has none.

Per step: the step's unique candidate and (newest ``live_history``) history items run through the trainable
part of the item tower together, in one graph; older history items are read from a memory of item vectors
re-encoded without gradients (every ``memory_refresh_steps`` and at epoch ends); the user tower pools the
history, and the loss is sampled softmax (clicked vs unclicked of the same impression, as NRMS) or pointwise
BCE. The training loss is also logged on a fixed draw of train impressions at each epoch's end
(``held_in_loss``), with that epoch's weights: the curve that shows whether the optimisation works.
Validation AUC is computed after each epoch by a metric function handed in by the caller (the metrics live in
``ranker``; this package does not import it), with early stopping on it. What the trainer calls ``val`` is
whatever the caller selects on: the pipeline passes the text model's own selection impressions (the latest
train impressions), never the ranker's validation split.

One class on purpose (~480 lines): the probe, the fine-tuning, the cross-fitted heads and a resumed run all
share the epoch sampler, the history memory, the best state and the step counters; the records it returns
are in ``textmodel.results``, the checkpoint format in ``textmodel.resume``, the gradient exchange of a
data-parallel worker in ``textmodel.parallel``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from conf import TrainConfig
from conf.progress import progress as show_progress
from conf.progress import say
from textmodel.adversarial import adversarial_loss
from textmodel.continual import WarmStartError
from textmodel.data import Batch, ImpressionSet, TextDataError, batches, cross_fit_plan, sample_examples
from textmodel.encoder import BucketStates, ItemEncoder
from textmodel.parallel import DataParallel
from textmodel.peft_methods import step_hook
from textmodel.results import EpochLog, TrainResult
from textmodel.resume import Cursor
from textmodel.scoring import score_rows, scored_frame
from textmodel.towers import TextModel

ValMetric = Callable[[pl.DataFrame], float]  # frame of impression_id, clicked, score -> a number (higher is better)
Checkpointer = Callable[[dict], None]  # receives a resumable trainer state (textmodel.resume) to persist


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
        self.model, self.encoder, self.cfg, self.device, self.val_metric = model, encoder, cfg, device, val_metric
        self.parallel, self.checkpointer = parallel, checkpointer
        self._resume: dict | None = None  # a checkpoint fit() was asked to continue, until its phase takes it
        self._in_fit = False  # checkpoints are of fit()'s phases only (not of cross-fitted heads)
        self.bias = nn.Parameter(torch.zeros((), device=device))  # BCE only: calibrates the score offset
        # Weight of the behavioural logit added in the loss (batches with offsets only: see ``offset_feature``).
        self.offset_weight = nn.Parameter(torch.ones((), device=device))
        self.autocast = cfg.bf16 == "on" or (cfg.bf16 == "auto" and device.type == "cuda")
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
        self._held_in_of: tuple[ImpressionSet, ImpressionSet] | None = None  # (train set, its held-in draw)

    def loss(self, batch: Batch, memory: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of one batch (clean + adversarial when configured); ``pooled`` (N, H) given: item
        vectors come from the cached pooled states through the head (head-only phases).

        The step's candidates and its live history items (:meth:`_live`) are encoded together, each unique item
        once, in one graph: the loss depends on the trainable weights through the user vectors as well as the
        candidates, as the score does at validation and serving. Other history items come from ``memory``."""
        live = self._live(batch.history, pooled is not None)
        n_candidates = batch.candidates.numel()
        ids = torch.cat([batch.candidates.reshape(-1), batch.history[live]])
        unique, inverse = torch.unique(ids, return_inverse=True)  # each item encoded once per step
        if pooled is not None:
            head_input = pooled[unique.to(pooled.device)]  # (U, H)
            parts = [BucketStates(torch.arange(len(unique)), head_input, torch.ones(len(unique), 1))]
        else:
            parts = self.encoder.gather(unique)  # lower-layer states per length bucket
        rows, cols = live.nonzero(as_tuple=True)

        def loss_of(inputs: list[BucketStates]) -> torch.Tensor:
            fn = (lambda states, _mask: self.model.items.head(states)) if pooled is not None else None
            vectors = self.encoder.encode_parts(inputs, fn)  # (U, dim)
            items = vectors[inverse[:n_candidates]].view(*batch.candidates.shape, -1)
            history = memory[batch.history.clamp(min=0)]  # (B, cap, dim), no gradient
            if len(rows):
                history = history.index_put(
                    (rows.to(history.device), cols.to(history.device)), vectors[inverse[n_candidates:]]
                )
            return self._loss_of_items(batch, history, items)

        adv = self.cfg.adversarial
        if adv.method == "none":
            return loss_of(parts)
        leaves = [p.states.detach().requires_grad_(True) for p in parts]
        parts = [BucketStates(p.positions, x, p.mask) for p, x in zip(parts, leaves, strict=True)]
        clean = loss_of(parts)
        return clean + adversarial_loss(loss_of, parts, clean, leaves, adv.method, adv.epsilon, adv.steps)

    def _live(self, history: torch.Tensor, head_only: bool) -> torch.Tensor:
        """(B, cap) bool: the history positions encoded in the step's graph: the newest ``live_history`` real
        items (histories are right-aligned, newest last), every one in head-only phases (a projection each)."""
        real = history >= 0
        k = None if head_only else self.cfg.live_history
        if k is None:
            return real
        cap = history.shape[1]
        return real & (torch.arange(cap, device=history.device) >= cap - k)[None, :]

    def _loss_of_items(self, batch: Batch, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Sampled softmax or BCE of the batch given its history items' vectors ``history`` (B, cap, dim) and its
        candidates' ``items`` (B, C, dim)."""
        users = self.model.users(history, batch.history >= 0)  # (B, dim)
        scores = self.model.score(users, items)  # (B, C)
        if batch.offsets is not None:
            scores = scores + self.offset_weight * batch.offsets
        if self.cfg.objective == "softmax":
            return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
        return F.binary_cross_entropy_with_logits(scores + self.bias, batch.labels)

    def _context(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, data: ImpressionSet, memory: torch.Tensor) -> float:
        """The validation metric of what the loss trains: the text score, plus the weighted offset if any."""
        return self._evaluate(data, memory)[0]

    @torch.no_grad()
    def validation_loss(self, data: ImpressionSet, memory: torch.Tensor, chunk: int = 4096) -> float | None:
        """The training loss on ``data``'s examples, drawn with a fixed seed, candidates scored from ``memory``."""
        try:
            rng = np.random.default_rng(self.cfg.seed)
            examples = sample_examples(data, self.cfg.objective, self.cfg.negatives, rng)
        except TextDataError:  # no impression with both labels: no loss to report (the AUC still validates)
            return None
        total = 0.0
        for batch in batches(data, examples, chunk, np.random.default_rng(0), None):
            batch = batch.to(self.device)
            history, items = memory[batch.history.clamp(min=0)], memory[batch.candidates]
            total += float(self._loss_of_items(batch, history, items)) * len(batch.candidates)
        return total / len(examples)

    def _evaluate(self, data: ImpressionSet, memory: torch.Tensor) -> tuple[float, float | None]:
        """(metric of the trained score, metric of the text part alone when an offset is added, else None)."""
        scores = score_rows(self.model, memory, data)
        if data.row_offset is None:
            return self.val_metric(scored_frame(data, scores)), None
        mixed = scores + float(self.offset_weight.detach()) * data.row_offset
        return self.val_metric(scored_frame(data, mixed)), self.val_metric(scored_frame(data, scores))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of every trainable weight, the trainer's own included (the best epoch's is restored at the end)."""
        state = {n: p.detach().clone() for n, p in self.model.learned_state().items()}
        return {**state, **{f"trainer.{n}": p.detach().clone() for n, p in self._own().items()}}

    def _head_params(self) -> list[nn.Parameter]:
        """What a head fit trains: the towers, the BCE bias and the offset weight."""
        return [*self.model.tower_parameters(), self.bias, self.offset_weight]

    def _own(self) -> dict[str, nn.Parameter]:
        return {"bias": self.bias, "offset_weight": self.offset_weight}

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
        name: str,
        epochs: int,
        train: ImpressionSet,
        val: ImpressionSet,
        groups: list[dict],
        pooled: torch.Tensor | None,
        max_steps: int | None,
        rng: np.random.Generator,
        result: TrainResult,
        progress: bool,
        fresh_best: bool = False,
    ) -> None:
        """Run up to ``epochs`` epochs with early stopping; keeps ``result``'s best state up to date.

        ``pooled`` set: a probe phase (item vectors = head(pooled), only the towers learn). ``fresh_best``: the
        phase's best epoch replaces the earlier best even when it validates lower (fine-tuning, when configured,
        is what gets exported: a model whose adapters are thrown away is not a fine-tuned model).
        """
        cfg = self.cfg
        groups = [g for g in groups if g["params"]]
        if epochs == 0 or not groups:
            return
        n_examples = len(sample_examples(train, cfg.objective, cfg.negatives, np.random.default_rng(cfg.seed)))
        steps_per_epoch = math.ceil(n_examples / cfg.batch_size)
        if max_steps is not None:
            steps_per_epoch = min(steps_per_epoch, max_steps)
        total = steps_per_epoch * epochs
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)) * max(0.0, 1 - s / max(total, 1))
        )
        params = [p for g in groups for p in g["params"]]
        stale = 0
        phase_best = float("-inf") if fresh_best else result.best_val_metric
        first_epoch, skip, resumed_losses = 0, 0, []
        cursor = self._take_resume(name, result, optimizer, scheduler)
        if cursor is not None:  # continue a checkpointed run: same sampler state, same step, same counters
            rng.bit_generator.state = cursor.rng_state
            first_epoch, skip, resumed_losses = cursor.epoch_in_phase, cursor.step_in_epoch, cursor.losses
            stale, phase_best = cursor.stale, cursor.phase_best
        for epoch_in_phase in range(first_epoch, epochs):
            epoch = len(result.epochs)
            start, losses = time.perf_counter(), list(resumed_losses)
            resumed_losses = []
            epoch_rng = rng.bit_generator.state
            self.model.train()
            examples = sample_examples(train, cfg.objective, cfg.negatives, rng)
            steps = batches(train, examples, cfg.batch_size, rng, max_steps)
            bar = show_progress(steps, f"{name} epoch {epoch}", steps_per_epoch, progress)
            for i, batch in enumerate(bar):
                if i < skip:
                    continue  # taken before the checkpoint this run resumed from
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
                losses.append(loss)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                every = cfg.distributed.checkpoint_every_steps
                if every is not None and result.steps % every == 0:
                    at = Cursor(name, epoch_in_phase, i + 1, epoch_rng, losses, stale, phase_best)
                    self._checkpoint(at, optimizer, scheduler, result)
            skip = 0
            self.model.eval()
            self._memory = self._vectors(pooled, progress)
            metric, text_metric = self._evaluate(val, self._memory)
            seconds = time.perf_counter() - start
            log = EpochLog(epoch, float(np.mean(losses)), metric, seconds, len(losses), name, text_metric, result.steps)
            log.val_loss = self.validation_loss(val, self._memory)
            log.held_in_loss = self.validation_loss(self._held_in(train), self._memory)
            result.epochs.append(log)
            held = "" if log.held_in_loss is None else f" (held-in {log.held_in_loss:.4f})"
            say(
                f"{name} epoch {epoch}: loss {log.train_loss:.4f}{held}, val {metric:.4f}, {log.seconds:.0f}s", progress
            )
            result.best_by_phase[name] = max(result.best_by_phase.get(name, float("-inf")), metric)
            if metric > phase_best:
                phase_best, stale = metric, 0
                result.best_val_metric, result.best_epoch, result.best_phase = metric, epoch, name
                self._best_state = self.trainable_state()
            else:
                stale += 1
            # Head-only phases over cached vectors (probe, cross-fitted heads) follow probe_patience: by default
            # they run their whole schedule, whose rate anneals to zero (cheap, and their curve only plateaus).
            patience = cfg.probe_patience if pooled is not None else cfg.patience
            stop = patience is not None and stale > patience
            done = epochs if stop else epoch_in_phase + 1  # a resumed run must not train past an early stop
            at = Cursor(name, done, 0, rng.bit_generator.state, [], stale, phase_best)
            self._checkpoint(at, optimizer, scheduler, result)
            if stop:
                break
        # The next phase (or the caller) starts from the best state so far.
        self.restore(self._best_state)
        self._memory = self._vectors(pooled, progress)

    def _held_in(self, train: ImpressionSet) -> ImpressionSet:
        """A fixed draw of ``held_in_impressions`` of ``train``'s impressions (the same for every epoch)."""
        if self._held_in_of is None or self._held_in_of[0] is not train:
            m = len(train.impression_ids)
            keep = np.zeros(m, dtype=bool)
            pick = np.random.default_rng(self.cfg.seed + 7).choice(
                m, min(m, self.cfg.held_in_impressions), replace=False
            )
            keep[pick] = True
            self._held_in_of = (train, train.subset(keep))
        return self._held_in_of[1]

    def _step(self, batch: Batch, pooled, params, optimizer, scheduler) -> float:
        """One optimiser step on ``batch``; returns its loss. Data-parallel: this worker's slice of the global
        batch, its loss weighted by the slice's share, gradients summed over the workers before clipping."""
        weight = 1.0
        if self.parallel is not None:
            batch, weight = self.parallel.share(batch)
        value = 0.0
        if len(batch.candidates):
            with self._context():
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
        if self.checkpointer is None or not self._in_fit:
            return
        self.checkpointer(
            {
                "cursor": cursor.to_json(),
                "weights": self.trainable_state(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best_state": self._best_state,
                "probe_state": self.probe_state,
                "result": result.to_json(),
                "fine_steps": self._fine_steps,
                "fine_seconds": self._fine_seconds,
                "memory": self._memory.detach().cpu(),
                "torch_rng": torch.get_rng_state(),  # dropout masks: the resumed run draws the same ones
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            }
        )

    def _take_resume(self, name: str, result: TrainResult, optimizer, scheduler) -> Cursor | None:
        """Restore the checkpoint ``fit(resume=...)`` was given when it was taken in phase ``name`` (copied: the
        optimiser would otherwise step the checkpoint's own moment tensors in place)."""
        state = self._resume
        if state is None or state["cursor"]["phase"] != name:
            return None
        self._resume = None
        self.restore(state["weights"])
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        self._best_state = state["best_state"]
        self.probe_state = state.get("probe_state")
        result.__dict__.update(TrainResult.from_json(state["result"]).__dict__)
        self._fine_steps, self._fine_seconds = state["fine_steps"], state["fine_seconds"]
        self._memory = state["memory"].to(self.device)
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        return Cursor(**state["cursor"])

    def out_of_fold_scores(
        self,
        train: ImpressionSet,
        val: ImpressionSet,
        folds: int,
        init_towers: dict[str, torch.Tensor],
        scheme: str = "time",
        progress: bool = False,
    ) -> np.ndarray:
        """Interest scores of ``train``'s rows from heads that never saw them (NaN where no head may score).

        For each pair of :func:`cross_fit_plan`, the towers are re-initialised and probe-trained (over the final
        adapters' pooled vectors, early-stopped on ``val``: the pipeline's selection impressions) on the ``fit_on``
        impressions, then score the ``score`` ones. A ranker fitted on train rows needs this: in-sample scores
        look better than the scores it will get at serving time, and it would learn to trust them too much.
        Random folds are not enough on a time-split dataset: a head that saw an item's later clicks scores that
        item's earlier rows with knowledge the point-in-time behavioural features do not have, so ``time`` (the
        default) lets each block be scored only by heads fitted on earlier blocks. (The adapters still saw
        every train row; they move the pooled vectors little next to what the head memorises.)
        """
        final = self.trainable_state()
        pooled = self.encoder.pooled_all()
        scores = np.full(train.num_rows, np.nan, dtype=np.float64)
        plan = cross_fit_plan(train, folds, scheme, self.cfg.seed + 1)
        for k, (fit_on, held) in enumerate(plan):
            say(f"cross-fitted head {k + 1}/{len(plan)}: fit on {int(fit_on.sum())} impressions", progress)
            self._fit_head(
                train.subset(fit_on), val, pooled, init_towers, np.random.default_rng(self.cfg.seed + 100 + k), progress
            )
            scores[held[train.row_impression]] = score_rows(self.model, self._memory, train.subset(held))
        self.restore(final)
        return scores

    def _fit_head(
        self,
        train: ImpressionSet,
        val: ImpressionSet,
        pooled: torch.Tensor,
        init_towers: dict[str, torch.Tensor],
        rng: np.random.Generator,
        progress: bool = False,
    ) -> TrainResult:
        """Towers (and the trainer's bias and offset weight) from their initial values, probe-trained on ``train``
        over ``pooled`` and early-stopped on ``val``; the best state is left loaded."""
        initial = {"trainer.bias": torch.zeros_like(self.bias), "trainer.offset_weight": torch.ones_like(self.bias)}
        towers = {"params": self._head_params(), "lr": self.cfg.head_lr}
        self.restore({**init_towers, **initial})
        self._best_state = self.trainable_state()
        self._memory = self._vectors(pooled, False)
        fitted = TrainResult(best_val_metric=self.evaluate(val, self._memory))
        epochs = self.cfg.probe_epochs  # a head fit is a probe: the fine-tuning phase's epochs are adapter steps
        self._phase("head", epochs, train, val, [towers], pooled, None, rng, fitted, progress)
        return fitted

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
        init_metric, init_text = self._evaluate(val, self._memory)
        result = TrainResult(best_val_metric=init_metric, best_by_phase={"init": init_metric})
        start = EpochLog(0, float("nan"), init_metric, 0.0, 0, "init", init_text)
        start.held_in_loss = self.validation_loss(self._held_in(train), self._memory)
        result.epochs.append(start)
        self._best_state, self._fine_steps, self._fine_seconds = self.trainable_state(), 0, 0.0
        self._phase("probe", epochs, train, val, [towers], pooled, None, self._rng, result, progress)
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
        # The probe annealed the towers' rate to zero; restarting them at lr undoes it (README), so by default
        # (fine_tune_head_lr 0) they stay fixed and only the adapters learn.
        head_lr = cfg.lr if cfg.fine_tune_head_lr is None else cfg.fine_tune_head_lr
        towers = {"params": self._head_params() if head_lr > 0 else [], "lr": head_lr}
        if self._memory is None:  # the probe leaves head(pooled), which is encode_all() while adapters are unchanged
            self._memory = self.encoder.encode_all(progress=progress)
        if self.frozen:
            if towers["params"]:
                pooled = self.encoder.pooled_all(progress=progress)
                steps = cfg.max_steps_per_epoch
                self._phase("head", cfg.epochs, train, val, [towers], pooled, steps, rng, result, progress)
        else:
            adapters = {"params": self.model.adapter_parameters(), "lr": cfg.lr}
            steps = cfg.max_steps_per_epoch
            self._phase(
                "fine-tune", cfg.epochs, train, val, [adapters, towers], None, steps, rng, result, progress, True
            )
        result.seconds_per_step = self._fine_seconds / max(self._fine_steps, 1)
        return result
