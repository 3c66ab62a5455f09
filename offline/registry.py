"""Log both models to MLflow, register them, and move the ``champion`` alias: promote and roll back.

Each registered version carries params, metrics, a signature, an input example, the data fingerprint
and the git commit. A ranker version is tagged ``textmodel_version`` with the text model whose scores it
was trained on; serving loads exactly that pair (:mod:`ranker.loading`).

Promotion compares the newest ranker version (the challenger) with the champion on the same test
impressions (paired bootstrap) and moves ``champion`` only when the challenger wins on the configured
metric by the configured margin, or with ``force``. Every decision is recorded as tags: who, when,
both metric sets, the decision. ``rollback`` moves ``champion`` back to the previous champion.
"""

from __future__ import annotations

import getpass
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import polars as pl

from conf import Config
from features import read_manifest
from offline.tracking import git_commit, setup
from ranker.loading import TEXTMODEL_TAG, ModelPairError, ranker_name, textmodel_name

CHAMPION, CHALLENGER = "champion", "challenger"
PARENT_TAG = "parent_version"  # a warm-started textmodel version: the version it was started from
HISTORY_TAG = "champion_history"  # JSON list of champion versions, oldest first


def _flat(prefix: str, obj: object) -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: obj if not isinstance(obj, list | tuple) else json.dumps(obj)}


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}"
        for p in ("torch", "transformers", "peft", "safetensors", "polars", "pandas", "mlflow", "gguf")
    ]


def register_textmodel(cfg: Config, folder: Path) -> str:
    """Log the text model folder as a pyfunc and register it; return the new version."""
    import mlflow
    from mlflow.models import infer_signature

    from textmodel.mlflow_flavor import ARTIFACT_KEY, TextModelPyfunc

    meta = json.loads((folder / "textmodel.json").read_text())
    parent = {PARENT_TAG: str(meta[PARENT_TAG])} if meta.get(PARENT_TAG) is not None else {}
    export = meta.get("export") or {}
    # which trained state this is (the adapted encoder or the run's probe) and why: on the run and the version
    exported = {"exported": str(export["exported"]), "export_reason": str(export["reason"])} if export else {}
    example = pd.DataFrame({"history": ["1 2 3", ""], "item_id": ["4", "5"], "text": ["", ""]})
    signature = infer_signature(example, pd.Series([0.1, 0.2], name="interest_score"))
    with mlflow.start_run(run_name="textmodel") as run:
        mlflow.log_params(_flat("", {"textmodel": meta["config"], "backbone": meta["backbone"], **parent}))
        mlflow.log_metrics({f"impression_auc_{k}": v for k, v in meta["impression_auc"].items()})
        for epoch in meta["train"]["epochs"]:
            mlflow.log_metric("selection_impression_auc", epoch["val_metric"], step=epoch["epoch"])
        mlflow.set_tags(
            {
                "data_fingerprint": str(meta.get("data_fingerprint")),
                "git_commit": git_commit(),
                "profile": cfg.profile,
                **exported,
            }
        )
        info = mlflow.pyfunc.log_model(
            name="textmodel",
            python_model=TextModelPyfunc(),
            artifacts={ARTIFACT_KEY: str(folder)},
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            metadata={"backbone": meta["backbone"]},
        )
    mv = mlflow.register_model(
        info.model_uri,
        textmodel_name(cfg.mlflow.model_prefix),
        tags={
            "data_fingerprint": str(meta.get("data_fingerprint")),
            "git_commit": git_commit(),
            "run_id": run.info.run_id,
            **parent,
            **exported,
        },
    )
    return str(mv.version)


