"""Cross-fitted interest scores for the rows the ranker is fitted on.

A ranker fitted on train rows needs scores that were not fitted on those rows: in-sample scores look better than
the ones it will get at serving time, and it would learn to trust them too much. :class:`CrossFitter` re-fits
the head (towers, from their initial values, over the final item tower's pooled vectors) once per pair of
:func:`textmodel.data.cross_fit_plan` and lets each head score only the impressions it never saw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from runtime.progress import say
from textmodel.data import ImpressionSet, cross_fit_plan
from textmodel.results import TrainResult
from textmodel.scoring import score_impressions

if TYPE_CHECKING:
    from textmodel.train import ClickTrainer


class CrossFitter:
    """Out-of-fold heads of a trained :class:`~textmodel.train.ClickTrainer` (which is left as it was)."""

    def __init__(self, trainer: ClickTrainer) -> None:
        self.trainer = trainer

    def scores(
        self,
        train: ImpressionSet,
        val: ImpressionSet,
        folds: int,
        init_towers: dict[str, torch.Tensor],
        scheme: str = "time",
        progress: bool = False,
    ) -> np.ndarray:
        """Interest scores of ``train``'s rows from heads that never saw them (NaN where no head may score).

        For each pair of :func:`cross_fit_plan`, the towers are re-initialised and probe-trained (early-stopped
        on ``val``: the pipeline's selection impressions) on the ``fit_on`` impressions, then score the ``score``
        ones. Random folds are not enough on a time-split dataset: a head that saw an item's later clicks scores
        that item's earlier rows with knowledge the point-in-time behavioural features do not have, so ``time``
        (the default) lets each block be scored only by heads fitted on earlier blocks. (The item tower's
        trainable part still saw every train row; it moves the pooled vectors little next to what the head
        memorises.)
        """
        t = self.trainer
        final = t.trainable_state()
        pooled = t.encoder.pooled_all()
        scores = np.full(train.num_rows, np.nan, dtype=np.float64)
        plan = cross_fit_plan(train, folds, scheme, t.cfg.seed + 1)
        for k, (fit_on, held) in enumerate(plan):
            say(f"cross-fitted head {k + 1}/{len(plan)}: fit on {int(fit_on.sum())} impressions", progress)
            rng = np.random.default_rng(t.cfg.seed + 100 + k)
            self.fit_head(train.subset(fit_on), val, pooled, init_towers, rng, progress)
            scores[held[train.row_impression]] = score_impressions(t.model, t._memory, train.subset(held))
        t.restore(final)
        return scores

    def fit_head(
        self,
        train: ImpressionSet,
        val: ImpressionSet,
        pooled: torch.Tensor,
        init_towers: dict[str, torch.Tensor],
        rng: np.random.Generator,
        progress: bool = False,
    ) -> TrainResult:
        """Towers (and the objective's bias and offset weight) from their initial values, probe-trained on
        ``train`` over ``pooled`` and early-stopped on ``val``; the best state is left loaded."""
        from textmodel.train import Phase

        t = self.trainer
        bias = t.objective.bias
        initial = {"trainer.bias": torch.zeros_like(bias), "trainer.offset_weight": torch.ones_like(bias)}
        t.restore({**init_towers, **initial})
        t._best_state = t.trainable_state()
        t._memory = t._vectors(pooled, False)
        fitted = TrainResult(best_val_metric=t.objective.evaluate(val, t._memory))
        towers = {"params": t._head_params(), "lr": t.cfg.head_lr}
        # A head fit is a probe: the fine-tuning phase's epochs are adapter steps.
        t._phase(Phase("head", t.cfg.probe_epochs, [towers], pooled), train, val, rng, fitted, progress)
        return fitted
