"""The registered ranker as an MLflow pyfunc: the whole scoring bundle, whose ``predict`` is ``/rank``'s scores.

A bare ``mlflow.lightgbm`` booster is only a correction to ``logit(item CTR)`` over a model matrix nobody
outside recrank can build; this pyfunc is usable on its own:
``mlflow.pyfunc.load_model("models:/recrank-ranker@champion").predict(df)`` on a pandas frame in batch
scoring's long format (``request_id, user_id, item_id[, title, body, category, subcategory]``) returns one
score per row, in row order, equal to ``recrank score`` on the same rows.

Artifacts (copied into the logged model, so it is immutable):

    bundle/      booster.txt (LightGBM text) and bundle.json (ranker inputs, feature spec, versions, lineage)
    snapshot/    the online snapshot it was registered with (online_*.parquet, online_meta.json)
    textmodel/   the pinned text model's folder (adapters, towers, item table)
    backbone/    what rebuilds its backbone (textmodel.mlflow_flavor), when it has a text model
    code/        the recrank packages it runs (conf, features, textmodel, ranker): no checkout needed

``model_config={"cache_dir": ...}`` at load time says where converted backbones live (default: the
registering config's ``textmodel.cache_dir`` when it exists here, else ``~/.cache/recrank/models``). The
recrank server does not load this pyfunc: it loads the booster and metadata from ``bundle/`` and pairs them
with the data folder's current snapshot after a lineage check (:func:`ranker.loading.check_snapshot`).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

BUNDLE_KEY, SNAPSHOT_KEY, TEXTMODEL_KEY = "bundle", "snapshot", "textmodel"
BOOSTER_FILE, BUNDLE_FILE = "booster.txt", "bundle.json"


def write_bundle_folder(folder: Path, booster, inputs, spec, versions: dict[str, str | None], lineage: dict) -> Path:
    """``bundle/``: the booster and what it needs (inputs with base margin, feature spec, versions, lineage)."""
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / BOOSTER_FILE))
    meta = {"ranker_inputs": inputs.to_json(), "feature_spec": spec.to_json(), "versions": versions, **lineage}
    (folder / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, default=list) + "\n")
    return folder


def read_bundle_folder(folder: Path):
    """(booster, RankerInputs, FeatureSpec, meta) of a ``bundle/`` folder."""
    import lightgbm as lgb

    from features.behaviour import FeatureSpec
    from ranker.frame import RankerInputs

    meta = json.loads((Path(folder) / BUNDLE_FILE).read_text())
    booster = lgb.Booster(model_file=str(Path(folder) / BOOSTER_FILE))
    return booster, RankerInputs.from_json(meta["ranker_inputs"]), FeatureSpec.from_json(meta["feature_spec"]), meta


class RankerPyfunc(mlflow.pyfunc.PythonModel):
    """The scoring bundle behind MLflow's generic API (``load_context`` loads, ``predict`` scores)."""

    def load_context(self, context) -> None:
        import torch

        from features.build import read_snapshot
        from ranker.pipeline import RankingPipeline

        config = context.model_config or {}
        booster, inputs, spec, meta = read_bundle_folder(Path(context.artifacts[BUNDLE_KEY]))
        text = None
        if TEXTMODEL_KEY in context.artifacts:
            from textmodel.artifact import load_text_model
            from textmodel.mlflow_flavor import model_cache, packed_backbone
            from textmodel.scoring import TextScorer

            device = torch.device("cpu")
            folder = Path(context.artifacts[TEXTMODEL_KEY])
            loaded = load_text_model(folder, model_cache(config), device, packed_backbone=packed_backbone(context))
            text = TextScorer(loaded, device)
        versions = {k: str(v) for k, v in meta.get("versions", {}).items() if v is not None}
        snapshot = read_snapshot(Path(context.artifacts[SNAPSHOT_KEY]))
        self.pipeline = RankingPipeline(booster, inputs, spec, snapshot, text, versions)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        import polars as pl

        from conf.prompt import TEMPLATE_FIELDS

        missing = [c for c in ("request_id", "user_id", "item_id") if c not in model_input.columns]
        if missing:
            raise ValueError(f"input: column {missing[0]!r} missing (needs request_id, user_id, item_id)")
        columns = ["request_id", "user_id", "item_id", *(f for f in TEMPLATE_FIELDS if f in model_input.columns)]
        rows = pl.DataFrame(
            {c: [None if pd.isna(v) else str(v) for v in model_input[c].tolist()] for c in columns},
            schema={c: pl.String for c in columns},
        )
        scores = self.pipeline.score_rows(rows, num_threads=0)
        return pd.Series(np.asarray(scores, dtype=np.float64), index=model_input.index, name="score")
