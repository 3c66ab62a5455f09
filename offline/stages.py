"""The pipeline's stages as plain functions of a :class:`~conf.Config`; the CLI and ``pipeline`` call them.

Each stage reads the artifacts of the previous one from ``cfg.data.dir`` and writes its own there, so a
stage can be re-run alone (``recrank features build``) or as part of ``recrank pipeline``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from conf import Config
from features.append import AppendSummary, append_events
from features.behaviour import FeatureSpec
from features.build import build_features, read_features
from features.io import sweep
from features.prepare import PrepareSummary, prepare_dataset, read_manifest
from features.split import read_split
from offline.report import write_report
from ranker.evaluate import BASELINES, EvaluationResult, evaluate_systems
from ranker.slices import new_item_ids


def prepare(cfg: Config, progress: bool = True) -> PrepareSummary:
    sweep(cfg.data.dir)  # finish or undo what a crashed earlier run left half-replaced (features.io)
    return prepare_dataset(cfg.data, progress=progress)


def features(cfg: Config) -> dict[str, object]:
    sweep(cfg.data.dir)
    return build_features(cfg.data.dir, FeatureSpec.from_config(cfg), cfg.features.snapshot_retention)


def append(cfg: Config, events: Path, items: Path | None = None, skip_existing: bool = False) -> AppendSummary:
    """``recrank events append``: one atomic, incremental commit of new events (:mod:`features.append`)."""
    return append_events(
        cfg.data.dir, events, FeatureSpec.from_config(cfg), items, skip_existing, cfg.features.snapshot_retention
    )


def evaluate_baselines(cfg: Config, split: str = "test") -> tuple[EvaluationResult, Path]:
    """Evaluate the single-signal baselines on ``split`` and write the report (gains over smoothed item CTR)."""
    features = read_features(cfg.data.dir)
    frame = features.filter(pl.col("split") == split).collect()
    new_items = new_item_ids(features, read_split(cfg.data.dir).val_start)
    result = evaluate_systems(
        frame, BASELINES, cfg.evaluation, references=("item_ctr",), split=split, new_items=new_items
    )
    manifest = read_manifest(cfg.data.dir)
    context = {
        "dataset": manifest.get("dataset"),
        "protocol": manifest.get("dataset"),
        "data fingerprint": manifest.get("fingerprint"),
        "profile": cfg.profile,
        "bootstrap resamples": cfg.evaluation.bootstrap_samples,
    }
    out = write_report(result, cfg.data.dir, title=f"recrank evaluation: {manifest.get('dataset')}", context=context)
    return result, out
