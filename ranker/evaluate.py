"""Evaluate scoring systems on the same test impressions, with paired bootstrap intervals.

A *system* is a named score expression over the feature frame (a baseline column today; the text
model and the ranker add theirs as columns). Every system is evaluated on exactly the same rows, with
the same deterministic tie-break, so differences are differences between systems, not between samples.

Gains are reported against each *reference* present among the systems (by default smoothed item CTR, the
bar to beat, and the features-only LightGBM, which isolates what the text adds), on the whole split and on
every slice of :data:`ranker.slices.SLICES`, each with a paired 95% bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from conf import EvaluationConfig
from ranker.compare import Interval, compare_systems, gain_key
from ranker.metrics import GROUP, METRIC_NAMES, system_metrics, tie_break
from ranker.slices import NEW_ITEM, SLICES, SliceDef, slice_rows, with_new_item_flag

if TYPE_CHECKING:  # the result only names the type (ranker.freshness runs evaluations of its own)
    from ranker.freshness import FreshnessResult


# Single-signal baselines over the behavioural features. ``random`` is the floor every system must clear.
BASELINES: dict[str, pl.Expr] = {
    "random": pl.struct("impression_id", "item_id").hash(seed=17).cast(pl.Float64),
    "popularity": pl.col("item_impressions_before").cast(pl.Float64),
    "item_ctr": pl.col("item_ctr_smoothed"),
}
# What gains are measured against, where present: the bar to beat, the ranker without its text features, and
# the text model's frozen-backbone head (what fine-tuning bought over it).
DEFAULT_REFERENCES = ("item_ctr", "lightgbm_features_only", "interest_frozen")

Intervals = dict[str, dict[str, dict[str, Interval]]]  # {metric: {"systems" | "gain_vs_<ref>": {system: Interval}}}


def _intervals_json(intervals: Intervals) -> dict[str, object]:
    return {
        metric: {kind: {name: iv.to_json() for name, iv in ivs.items()} for kind, ivs in by_kind.items()}
        for metric, by_kind in intervals.items()
    }


@dataclass
class SystemResult:
    """Point metrics of one system on the whole split, and on each slice (``{slice: metrics}``)."""

    metrics: dict[str, float]
    slice_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def cold_metrics(self) -> dict[str, float]:
        """The ``cold_items`` slice's metrics (the one slice older reports had)."""
        return self.slice_metrics.get("cold_items", {})


@dataclass
class SliceResult:
    """One slice: what it is, how big it is, and every system's intervals and gains on it.

    ``rows_matching`` counts the rows the definition selects; ``rows`` / ``impressions`` the ones that count
    (item slices drop impressions left without both labels). ``available`` is False where the frame could
    not say (``new_items`` evaluated without the new-item ids): then every count is 0 and a note says why.
    """

    name: str
    description: str
    keeps: str
    rows_matching: int
    rows: int
    impressions: int
    impressions_with_auc: int
    intervals: Intervals
    available: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "description": self.description,
            "keeps": self.keeps,
            "available": self.available,
            "rows_matching": self.rows_matching,
            "rows": self.rows,
            "impressions": self.impressions,
            "impressions_with_auc": self.impressions_with_auc,
            "intervals": _intervals_json(self.intervals),
        }


