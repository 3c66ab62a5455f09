"""Paired bootstrap over impressions: confidence intervals for each system and for gains between systems.

Test sets here are small (``ml100k`` test has ~256 impressions), so every comparison carries a 95%
interval. The bootstrap is *paired*: each resample draws one set of impressions and evaluates every
system on that same set, so the interval of a difference reflects only how the systems disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

_MAX_DRAW_CELLS = 20_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def _resample_means(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each row of index ``draws`` ignoring NaN: shape (B,)."""
    picked = values[draws]  # (B, n)
    valid = ~np.isnan(picked)
    counts = valid.sum(axis=1)
    sums = np.where(valid, picked, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def paired_bootstrap(
    per_group: Mapping[str, pl.DataFrame],
    metric: str,
    samples: int,
    seed: int,
    baseline: str | None = None,
    group: str = "impression_id",
) -> tuple[dict[str, Interval], dict[str, Interval]]:
    """Intervals of ``metric`` for every system, and of ``system - baseline`` for every other system.

    ``per_group`` maps a system name to its per-impression metrics (from
    :func:`ranker.metrics.per_group_metrics`) over the *same* impressions.
    """
    names = list(per_group)
    if not names:
        raise ValueError("no systems to compare")
    keys = per_group[names[0]][group]
    columns = {}
    for name in names:
        frame = per_group[name]
        if frame.height != keys.len() or not frame[group].equals(keys):
            raise ValueError(f"system {name!r} was evaluated on different impressions than {names[0]!r}")
        columns[name] = frame[metric].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    rng = np.random.default_rng(seed)
    n = keys.len()
    block = max(1, _MAX_DRAW_CELLS // max(n, 1))  # resamples per block: bounds memory on large test sets
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, samples, block):
        draws = rng.integers(0, n, size=(min(block, samples - start), n))  # (b, n) impression indices
        for name, vals in columns.items():
            parts[name].append(_resample_means(vals, draws))
    boot = {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def interval(point: float, dist: np.ndarray) -> Interval:
        low, high = np.nanpercentile(dist, [2.5, 97.5])
        return Interval(float(point), float(low), float(high))

    systems = {name: interval(float(np.nanmean(columns[name])), boot[name]) for name in names}
    gains: dict[str, Interval] = {}
    if baseline is not None:
        if baseline not in columns:
            raise ValueError(f"baseline {baseline!r} is not one of the systems {names}")
        for name in names:
            if name == baseline:
                continue
            point = float(np.nanmean(columns[name]) - np.nanmean(columns[baseline]))
            gains[name] = interval(point, boot[name] - boot[baseline])
    return systems, gains


def compare_systems(
    per_group: Mapping[str, pl.DataFrame],
    metrics: Sequence[str],
    samples: int,
    seed: int,
    baseline: str | None = None,
) -> dict[str, dict[str, dict[str, Interval]]]:
    """``{metric: {"systems": {name: Interval}, "gain_vs_<baseline>": {name: Interval}}}``."""
    out: dict[str, dict[str, dict[str, Interval]]] = {}
    for metric in metrics:
        systems, gains = paired_bootstrap(per_group, metric, samples, seed, baseline)
        out[metric] = {"systems": systems}
        if baseline is not None:
            out[metric][f"gain_vs_{baseline}"] = gains
    return out
