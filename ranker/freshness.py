"""Evaluation as served: the same ranking pipeline, scored from features as stale as a server's.

The point-in-time rows give every test impression features from all events strictly before it: a feature
store refreshed at every event, which no server has. A server reads its online snapshot, built some time
before the request. So the evaluated split is scored again, through the one scoring path
(:meth:`ranker.pipeline.RankingPipeline.score_rows`), from a feature source per *freshness mode*:

* ``point_in_time``: the offline rows (the report's main figures; the reference of every gain here);
* ``frozen``: one snapshot of the events before the split's cut-off: a server never refreshed after training;
* ``daily``: a snapshot rebuilt at each UTC midnight of the split from the events before it; that day's
  impressions read it: a server refreshed once a day.

In the snapshot modes every impression is a request at its own ``ts`` (item age and hours since the last
click are measured from it: :func:`features.behaviour.request_times`), and the text model's user tower reads
each user's history from the snapshot, as serving does. The smoothed-CTR baseline is a feature column, so it
is read from each mode's own feature rows. Gains are paired bootstrap intervals of (mode - point-in-time)
over the same impressions (:func:`ranker.compare.compare_systems`, the report's seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from conf import EvaluationConfig
from features.behaviour import FeatureSpec, OnlineSnapshot, build_snapshot
from features.history import histories
from features.sources import FeatureSource, SnapshotFeatures
from ranker.compare import Interval, compare_systems, gain_key
from ranker.metrics import METRIC_NAMES, scored_metrics
from ranker.pipeline import RankingPipeline

REFERENCE = "point_in_time"
FRESHNESS_MODES = (REFERENCE, "frozen", "daily")
MODE_DESCRIPTIONS = {
    REFERENCE: "every feature from all events strictly before each impression (the offline table): a feature "
    "store refreshed at every event, which no server has",
    "frozen": "one online snapshot of the events before the split's cut-off, never refreshed: what a server "
    "that kept its training-time snapshot sees; each impression a request at its own time",
    "daily": "a snapshot rebuilt at the start of each UTC day of the split from the events strictly before that "
    "midnight; the day's impressions read it: what a server refreshed daily sees",
}
CTR_SYSTEM, CTR_COLUMN = "item_ctr", "item_ctr_smoothed"
TS = "ts"


class FreshnessError(ValueError):
    """A freshness mode that cannot be evaluated (unknown name, no events before a snapshot time)."""


def snapshot_before(
    impressions: pl.LazyFrame, items: pl.LazyFrame, spec: FeatureSpec, cutoff: datetime
) -> OnlineSnapshot:
    """The snapshot a server built at ``cutoff``: the state after every event strictly before it, with each
    user's latest history (the same history function ``recrank features build`` attaches)."""
    before = impressions.filter(pl.col(TS) < cutoff)
    if before.select(pl.len()).collect().item() == 0:
        raise FreshnessError(f"no events before {cutoff.isoformat()}: no snapshot to serve from")
    snapshot = build_snapshot(before, items, spec)
    snapshot.users = histories(before, snapshot.users.lazy(), spec.history_cap).collect()
    return snapshot


def utc_days(ts: pl.Series) -> pl.Series:
    """The UTC midnight starting each row's day (a naive ``ts`` is read as UTC)."""
    zoned = ts.dt.replace_time_zone("UTC") if ts.dtype.time_zone is None else ts.dt.convert_time_zone("UTC")
    return zoned.dt.truncate("1d")


@dataclass(frozen=True)
class ModePart:
    """Rows of the evaluated split (indices, in row order) and the source their features come from;
    ``as_of``: the time of the snapshot behind it (None for the point-in-time rows)."""

    rows: np.ndarray
    source: FeatureSource
    as_of: datetime | None = None


