"""``recrank ranker train`` and ``recrank evaluate``: fit LambdaRank, compare every system on test.

Systems on the same test impressions: random, popularity, smoothed item CTR, the interest score alone,
a LightGBM over behavioural features only, and the combined ranker (scored through the ranking
pipeline's own scoring function). Gains are reported against smoothed item CTR, the bar to beat, and
against the features-only LightGBM (what the text adds), on the whole split and on each slice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl

from conf import Config
from features import (
    FeatureSpec,
    read_features,
    read_impressions,
    read_items,
    read_manifest,
    read_snapshot,
    read_split,
    serving_unknown_columns,
)
from features.history import impression_histories
from features.io import atomic_path
from features.sources import PointInTimeFeatures
from offline.report import REPORT_DIR, write_report
from offline.textmodel_stage import INTEREST_FILE
from ranker.evaluate import BASELINES, EvaluationResult, evaluate_systems
from ranker.frame import REPORT_ONLY_TEXT, RankerInputs, fit_rows, ranking_frame, split_rows
from ranker.freshness import FreshnessResult, Replay, evaluate_freshness
from ranker.guard import GuardDecision, decide
from ranker.lambdarank import FitResult, predict
from ranker.metrics import score_metrics
from ranker.pipeline import RankingPipeline
from ranker.slices import new_item_ids
from ranker.training import fit_ranker
from runtime.progress import say
from runtime.ray_env import start_ray

RANKER_DIR = "ranker"
COMBINED, FEATURES_ONLY = "ranker", "lightgbm_features_only"  # the report's names of the two rankers


@dataclass
class RankerRun:
    """A fitted ranker with everything needed to evaluate, register and serve it.

    With text, two rankers are fitted: the combined one (``fit``) and the same LightGBM without the text
    features (``features_only``); ``guard`` says which of them is shipped (registered and served).
    """

    fit: FitResult
    inputs: RankerInputs
    spec: FeatureSpec
    frame: pl.DataFrame  # the full ranking frame (all splits)
    features_only: FitResult | None = None  # the same LightGBM without the text features, for the report
    features_only_inputs: RankerInputs | None = None
    guard: GuardDecision | None = None  # combined vs features-only on the validation impressions

    @property
    def shipped_system(self) -> str:
        """The report's name of the ranker that is registered: ``ranker`` (the combined one, or the only one
        without text) or ``lightgbm_features_only`` (when the combined one did not earn its place)."""
        if self.guard is None or self.guard.accepted:
            return COMBINED
        return FEATURES_ONLY

    def shipped(self) -> RankerRun:
        """This run reduced to the ranker that is shipped (what registration logs), its guard kept."""
        if self.shipped_system == COMBINED:
            return self
        return RankerRun(self.features_only, self.features_only_inputs, self.spec, self.frame, guard=self.guard)


def load_ranking_frame(cfg: Config, inputs: RankerInputs) -> pl.DataFrame:
    d = Path(cfg.data.dir)
    if inputs.uses_text and not (d / INTEREST_FILE).is_file():
        raise FileNotFoundError(f"{d / INTEREST_FILE}: not found (run `recrank textmodel train` first)")
    interest = pl.read_parquet(d / INTEREST_FILE) if inputs.uses_text else None
    return ranking_frame(read_features(d).collect(), read_items(d).collect(), interest, inputs)


def train_ranker(cfg: Config) -> RankerRun:
    """Fit the combined ranker (and the features-only one for comparison) and save it under ``DIR/ranker``."""
    spec = FeatureSpec.from_config(cfg)
    items = read_items(cfg.data.dir).collect()
    inputs = RankerInputs.build(spec, cfg.ranker, items, serving_unknown=serving_unknown_columns(cfg.data.dir))
    frame = load_ranking_frame(cfg, inputs)
    # ranker.distributed.workers > 1: fit_ranker runs LightGBM on Ray actors; Ray is started here from `ray`
    # (or joined at ray.address) and shut down after, when this call started it
    started = cfg.ranker.distributed.workers > 1 and start_ray(cfg.ray)
    try:
        fit = fit_ranker(fit_rows(frame, cfg.ranker.train_split, inputs), split_rows(frame, "val"), inputs, cfg.ranker)
        run = RankerRun(fit=fit, inputs=inputs, spec=spec, frame=frame)
        if inputs.uses_text:
            plain_cfg = cfg.ranker.model_copy(update={"use_text": False})
            plain = RankerInputs.build(spec, plain_cfg, items, serving_unknown=serving_unknown_columns(cfg.data.dir))
            run.features_only = fit_ranker(
                fit_rows(frame, plain_cfg.train_split, plain), split_rows(frame, "val"), plain, plain_cfg
            )
            run.features_only_inputs = plain
            run.guard = text_guard(cfg, run)
    finally:
        if started:
            import ray

            ray.shutdown()
    save_ranker(run, Path(cfg.data.dir) / RANKER_DIR)
    return run


def text_guard(cfg: Config, run: RankerRun) -> GuardDecision:
    """Combined vs features-only on the validation impressions (``ranker.text_guard``): the combined ranker is
    shipped only when its gain there is beyond the noise of the set. The text model never saw these
    impressions (it is selected on its own), so they can judge what its scores add."""
    val = split_rows(run.frame, "val")
    combined = predict(run.fit.booster, val, run.inputs, num_threads=0)
    plain = predict(run.features_only.booster, val, run.features_only_inputs, num_threads=0)
    ev = cfg.evaluation
    decision = decide(
        val, combined, plain, cfg.ranker.text_guard, ev.bootstrap_samples, ev.seed, (COMBINED, FEATURES_ONLY), "val"
    )
    say(f"ranker shipped: {decision.reason}")
    return decision


def save_ranker(run: RankerRun, folder: Path) -> None:
    """``DIR/ranker``: the boosters (combined, features-only) as LightGBM text and their metadata."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        meta = {"feature_spec": run.spec.to_json(), "shipped": run.shipped_system}
        if run.guard is not None:
            meta["text_guard"] = run.guard.to_json()
        for name, fit, inputs in (
            ("combined", run.fit, run.inputs),
            ("features_only", run.features_only, run.features_only_inputs),
        ):
            if fit is None:
                continue
            fit.booster.save_model(str(tmp / f"{name}.txt"))
            meta[name] = {
                "inputs": inputs.to_json(),
                "params": fit.params,
                "best_iteration": fit.best_iteration,
                "val_ndcg_at_10": fit.val_ndcg_at_10,
                "trials": fit.trials,
                "seconds": fit.seconds,
            }
        (tmp / "ranker.json").write_text(json.dumps(meta, indent=2, default=list) + "\n")