def register_ranker(cfg: Config, run, textmodel_version: str | None, metrics: dict[str, float]) -> str:
    """Log the scoring bundle as a pyfunc (booster + inputs + feature spec, the online snapshot it was trained
    against, the pinned text model), register it and pin the text model; return the new version.

    The logged model alone answers ``predict`` with the scores ``/rank`` gives (:mod:`ranker.mlflow_flavor`).
    """
    import tempfile

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from conf.prompt import TEMPLATE_FIELDS
    from features import read_snapshot
    from features.build import ONLINE_FILES
    from features.store import snapshot_dir
    from ranker.frame import split_rows
    from ranker.loading import textmodel_folder
    from ranker.mlflow_flavor import BUNDLE_KEY, SNAPSHOT_KEY, TEXTMODEL_KEY, RankerPyfunc, write_bundle_folder

    client = mlflow.MlflowClient()
    # The input example: test rows, or validation rows when the cut-offs leave no test yet (a replay's retraining).
    sample = split_rows(run.frame, "test" if (run.frame["split"] == "test").any() else "val").head(5)
    example = sample.select(pl.col("impression_id").alias("request_id"), "user_id", "item_id").to_pandas()
    signature = ModelSignature(  # the text fields are optional: only items outside the text model's table need them
        inputs=Schema(
            [ColSpec("string", c) for c in ("request_id", "user_id", "item_id")]
            + [ColSpec("string", f, required=False) for f in TEMPLATE_FIELDS]
        ),
        outputs=Schema([ColSpec("double", "score")]),
    )
    fingerprint = str(read_manifest(cfg.data.dir).get("fingerprint"))
    snapshot_id = read_snapshot(cfg.data.dir).snapshot_id
    lineage = {"data_fingerprint": fingerprint, "snapshot_id": snapshot_id}
    versions = {"textmodel": textmodel_version, "snapshot": snapshot_id}
    with tempfile.TemporaryDirectory(prefix="recrank-bundle-") as tmp, mlflow.start_run(run_name="ranker") as mrun:
        bundle = write_bundle_folder(Path(tmp) / "bundle", run.fit.booster, run.inputs, run.spec, versions, lineage)
        snapshot = Path(tmp) / "snapshot"
        snapshot.mkdir()
        for name in ONLINE_FILES:
            shutil.copy2(snapshot_dir(cfg.data.dir) / name, snapshot / name)
        artifacts = {BUNDLE_KEY: str(bundle), SNAPSHOT_KEY: str(snapshot)}
        if run.inputs.uses_text:
            artifacts[TEXTMODEL_KEY] = str(textmodel_folder(client, cfg.mlflow.model_prefix, str(textmodel_version)))
        mlflow.log_params(
            _flat(
                "",
                {
                    "lightgbm": run.fit.params,
                    "ranker": cfg.ranker.model_dump(mode="json", exclude={"params", "tune"}),
                    "best_iteration": run.fit.best_iteration,
                },
            )
        )
        mlflow.log_metrics({"val_ndcg_at_10": run.fit.val_ndcg_at_10, **{f"test_{k}": v for k, v in metrics.items()}})
        if run.guard is not None:
            g = run.guard
            mlflow.set_tags({"shipped": g.chosen, "text_guard": g.reason})
            mlflow.log_metrics({f"val_text_gain_{g.metric}": g.gain.mean, f"val_text_gain_{g.metric}_low": g.gain.low})
        mlflow.set_tags(
            {
                "data_fingerprint": fingerprint,
                "git_commit": git_commit(),
                "profile": cfg.profile,
                TEXTMODEL_TAG: str(textmodel_version),
            }
        )
        info = mlflow.pyfunc.log_model(
            name="ranker",
            python_model=RankerPyfunc(),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=[*_requirements(), f"lightgbm=={__import__('lightgbm').__version__}"],
            model_config={"cache_dir": str(Path(cfg.textmodel.cache_dir).resolve())},
            metadata={
                "ranker_inputs": run.inputs.to_json(),
                "feature_spec": run.spec.to_json(),
                TEXTMODEL_TAG: textmodel_version,
                "snapshot_id": snapshot_id,
                "format": "recrank-bundle-1",
            },
        )
    tags = {"data_fingerprint": fingerprint, "git_commit": git_commit(), "run_id": mrun.info.run_id}
    if textmodel_version is not None:
        tags[TEXTMODEL_TAG] = str(textmodel_version)
    if snapshot_id:
        tags["snapshot_id"] = snapshot_id
    tags["score"] = "pyfunc predict = the /rank score (base margin and interest score included)"
    if run.guard is not None:  # trained with text: which of the combined and features-only rankers this is, and why
        tags["shipped"] = run.guard.chosen
        tags["text_guard"] = run.guard.reason
    mv = mlflow.register_model(info.model_uri, ranker_name(cfg.mlflow.model_prefix), tags=tags)
    return str(mv.version)


@dataclass
class Decision:
    promoted: bool
    challenger: str
    champion_before: str | None
    champion_after: str | None
    reason: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    gain: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _history(client, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _set_champion(client, name: str, version: str) -> None:
    history = _history(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))


def evaluate_version(cfg: Config, client, version: str, rows: pl.DataFrame, source, truth: pl.DataFrame):
    """Per-impression test metrics of one ranker version: its scoring bundle (the method the API and batch
    scoring call) over the point-in-time rows, with its own pinned text model (table only: no backbone)."""
    import torch

    from ranker.evaluate import per_impression_metrics
    from ranker.loading import load_pipeline_version

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