@dataclass
class Replay:
    """What the snapshot modes are rebuilt from: the event log, the catalogue, the feature definition and the
    evaluated split's cut-off. Snapshots are built once per time and shared by every mode and system."""

    impressions: pl.LazyFrame
    items: pl.LazyFrame
    spec: FeatureSpec
    cutoff: datetime
    _snapshots: dict[datetime, SnapshotFeatures] = field(default_factory=dict, init=False, repr=False)

    def source_at(self, when: datetime) -> SnapshotFeatures:
        if when not in self._snapshots:
            snapshot = snapshot_before(self.impressions, self.items, self.spec, when)
            self._snapshots[when] = SnapshotFeatures(snapshot, self.spec)
        return self._snapshots[when]

    def parts(self, mode: str, rows: pl.DataFrame, point_in_time: FeatureSource) -> list[ModePart]:
        """How ``rows`` (request rows with ``ts``) are split between snapshots under ``mode``."""
        everything = np.arange(rows.height)
        if mode == REFERENCE:
            return [ModePart(everything, point_in_time)]
        if mode == "frozen":
            return [ModePart(everything, self.source_at(self.cutoff), self.cutoff)]
        if mode == "daily":
            days = utc_days(rows[TS])
            parts = []
            for day in days.unique().sort().to_list():
                idx = np.flatnonzero((days == day).to_numpy())
                parts.append(ModePart(idx, self.source_at(day), day))
            return parts
        raise FreshnessError(f"unknown freshness mode {mode!r} (known: {', '.join(FRESHNESS_MODES)})")


def score_parts(pipeline: RankingPipeline, rows: pl.DataFrame, parts: Sequence[ModePart]) -> np.ndarray:
    """The pipeline's scores of ``rows``, each part from its own source (one ``score_rows`` call per part)."""
    out = np.full(rows.height, np.nan)
    for part in parts:
        out[part.rows] = pipeline.score_rows(rows[part.rows], part.source, num_threads=0)
    return out


def feature_parts(rows: pl.DataFrame, parts: Sequence[ModePart], column: str) -> np.ndarray:
    """One feature column of ``rows`` as each part's source gives it (a baseline that is a feature)."""
    out = np.full(rows.height, np.nan)
    for part in parts:
        out[part.rows] = part.source.features(rows[part.rows]).get_column(column).cast(pl.Float64).to_numpy()
    return out


@dataclass
class FreshnessResult:
    """Each system under each mode: point metrics, 95% intervals and the paired gain over point-in-time.

    ``metrics[system][mode]``; ``intervals[metric][system][mode]``; ``gains[metric][system][mode]`` (every mode
    but the reference); ``snapshots[mode]``: the snapshot times behind it (ISO strings; empty for point-in-time).
    """

    split: str
    modes: list[str]
    metrics: dict[str, dict[str, dict[str, float]]]
    intervals: dict[str, dict[str, dict[str, Interval]]]
    gains: dict[str, dict[str, dict[str, Interval]]]
    snapshots: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)

    @property
    def systems(self) -> list[str]:
        return list(self.metrics)

    def to_json(self) -> dict[str, object]:
        def ivs(table: dict[str, dict[str, dict[str, Interval]]]) -> dict[str, object]:
            return {
                metric: {system: {mode: iv.to_json() for mode, iv in by_mode.items()} for system, by_mode in t.items()}
                for metric, t in table.items()
            }

        return {
            "split": self.split,
            "reference": REFERENCE,
            "modes": self.modes,
            "descriptions": {m: MODE_DESCRIPTIONS[m] for m in self.modes},
            "metrics": self.metrics,
            "intervals": ivs(self.intervals),
            "gains_vs_point_in_time": ivs(self.gains),
            "snapshots": self.snapshots,
            "notes": self.notes,
        }