def load_ranker_run(cfg: Config) -> RankerRun:
    """The ranker saved by :func:`train_ranker` under ``DIR/ranker``, with its ranking frame rebuilt."""
    folder = Path(cfg.data.dir) / RANKER_DIR
    if not (folder / "ranker.json").is_file():
        raise FileNotFoundError(f"{folder / 'ranker.json'}: not found (run `recrank ranker train` first)")
    meta = json.loads((folder / "ranker.json").read_text())
    spec = FeatureSpec.from_json(meta["feature_spec"])

    def fit_of(name: str) -> tuple[FitResult, RankerInputs] | None:
        if name not in meta:
            return None
        m = meta[name]
        inputs = RankerInputs.from_json(m["inputs"])
        booster = lgb.Booster(model_file=str(folder / f"{name}.txt"))
        fit = FitResult(
            booster,
            m["params"],
            m["best_iteration"],
            m["val_ndcg_at_10"],
            m["trials"],
            m["seconds"],
        )
        return fit, inputs

    combined, inputs = fit_of("combined")
    plain, plain_inputs = fit_of("features_only") or (None, None)
    return RankerRun(
        fit=combined,
        inputs=inputs,
        spec=spec,
        frame=load_ranking_frame(cfg, inputs),
        features_only=plain,
        features_only_inputs=plain_inputs,
        guard=GuardDecision.from_json(meta["text_guard"]) if "text_guard" in meta else None,
    )


def point_in_time(cfg: Config, frame: pl.DataFrame, spec: FeatureSpec) -> PointInTimeFeatures:
    """The point-in-time feature source over an already-read ranking frame (features.parquet is read once):
    each impression's features and its user's clicks strictly before it."""
    hist = impression_histories(read_impressions(cfg.data.dir), frame.lazy(), spec.history_cap).collect()
    return PointInTimeFeatures(frame, hist, spec)


def scoring_rows(part: pl.DataFrame) -> pl.DataFrame:
    """Impression rows in the scoring bundle's long format (``request_id`` = the impression)."""
    return part.select(pl.col("impression_id").alias("request_id"), "user_id", "item_id")


