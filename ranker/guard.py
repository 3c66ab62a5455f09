"""Guards: does a candidate model beat its reference on held-out impressions by more than their noise?

Two places ship a model only when it earns it: the text model's export (the adapted encoder against the
frozen-backbone head of the same run, on the text model's selection impressions) and the ranker's
registration (the combined ranker against the features-only one, on the validation impressions). Both ask
the same question with the same rule, so it is written once: the candidate wins when the lower end of the
paired 95% bootstrap interval of its gain (the report's intervals: same resampling, same tie-break) is above
``min_gain``. A point gain inside the noise of the set keeps the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from conf import GuardConfig
from ranker.compare import Interval, paired_bootstrap
from ranker.metrics import per_impression_metrics


@dataclass(frozen=True)
class GuardDecision:
    """The outcome of one guard, with the figures it was decided on (recorded in artifacts and run tags)."""

    candidate: str
    reference: str
    metric: str
    accepted: bool
    gain: Interval  # candidate - reference, paired 95% bootstrap over impressions
    candidate_value: float
    reference_value: float
    min_gain: float
    impressions: int
    on: str  # which impressions: "selection", "val", ...

    @property
    def chosen(self) -> str:
        return self.candidate if self.accepted else self.reference

    @property
    def evidence(self) -> str:
        """The comparison the decision rests on, in one line."""
        verdict = "above" if self.accepted else "not above"
        return (
            f"{self.candidate} - {self.reference} {self.metric} on {self.impressions} {self.on} impressions "
            f"{self.gain.mean:+.4f} [{self.gain.low:+.4f}, {self.gain.high:+.4f}] (95%), lower end {verdict} "
            f"{self.min_gain:+.4f}"
        )

    @property
    def reason(self) -> str:
        """One line: what was chosen, on what evidence."""
        return f"{self.chosen} ({self.evidence})"

    @classmethod
    def from_json(cls, raw: dict) -> GuardDecision:
        gain = raw["gain"]
        return cls(
            candidate=raw["candidate"],
            reference=raw["reference"],
            metric=raw["metric"],
            accepted=bool(raw["accepted"]),
            gain=Interval(gain["mean"], gain["low"], gain["high"]),
            candidate_value=raw["candidate_value"],
            reference_value=raw["reference_value"],
            min_gain=raw["min_gain"],
            impressions=raw["impressions"],
            on=raw["on"],
        )

    def to_json(self) -> dict[str, object]:
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "chosen": self.chosen,
            "accepted": self.accepted,
            "metric": self.metric,
            "gain": self.gain.to_json(),
            "candidate_value": self.candidate_value,
            "reference_value": self.reference_value,
            "min_gain": self.min_gain,
            "impressions": self.impressions,
            "on": self.on,
            "reason": self.reason,
            "evidence": self.evidence,
        }


def decide(
    frame: pl.DataFrame,
    candidate_scores: Sequence[float] | np.ndarray,
    reference_scores: Sequence[float] | np.ndarray,
    guard: GuardConfig,
    samples: int,
    seed: int,
    names: tuple[str, str] = ("candidate", "reference"),
    on: str = "held-out",
) -> GuardDecision:
    """Compare two scores of ``frame``'s rows (``impression_id``, ``item_id``, ``clicked``) under ``guard``.

    An impression where the metric is undefined (no click, or nothing but clicks, for AUC) does not count.
    """
    per = {
        names[0]: per_impression_metrics(frame, pl.Series(np.asarray(candidate_scores, dtype=np.float64))),
        names[1]: per_impression_metrics(frame, pl.Series(np.asarray(reference_scores, dtype=np.float64))),
    }
    systems, gains = paired_bootstrap(per, guard.metric, samples, seed, baseline=names[1])
    gain = gains[names[0]]
    counted = int(per[names[0]][guard.metric].drop_nulls().drop_nans().len())
    accepted = bool(np.isfinite(gain.low) and gain.low > guard.min_gain)
    return GuardDecision(
        candidate=names[0],
        reference=names[1],
        metric=guard.metric,
        accepted=accepted,
        gain=gain,
        candidate_value=systems[names[0]].mean,
        reference_value=systems[names[1]].mean,
        min_gain=guard.min_gain,
        impressions=counted,
        on=on,
    )