def compare_modes(
    frame: pl.DataFrame, scores: Mapping[str, Mapping[str, np.ndarray]], cfg: EvaluationConfig, split: str = "test"
) -> FreshnessResult:
    """``scores[mode][system]`` (one score per row of ``frame``) compared mode by mode within each system.

    Each system's modes are bootstrapped together (one set of draws, the report's seed), so a gain's interval
    is paired and the point-in-time interval is the main table's.
    """
    modes = list(scores)
    if REFERENCE not in modes:
        raise FreshnessError(f"the reference mode {REFERENCE!r} is missing (modes: {modes})")
    systems = list(scores[REFERENCE])
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    intervals: dict[str, dict[str, dict[str, Interval]]] = {m: {} for m in METRIC_NAMES}
    gains: dict[str, dict[str, dict[str, Interval]]] = {m: {} for m in METRIC_NAMES}
    for system in systems:
        per_group: dict[str, pl.DataFrame] = {}
        metrics[system] = {}
        for mode in modes:
            per_group[mode], metrics[system][mode] = scored_metrics(frame, scores[mode][system])
        table = compare_systems(per_group, METRIC_NAMES, cfg.bootstrap_samples, cfg.seed, references=[REFERENCE])
        for metric in METRIC_NAMES:
            intervals[metric][system] = table[metric]["systems"]
            gains[metric][system] = table[metric][gain_key(REFERENCE)]
    return FreshnessResult(split, modes, metrics, intervals, gains, {m: [] for m in modes})


def evaluate_freshness(
    frame: pl.DataFrame,
    rows: pl.DataFrame,
    pipelines: Mapping[str, RankingPipeline],
    point_in_time: FeatureSource,
    replay: Replay,
    cfg: EvaluationConfig,
    given: Mapping[str, np.ndarray] | None = None,
    split: str = "test",
) -> FreshnessResult:
    """Score the split under every mode of ``cfg.freshness`` (point-in-time always, as the reference).

    ``frame``: the split's rows with ``impression_id, item_id, clicked``; ``rows``: the same rows as request
    rows (``request_id, user_id, item_id, ts``); ``pipelines``: ``{system: pipeline}`` (the combined ranker,
    the features-only one); ``given``: point-in-time scores already computed for the main table (reused, not
    recomputed: the reference row is then the report's figure by construction). Smoothed item CTR is added
    from each mode's feature rows.
    """
    if TS not in rows.columns:
        raise FreshnessError("rows: column 'ts' missing (each impression is a request at its own time)")
    modes = list(dict.fromkeys([REFERENCE, *cfg.freshness]))
    scores: dict[str, dict[str, np.ndarray]] = {}
    snapshots: dict[str, list[str]] = {}
    for mode in modes:
        parts = replay.parts(mode, rows, point_in_time)
        snapshots[mode] = [p.as_of.isoformat() for p in parts if p.as_of is not None]
        scores[mode] = {
            name: (given[name] if mode == REFERENCE and given and name in given else score_parts(p, rows, parts))
            for name, p in pipelines.items()
        }
        scores[mode][CTR_SYSTEM] = feature_parts(rows, parts, CTR_COLUMN)
    result = compare_modes(frame, scores, cfg, split)
    result.snapshots = snapshots
    result.notes = _notes(modes, rows, replay)
    return result


def _notes(modes: Sequence[str], rows: pl.DataFrame, replay: Replay) -> list[str]:
    """What a reader needs to read the table: where the user histories come from, who is cold to the snapshot."""
    notes = []
    if any(m != REFERENCE for m in modes):
        notes.append(
            "Snapshot modes: each impression is a request at its own time; the text model's user tower reads each "
            "user's history from the snapshot (what serving sees), point-in-time reads each impression's own clicks "
            "before it."
        )
    if "frozen" in modes:
        known = replay.source_at(replay.cutoff).snapshot.index().user_row
        users = rows["user_id"].unique()
        cold = sum(u not in known for u in users.to_list())
        notes.append(
            f"frozen: {cold} of the split's {users.len()} users have no event before the cut-off "
            f"{replay.cutoff.isoformat()} (scored as new users)."
        )
    if "daily" in modes:
        first = utc_days(rows[TS]).min()
        if first is not None and first < replay.cutoff:
            notes.append(
                f"daily: the first day's impressions read the snapshot of {first.isoformat()}, before the cut-off "
                "(a daily rebuild runs at midnight), so there daily is staler than frozen."
            )
    return notes


__all__ = [
    "FRESHNESS_MODES",
    "MODE_DESCRIPTIONS",
    "REFERENCE",
    "FreshnessError",
    "FreshnessResult",
    "ModePart",
    "Replay",
    "compare_modes",
    "evaluate_freshness",
    "feature_parts",
    "score_parts",
    "snapshot_before",
    "utc_days",
]