def local_pipeline(run: RankerRun, cfg: Config, text=None) -> RankingPipeline:
    """The scoring bundle of the freshly fitted booster: the online snapshot, and the saved text model when the
    ranker reads the interest score (``text``: a scorer already loaded; else loaded from ``DIR/textmodel``)."""
    if run.inputs.uses_text and text is None:
        text = load_local_text_scorer(cfg)
    return RankingPipeline(
        booster=run.fit.booster, inputs=run.inputs, spec=run.spec, snapshot=read_snapshot(cfg.data.dir), text=text
    )


def load_local_text_scorer(cfg: Config):
    """The text model ``recrank textmodel train`` saved under ``DIR/textmodel``, as a scorer (on the CPU)."""
    import torch

    from offline.textmodel_stage import TEXTMODEL_DIR
    from textmodel.artifact import TextRuntime, load_text_model
    from textmodel.scoring import TextScorer

    folder, cpu = Path(cfg.data.dir) / TEXTMODEL_DIR, torch.device("cpu")
    runtime = TextRuntime.from_config(cfg.textmodel)
    return TextScorer(load_text_model(folder, Path(cfg.textmodel.cache_dir), cpu, runtime), cpu)


def evaluate_run(cfg: Config, run: RankerRun, split: str = "test") -> tuple[EvaluationResult, Path]:
    """Compare all systems on ``split`` and write the report with the feature-importance plot.

    The ranker's scores come from its scoring bundle over the point-in-time rows: the same method the API
    and batch scoring call, interest score included (recomputed from the saved text model); the same bundle
    then scores the split again from stale snapshots (``evaluation.freshness``, :mod:`ranker.freshness`)."""
    part = split_rows(run.frame, split)
    pipeline = local_pipeline(run, cfg)
    source, rows = point_in_time(cfg, part, run.spec), scoring_rows(part)
    scored = part.with_columns(pl.Series("score_ranker", pipeline.score_rows(rows, source, num_threads=0)))
    systems = dict(BASELINES)
    if run.inputs.uses_text:
        if REPORT_ONLY_TEXT in part.columns and part[REPORT_ONLY_TEXT].null_count() == 0:
            systems[REPORT_ONLY_TEXT] = pl.col(REPORT_ONLY_TEXT)  # the frozen-backbone head: what tuning bought
        systems["interest_score"] = pl.col("interest_score")
    if run.features_only is not None:
        plain = RankingPipeline(run.features_only.booster, run.features_only_inputs, run.spec, pipeline.snapshot, None)
        scored = scored.with_columns(pl.Series("score_features_only", plain.score_rows(rows, source, num_threads=0)))
        systems["lightgbm_features_only"] = pl.col("score_features_only")
    systems["ranker"] = pl.col("score_ranker")
    # new items: first shown at most new_item_days before the training cut-off, judged over the whole table
    entered = read_split(cfg.data.dir).val_start - timedelta(days=cfg.evaluation.new_item_days)
    new_items = new_item_ids(read_features(cfg.data.dir), entered)
    result = evaluate_systems(scored, systems, cfg.evaluation, split=split, new_items=new_items)
    # The same pipelines from stale snapshots; their point-in-time scores are the ones just evaluated.
    pipelines, given = {"ranker": pipeline}, {"ranker": scored["score_ranker"].to_numpy()}
    if run.features_only is not None:
        pipelines["lightgbm_features_only"] = plain
        given["lightgbm_features_only"] = scored["score_features_only"].to_numpy()
    result.freshness = served_freshness(cfg, run.spec, part, rows, pipelines, source, given, split)
    result.selection = selection_record(Path(cfg.data.dir), run)
    manifest = read_manifest(cfg.data.dir)
    context = {
        "dataset": manifest.get("dataset"),
        "data fingerprint": manifest.get("fingerprint"),
        "profile": cfg.profile,
        "bootstrap resamples": cfg.evaluation.bootstrap_samples,
        "ranker": f"LambdaRank, {run.fit.best_iteration} trees, num_leaves {run.fit.params['num_leaves']}, "
        f"min_child_samples {run.fit.params['min_child_samples']}, trained on {cfg.ranker.train_split}, "
        + (f"boosted from logit({run.inputs.base_score})" if run.inputs.base_score else "boosted from zero"),
        "ranker features": ", ".join(run.inputs.features),
        "shipped ranker": run.guard.reason if run.guard is not None else COMBINED,
    }
    if run.inputs.uses_text:
        context["text model"] = _text_model_summary(Path(cfg.data.dir))
    out = write_report(result, cfg.data.dir, title=f"recrank evaluation: {manifest.get('dataset')}", context=context)
    plot_importance(run.fit.booster, out / "feature_importance.png")
    with (out / "report.md").open("a") as fh:
        fh.write("\n## Feature importance (gain)\n\n![feature importance](feature_importance.png)\n")
    return result, out


