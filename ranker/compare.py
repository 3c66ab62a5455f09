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


def _columns(per_group: Mapping[str, pl.DataFrame], metric: str, group: str) -> dict[str, np.ndarray]:
    """``{system: per-impression values of metric}`` (NaN where undefined), checked to be the same impressions."""
    names = list(per_group)
    if not names:
        raise ValueError("no systems to compare")
    keys = per_group[names[0]][group]
    columns = {}
    for name in names:
        frame = per_group[name]
        if frame.height != keys.len() or not frame[group].equals(keys):
            raise ValueError(f"system {name!r} was evaluated on different impressions than {names[0]!r}")
        if metric not in frame.columns:
            raise ValueError(f"system {name!r}: no per-impression column {metric!r} (columns: {frame.columns})")
        columns[name] = frame[metric].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return columns


def _draws(n: int, samples: int, seed: int) -> list[np.ndarray]:
    """The resampled impression indices, in blocks of (b, n) that bound memory on large test sets.

    One seed gives one set of draws: every metric and every system is resampled on the same impressions.
    """
    rng = np.random.default_rng(seed)
    block = max(1, _MAX_DRAW_CELLS // max(n, 1))
    return [rng.integers(0, n, size=(min(block, samples - start), n)) for start in range(0, samples, block)]


def _interval(point: float, dist: np.ndarray) -> Interval:
    if dist.size == 0 or np.isnan(dist).all():  # no impression where the metric is defined
        return Interval(float(point), float("nan"), float("nan"))
    low, high = np.nanpercentile(dist, [2.5, 97.5])
    return Interval(float(point), float(low), float(high))


def _point(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if values.size and not np.isnan(values).all() else float("nan")


def _intervals(
    columns: Mapping[str, np.ndarray], draws: Sequence[np.ndarray], references: Sequence[str]
) -> tuple[dict[str, Interval], dict[str, dict[str, Interval]]]:
    """Each system's interval, and ``{reference: {system: interval of system - reference}}``."""
    boot = {
        name: np.concatenate([_resample_means(vals, d) for d in draws]) if draws else np.empty(0)
        for name, vals in columns.items()
    }
    systems = {name: _interval(_point(vals), boot[name]) for name, vals in columns.items()}
    gains: dict[str, dict[str, Interval]] = {}
    for ref in references:
        if ref not in columns:
            raise ValueError(f"reference {ref!r} is not one of the systems {list(columns)}")
        gains[ref] = {
            name: _interval(systems[name].mean - systems[ref].mean, boot[name] - boot[ref])
            for name in columns
            if name != ref
        }
    return systems, gains


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
    columns = _columns(per_group, metric, group)
    n = len(next(iter(columns.values())))
    systems, gains = _intervals(columns, _draws(n, samples, seed), [baseline] if baseline is not None else [])
    return systems, gains.get(baseline, {}) if baseline is not None else {}


def gain_key(reference: str) -> str:
    """The key of the gains over ``reference`` in :func:`compare_systems`'s result (and ``metrics.json``)."""
    return f"gain_vs_{reference}"


def compare_systems(
    per_group: Mapping[str, pl.DataFrame],
    metrics: Sequence[str],
    samples: int,
    seed: int,
    baseline: str | None = None,
    references: Sequence[str] = (),
    group: str = "impression_id",
) -> dict[str, dict[str, dict[str, Interval]]]:
    """``{metric: {"systems": {name: Interval}, "gain_vs_<ref>": {name: Interval}, ...}}``.

    One gain table per reference (``baseline`` first, then ``references``), all from one set of draws: the
    same resampled impressions for every metric, system and reference, so a gain's interval is paired and
    the figures equal separate :func:`paired_bootstrap` calls with the same seed.
    """
    refs = list(dict.fromkeys([*([baseline] if baseline is not None else []), *references]))
    if not per_group:
        raise ValueError("no systems to compare")
    n = next(iter(per_group.values())).height
    draws = _draws(n, samples, seed) if n else []
    out: dict[str, dict[str, dict[str, Interval]]] = {}
    for metric in metrics:
        systems, gains = _intervals(_columns(per_group, metric, group), draws, refs)
        out[metric] = {"systems": systems, **{gain_key(ref): gains[ref] for ref in refs}}
    return out
