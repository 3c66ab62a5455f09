"""Log both models to MLflow, register them, and move the ``champion`` alias: promote and roll back.

Each registered version carries params, metrics, a signature, an input example, the data fingerprint
and the git commit. A ranker version is tagged ``textmodel_version`` with the text model whose scores it
was trained on; serving loads exactly that pair (:mod:`ranker.loading`).

Promotion compares a challenger (the newest ranker version unless named) with the champion on the same test
impressions (paired bootstrap) and moves ``champion`` only when :mod:`offline.gate`'s rule says the evidence is
there, or with ``force``. Every decision is recorded as tags: who, when, the rule, both metric sets, the gain's
interval, the impressions. ``rollback`` moves ``champion`` back to the previous champion and records itself on
the registered model.
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
from offline.gate import PROMOTED, compare_versions, gate_rule
from offline.tracking import git_commit, setup
from ranker.loading import TEXTMODEL_TAG, ModelPairError, ranker_name, textmodel_name

CHAMPION, CHALLENGER = "champion", "challenger"
PARENT_TAG = "parent_version"  # a warm-started textmodel version: the version it was started from
HISTORY_TAG = "champion_history"  # JSON list of champion versions, oldest first (the newest history_keep)
ROLLBACKS_TAG = "rollbacks"  # JSON list of rollback records, oldest first (the newest history_keep)


def _flat(prefix: str, obj: object) -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: obj if not isinstance(obj, list | tuple) else json.dumps(obj)}


# What a registered model runs, so that it loads in a fresh environment built from its own files: the recrank
# packages on its import path (MLflow's code_paths: no checkout needed) and their third-party imports, pinned to
# this environment's versions (torch's local "+cpu" build included: PyPI's default torch wheel is the CUDA one).
CODE_PACKAGES = ("conf", "runtime", "features", "textmodel", "ranker")
REQUIREMENTS = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "safetensors",
    "gguf",
    "polars",
    "pyarrow",
    "numpy",
    "pandas",
    "pydantic",
    "PyYAML",
    "tqdm",
    "lightgbm",
    "mlflow",
)


def model_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in REQUIREMENTS]


def code_paths() -> list[str]:
    import importlib

    return [str(Path(importlib.import_module(p).__file__).parent) for p in CODE_PACKAGES]


def backbone_artifact(textmodel_folder: Path) -> dict[str, str]:
    """The artifact that rebuilds a text model's backbone anywhere (:func:`textmodel.backbone.backbone_source`)."""
    from textmodel.backbone import backbone_source
    from textmodel.mlflow_flavor import BACKBONE_KEY

    source = backbone_source(json.loads((Path(textmodel_folder) / "textmodel.json").read_text())["config"]["backbone"])
    return {BACKBONE_KEY: str(source)} if source is not None else {}


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
            artifacts={ARTIFACT_KEY: str(folder), **backbone_artifact(folder)},
            signature=signature,
            input_example=example,
            pip_requirements=model_requirements(),
            code_paths=code_paths(),
            model_config={"cache_dir": str(Path(cfg.textmodel.cache_dir).resolve())},
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
            text_folder = textmodel_folder(client, cfg.mlflow.model_prefix, str(textmodel_version))
            artifacts.update({TEXTMODEL_KEY: str(text_folder), **backbone_artifact(text_folder)})
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
            pip_requirements=model_requirements(),
            code_paths=code_paths(),
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
    """A gate's decision on one challenger, as recorded on the version and the registered model."""

    promoted: bool
    challenger: str
    champion_before: str | None
    champion_after: str | None
    reason: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    gain: dict[str, float]
    verdict: str = ""  # offline.gate's verdict, or "first", "current", "forced"
    rule: str = ""
    impressions: int = 0

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Rollback:
    """A rollback, recorded on the registered model (never on a version's promotion record)."""

    by: str
    at: str
    from_version: str
    to_version: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _history(client, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _set_champion(client, name: str, version: str, keep: int) -> None:
    """Move the alias and append to the champion history (the newest ``keep`` entries)."""
    history = _history(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version][-keep:]))