def promote(cfg: Config, force: bool = False) -> Decision:
    """Compare the newest ranker version with the champion on the same test impressions; move the alias."""
    from features import FeatureSpec, read_items, serving_unknown_columns
    from offline.ranker_stage import load_ranking_frame, point_in_time, scoring_rows
    from ranker.compare import paired_bootstrap
    from ranker.frame import RankerInputs, split_rows
    from ranker.metrics import METRIC_NAMES, summarize

    client = setup(cfg)
    name = ranker_name(cfg.mlflow.model_prefix)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise ModelPairError(f"no versions of {name} registered yet (run `recrank pipeline` or `recrank register`)")
    challenger = str(max(int(v.version) for v in versions))
    aliases = client.get_registered_model(name).aliases
    champion = aliases.get(CHAMPION)
    client.set_registered_model_alias(name, CHALLENGER, challenger)
    metric = cfg.mlflow.promotion_metric
    if champion is None:
        _set_champion(client, name, challenger)
        decision = Decision(True, challenger, None, challenger, "no champion yet: first promotion", {}, {}, {})
        _record(client, name, challenger, decision)
        return decision
    if str(champion) == challenger:
        return Decision(
            False, challenger, str(champion), str(champion), "the newest version is the champion", {}, {}, {}
        )
    spec = FeatureSpec.from_config(cfg)
    base_inputs = RankerInputs.build(
        spec,
        cfg.ranker.model_copy(update={"use_text": False}),
        read_items(cfg.data.dir).collect(),
        serving_unknown=serving_unknown_columns(cfg.data.dir),
    )
    frame = split_rows(load_ranking_frame(cfg, base_inputs), "test")  # features.parquet, read once for both
    source, rows = point_in_time(cfg, frame, spec), scoring_rows(frame)
    per = {v: evaluate_version(cfg, client, v, rows, source, frame) for v in (challenger, str(champion))}
    points = {v: summarize(p) for v, p in per.items()}  # one pass per version; keep the metrics, not the counts
    # The metrics and how many test impressions they stand on (a gate on one day of data says so).
    summary = {v: {**{m: p[m] for m in METRIC_NAMES}, "impressions": p["impressions"]} for v, p in points.items()}
    _, gains = paired_bootstrap(
        {"challenger": per[challenger], "champion": per[str(champion)]},
        metric,
        cfg.evaluation.bootstrap_samples,
        cfg.evaluation.seed,
        baseline="champion",
    )
    gain = gains["challenger"]
    wins = gain.mean >= cfg.mlflow.promotion_margin
    if wins or force:
        _set_champion(client, name, challenger)
        reason = (
            f"{metric} gain {gain.mean:+.4f} (95% CI {gain.low:+.4f}, {gain.high:+.4f}) "
            + (">= margin" if wins else "< margin, forced")
            + f" {cfg.mlflow.promotion_margin}"
        )
    else:
        reason = (
            f"refused: {metric} gain {gain.mean:+.4f} (95% CI {gain.low:+.4f}, {gain.high:+.4f}) "
            f"< margin {cfg.mlflow.promotion_margin}"
        )
    decision = Decision(
        wins or force,
        challenger,
        str(champion),
        challenger if (wins or force) else str(champion),
        reason,
        summary[challenger],
        summary[str(champion)],
        {"mean": gain.mean, "low": gain.low, "high": gain.high},
    )
    _record(client, name, challenger, decision)
    return decision


def _record(client, name: str, version: str, decision: Decision) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"by": getpass.getuser(), "at": stamp, **decision.to_json()}
    client.set_model_version_tag(name, version, "promotion_decision", json.dumps(record, default=float))
    client.set_registered_model_tag(name, "last_promotion", json.dumps(record, default=float))


def rollback(cfg: Config) -> Decision:
    """Move ``champion`` back to the champion before the current one."""
    client = setup(cfg)
    name = ranker_name(cfg.mlflow.model_prefix)
    history = _history(client, name)
    current = client.get_registered_model(name).aliases.get(CHAMPION)
    if current is None or len(history) < 2:
        raise ModelPairError(f"{name}: no previous champion to roll back to (history {history})")
    previous = history[-2]
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    decision = Decision(
        True, str(current), str(current), previous, f"rollback from {current} to {previous}", {}, {}, {}
    )
    _record(client, name, previous, decision)
    return decision