@dataclass
class EvaluationResult:
    split: str
    rows: int
    impressions: int
    references: list[str]
    systems: dict[str, SystemResult]
    intervals: Intervals
    slices: dict[str, SliceResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The same systems under features as stale as a server's (ranker.freshness); None where not evaluated.
    freshness: FreshnessResult | None = None
    # How the shipped models were chosen (the text model's export, the ranker's text guard) and the interest
    # score's metric on every split; None in reports without them (baselines only).
    selection: dict[str, object] | None = None

    @property
    def baseline(self) -> str | None:
        """The first reference (the one older reports compared against), or None."""
        return self.references[0] if self.references else None

    @property
    def cold_rows(self) -> int:
        cold = self.slices.get("cold_items")
        return cold.rows_matching if cold else 0

    def gains(self, reference: str, metric: str, where: str | None = None) -> dict[str, Interval]:
        """``{system: gain over reference}`` for ``metric`` on the whole split (``where=None``) or a slice."""
        intervals = self.intervals if where is None else self.slices[where].intervals
        return intervals.get(metric, {}).get(gain_key(reference), {})

    def to_json(self) -> dict[str, object]:
        out = self._core_json()
        if self.freshness is not None:
            out["freshness"] = self.freshness.to_json()
        if self.selection is not None:
            out["selection"] = self.selection
        return out

    def _core_json(self) -> dict[str, object]:
        return {
            "split": self.split,
            "rows": self.rows,
            "impressions": self.impressions,
            "baseline": self.baseline,
            "references": self.references,
            "cold_rows": self.cold_rows,
            "systems": {
                name: {"metrics": res.metrics, "cold_items": res.cold_metrics, "slices": res.slice_metrics}
                for name, res in self.systems.items()
            },
            "intervals": _intervals_json(self.intervals),
            "slices": {name: sl.to_json() for name, sl in self.slices.items()},
            "notes": self.notes,
        }


def evaluate_systems(
    frame: pl.DataFrame,
    systems: Mapping[str, pl.Expr],
    cfg: EvaluationConfig,
    references: Sequence[str] = DEFAULT_REFERENCES,
    split: str = "test",
    new_items: Collection[str] | pl.Series | None = None,
    slices: Sequence[SliceDef] = SLICES,
) -> EvaluationResult:
    """Score ``frame`` (one split of the feature frame) with every system and compare them.

    ``references`` are the systems gains are measured against; those not among ``systems`` are skipped (the
    baselines-only report has no features-only LightGBM). ``new_items`` are the ids of items first seen after
    the training cut-off (:func:`ranker.slices.new_item_ids` over the whole feature table); without them the
    ``new_items`` slice is reported as unavailable. Slices are defined in :mod:`ranker.slices`.
    """
    if frame.height == 0:
        raise ValueError(f"no rows in the {split} split to evaluate")
    if not systems:
        raise ValueError("no systems to evaluate")
    refs = [r for r in dict.fromkeys(references) if r in systems]
    scored = frame.with_columns(
        *[expr.alias(f"score__{name}") for name, expr in systems.items()],
        tie_break(),
    )
    if new_items is not None:
        scored = with_new_item_flag(scored, new_items)
    notes = [] if refs else [f"none of the references {list(references)} is among the systems: no gains"]
    results: dict[str, SystemResult] = {}
    per_group: dict[str, pl.DataFrame] = {}
    for name in systems:
        per_group[name], summary = system_metrics(scored, f"score__{name}")
        results[name] = SystemResult(metrics=summary)
    intervals = compare_systems(per_group, METRIC_NAMES, cfg.bootstrap_samples, cfg.seed, references=refs)
    out_slices: dict[str, SliceResult] = {}
    for definition in slices:
        if NEW_ITEM in definition.needs and NEW_ITEM not in scored.columns:  # expected: ids are optional
            out_slices[definition.name] = SliceResult(
                definition.name, definition.describe(cfg), definition.keeps, 0, 0, 0, 0, {}, available=False
            )
            notes.append(f"{definition.name}: no new-item ids given (new_items=new_item_ids(features, cut-off))")
            continue
        out_slices[definition.name], by_system = _evaluate_slice(scored, list(systems), definition, cfg, refs)
        for name, metrics in by_system.items():
            results[name].slice_metrics[definition.name] = metrics
    return EvaluationResult(
        split=split,
        rows=scored.height,
        impressions=scored[GROUP].n_unique(),
        references=refs,
        systems=results,
        intervals=intervals,
        slices=out_slices,
        notes=notes,
    )


def _evaluate_slice(
    scored: pl.DataFrame,
    names: Sequence[str],
    definition: SliceDef,
    cfg: EvaluationConfig,
    refs: Sequence[str],
) -> tuple[SliceResult, dict[str, dict[str, float]]]:
    """One slice: its sizes, intervals and gains, and ``{system: point metrics}`` on it (empty when empty)."""
    rows, matching = slice_rows(scored, definition, cfg)
    per_group: dict[str, pl.DataFrame] = {}
    metrics: dict[str, dict[str, float]] = {name: {} for name in names}
    if rows.height:
        for name in names:
            per_group[name], metrics[name] = system_metrics(rows, f"score__{name}")
    intervals = (
        compare_systems(per_group, METRIC_NAMES, cfg.bootstrap_samples, cfg.seed, references=refs) if per_group else {}
    )
    any_per = next(iter(per_group.values()), None)
    result = SliceResult(
        name=definition.name,
        description=definition.describe(cfg),
        keeps=definition.keeps,
        rows_matching=matching,
        rows=rows.height,
        impressions=0 if any_per is None else any_per.height,
        impressions_with_auc=0 if any_per is None else int(any_per["auc"].drop_nulls().len()),
        intervals=intervals,
    )
    return result, metrics