def promote(cfg: Config, force: bool = False, challenger: str | None = None) -> Decision:
    """Judge ``challenger`` (default: the newest ranker version) against the champion on the same test
    impressions under :class:`offline.gate.GateRule`; move ``champion`` when the rule says so, or with
    ``force``. The decision is recorded on the challenger's version and on the registered model."""
    client = setup(cfg)
    name = ranker_name(cfg.mlflow.model_prefix)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if not versions:
        raise ModelPairError(f"no versions of {name} registered yet (run `recrank pipeline` or `recrank register`)")
    challenger = str(versions[-1]) if challenger is None else str(challenger)
    if challenger not in {str(v) for v in versions}:
        raise ModelPairError(f"{name}: --challenger {challenger} is not a registered version (have {versions})")
    champion = client.get_registered_model(name).aliases.get(CHAMPION)
    rule = gate_rule(cfg)
    keep = cfg.mlflow.history_keep
    if champion is None:
        client.set_registered_model_alias(name, CHALLENGER, challenger)
        _set_champion(client, name, challenger, keep)
        decision = Decision(
            True, challenger, None, challenger, "no champion yet: first promotion", {}, {}, {}, "first", rule.describe()
        )
        _record(client, name, challenger, decision)
        return decision
    if str(champion) == challenger:
        reason = f"version {challenger} is the champion already"
        return Decision(False, challenger, str(champion), str(champion), reason, {}, {}, {}, "current", rule.describe())
    client.set_registered_model_alias(name, CHALLENGER, challenger)
    gain, impressions, summary = compare_versions(cfg, client, challenger, str(champion))
    verdict, reason = rule.judge(gain, impressions)
    promoted = verdict == PROMOTED or force
    if force and verdict != PROMOTED:
        verdict, reason = "forced", f"forced over '{verdict}': {reason}"
    if promoted:
        _set_champion(client, name, challenger, keep)
    decision = Decision(
        promoted,
        challenger,
        str(champion),
        challenger if promoted else str(champion),
        reason,
        summary[challenger],
        summary[str(champion)],
        {"mean": gain.mean, "low": gain.low, "high": gain.high},
        verdict,
        rule.describe(),
        impressions,
    )
    _record(client, name, challenger, decision)
    return decision


def _record(client, name: str, version: str, decision: Decision) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"by": getpass.getuser(), "at": stamp, **decision.to_json()}
    client.set_model_version_tag(name, version, "promotion_decision", json.dumps(record, default=float))
    client.set_registered_model_tag(name, "last_promotion", json.dumps(record, default=float))


def rollback(cfg: Config, reason: str | None = None) -> Rollback:
    """Move ``champion`` back to the champion before the current one, and record who, when, from, to and why
    on the registered model (``rollbacks``: the newest ``mlflow.history_keep``; ``last_rollback``) and as the
    demoted version's ``rolled_back`` tag. No version's promotion record is touched."""
    client = setup(cfg)
    name = ranker_name(cfg.mlflow.model_prefix)
    history = _history(client, name)
    current = client.get_registered_model(name).aliases.get(CHAMPION)
    if current is None or len(history) < 2:
        raise ModelPairError(f"{name}: no previous champion to roll back to (history {history})")
    previous = history[-2]
    record = Rollback(
        by=getpass.getuser(),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        from_version=str(current),
        to_version=previous,
        reason=reason or "manual rollback",
    )
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    tags = client.get_registered_model(name).tags
    records = [*json.loads(tags.get(ROLLBACKS_TAG, "[]")), record.to_json()][-cfg.mlflow.history_keep :]
    client.set_registered_model_tag(name, ROLLBACKS_TAG, json.dumps(records))
    client.set_registered_model_tag(name, "last_rollback", json.dumps(record.to_json()))
    client.set_model_version_tag(name, str(current), "rolled_back", json.dumps(record.to_json()))
    return record