def selection_record(data_dir: Path, run: RankerRun) -> dict[str, object]:
    """How the shipped models were chosen, for the report: which ranker is shipped and why; with text, the
    text model's export decision, its selection impressions, and the interest scores' impression-mean AUC on
    every split (train rows as the ranker fits on them: cross-fitted), so a reader sees whether the score the
    ranker learned to trust on train and validation behaves the same on test."""
    out: dict[str, object] = {
        "shipped_ranker": run.shipped_system,
        "text_guard": None if run.guard is None else run.guard.to_json(),
    }
    if not run.inputs.uses_text:
        return out
    from offline.textmodel_stage import TEXTMODEL_DIR
    from textmodel.artifact import META_FILE

    path = data_dir / TEXTMODEL_DIR / META_FILE
    meta = json.loads(path.read_text()) if path.is_file() else {}
    by_split: dict[str, dict[str, float]] = {}
    for column in ("interest_score", REPORT_ONLY_TEXT):
        if column not in run.frame.columns:
            continue
        by_split[column] = {}
        for split in ("train", "val", "test"):
            rows = run.frame.filter((pl.col("split") == split) & pl.col(column).is_not_null())
            if rows.height:
                by_split[column][split] = score_metrics(rows, rows[column])["auc"]
    selection_auc = meta.get("impression_auc", {}).get("selection")
    if selection_auc is not None:
        by_split["interest_score"]["selection"] = selection_auc
    out["text_model"] = {
        "export": meta.get("export"),
        "selection_impressions": meta.get("selection"),
        "train_interest": meta.get("train_interest", "in_sample"),
        "interest_auc_by_split": by_split,
    }
    return out


def served_freshness(
    cfg: Config,
    spec: FeatureSpec,
    part: pl.DataFrame,
    rows: pl.DataFrame,
    pipelines: dict[str, RankingPipeline],
    source: PointInTimeFeatures,
    given: dict[str, np.ndarray],
    split: str,
) -> FreshnessResult | None:
    """The same pipelines on ``split`` from snapshots as stale as a server's (``evaluation.freshness``); None when
    no mode is asked for, or on the train split (no cut-off before it to freeze a snapshot at)."""
    cut = {"val": "val_start", "test": "test_start"}.get(split)
    if not cfg.evaluation.freshness or cut is None:
        return None
    d = cfg.data.dir
    replay = Replay(read_impressions(d), read_items(d), spec, getattr(read_split(d), cut))
    timed_rows = rows.hstack([part["ts"]])  # each impression a request at its own time
    return evaluate_freshness(part, timed_rows, pipelines, source, replay, cfg.evaluation, given, split)


def _text_model_summary(data_dir: Path) -> str:
    """One line on how the interest scores the ranker saw were made (from ``DIR/textmodel/textmodel.json``)."""
    from offline.textmodel_stage import TEXTMODEL_DIR
    from textmodel.artifact import META_FILE

    path = data_dir / TEXTMODEL_DIR / META_FILE
    if not path.is_file():
        return "no saved text model"
    meta = json.loads(path.read_text())
    parts = [f"{meta['backbone']['name']}"]
    if meta.get("offset_feature"):
        parts.append(f"trained as a residual over {meta['offset_feature']} (weight {meta['offset_weight']:.2f})")
    parts.append(f"train-row scores {meta.get('train_interest', 'in_sample')}")
    if meta.get("train_rows_without_score"):
        parts.append(f"{meta['train_rows_without_score']} oldest train rows unscored (not fitted on)")
    return "; ".join(parts)


def plot_importance(booster: lgb.Booster, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gains = booster.feature_importance("gain")
    names = booster.feature_name()
    order = gains.argsort()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    ax.barh([names[i] for i in order], gains[order] / max(gains.sum(), 1e-12), color="#4c72b0")
    ax.set_xlabel("share of total gain")
    ax.set_title("ranker feature importance")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


__all__ = ["REPORT_DIR", "RankerRun", "evaluate_run", "load_ranker_run", "train_ranker"]
