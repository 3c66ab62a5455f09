"""The promotion gate's rule: does the evidence say the challenger is better than the champion?

The evidence (:func:`compare_versions`, the code path of ``recrank promote`` and of the bench) and the rule.
The gate compares two ranker versions on the same test impressions and gets the paired 95% bootstrap interval
of the challenger's gain on ``mlflow.promotion_metric``. Its rule, in this order:

1. the interval's upper end is below ``mlflow.promotion_margin``: **refused** (not better by the margin even at
   the optimistic end);
2. its lower end is at least the margin: **promoted** (better beyond the noise, by the margin);
3. it spans the margin and is wider than ``mlflow.promotion_max_interval``: **not enough evidence** (too few
   impressions to tell the two apart); the champion stays, and the decision names the impressions and the
   interval (the replay judges such a challenger again on more days);
4. it spans the margin and is narrow: **refused** (the evidence is there, and it says: not better by the margin).

A point gain is never enough on its own: on 23 test impressions two of six challengers that differed from the
champion only by their ranker seed had point gains above the old margin (+0.0058 and +0.0043 nDCG@10) with
intervals reaching below zero. ``bench/promotion_gate.py`` measures the old rule and this one side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conf import Config
from ranker.compare import Interval

PROMOTED, REFUSED, INSUFFICIENT = "promoted", "refused", "not enough evidence"


@dataclass(frozen=True)
class GateRule:
    """The rule's parameters (``mlflow.promotion_*``)."""

    metric: str
    margin: float
    max_interval: float

    def describe(self) -> str:
        return (
            f"promote when the lower end of the paired 95% interval of the {self.metric} gain is >= {self.margin:g}, "
            f"deciding only on intervals at most {self.max_interval:g} wide"
        )

    def judge(self, gain: Interval, impressions: int) -> tuple[str, str]:
        """The verdict (:data:`PROMOTED`, :data:`REFUSED` or :data:`INSUFFICIENT`) and a one-line reason that
        names the figures it rests on."""
        figures = (
            f"{self.metric} gain {gain.mean:+.4f} (95% CI {gain.low:+.4f}, {gain.high:+.4f}) "
            f"on {impressions} test impressions"
        )
        width = gain.high - gain.low
        if not (np.isfinite(gain.low) and np.isfinite(gain.high)):  # no impression where the metric is defined
            return INSUFFICIENT, f"not enough evidence: {impressions} impressions, no interval; {figures}"
        if gain.high < self.margin:
            return REFUSED, f"refused: {figures}: upper end < margin {self.margin:g}"
        if gain.low >= self.margin:
            return PROMOTED, f"{figures}: lower end >= margin {self.margin:g}"
        if width > self.max_interval:
            return INSUFFICIENT, (
                f"not enough evidence: {impressions} impressions, interval [{gain.low:+.4f}, {gain.high:+.4f}] "
                f"({width:.4f} wide > {self.max_interval:g}); {figures}"
            )
        return REFUSED, f"refused: {figures}: lower end < margin {self.margin:g}"


def evaluate_version(cfg: Config, client, version: str, rows, source, truth):
    """Per-impression test metrics of one ranker version: its scoring bundle (the method the API and batch
    scoring call) over the point-in-time rows, with its own pinned text model (table only: no backbone)."""
    import torch

    from ranker.loading import load_pipeline_version
    from ranker.metrics import per_impression_metrics

    bundle = load_pipeline_version(
        client,
        cfg.mlflow.model_prefix,
        version,
        Path(cfg.data.dir),
        Path(cfg.textmodel.cache_dir),
        torch.device("cpu"),
        table_only=True,
    )
    return per_impression_metrics(truth, bundle.score_rows(rows, source, num_threads=0))


def compare_versions(
    cfg: Config, client, challenger: str, champion: str
) -> tuple[Interval, int, dict[str, dict[str, float]]]:
    """Both ranker versions on the same test impressions (point-in-time rows, each version's own scoring bundle):
    the paired 95% bootstrap interval of the challenger's gain on ``mlflow.promotion_metric``, the impressions
    where that metric is defined, and each version's metrics (with its impression count)."""
    from features import FeatureSpec, read_items, serving_unknown_columns
    from offline.ranker_stage import load_ranking_frame, point_in_time, scoring_rows
    from ranker.compare import paired_bootstrap
    from ranker.frame import RankerInputs, split_rows
    from ranker.metrics import METRIC_NAMES, summarize

    metric = cfg.mlflow.promotion_metric
    spec = FeatureSpec.from_config(cfg)
    base_inputs = RankerInputs.build(
        spec,
        cfg.ranker.model_copy(update={"use_text": False}),
        read_items(cfg.data.dir).collect(),
        serving_unknown=serving_unknown_columns(cfg.data.dir),
    )
    frame = split_rows(load_ranking_frame(cfg, base_inputs), "test")  # features.parquet, read once for both
    source, rows = point_in_time(cfg, frame, spec), scoring_rows(frame)
    per = {v: evaluate_version(cfg, client, v, rows, source, frame) for v in (challenger, champion)}
    points = {v: summarize(p) for v, p in per.items()}  # one pass per version; keep the metrics, not the counts
    # The metrics and how many test impressions they stand on (a gate on one day of data says so).
    summary = {v: {**{m: p[m] for m in METRIC_NAMES}, "impressions": p["impressions"]} for v, p in points.items()}
    _, gains = paired_bootstrap(
        {"challenger": per[challenger], "champion": per[champion]},
        metric,
        cfg.evaluation.bootstrap_samples,
        cfg.evaluation.seed,
        baseline="champion",
    )
    impressions = int(per[challenger][metric].drop_nulls().drop_nans().len())
    return gains["challenger"], impressions, summary


def gate_rule(cfg: Config) -> GateRule:
    m = cfg.mlflow
    return GateRule(m.promotion_metric, m.promotion_margin, m.promotion_max_interval)
