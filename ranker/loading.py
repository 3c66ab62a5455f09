"""Load the registered model pair behind an alias: ``<prefix>-ranker@alias``, then exactly the textmodel
version that ranker version pins (its ``textmodel_version`` tag). A half-finished promotion can therefore
never pair a ranker with a text model it was not trained on: a missing or unreadable pin fails loudly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conf import Config
from features.behaviour import FeatureSpec, OnlineSnapshot
from features.build import read_snapshot
from ranker.frame import RankerInputs
from ranker.pipeline import RankingPipeline

if TYPE_CHECKING:  # torch is imported only when a text model is loaded
    import torch

TEXTMODEL_TAG = "textmodel_version"


class ModelPairError(RuntimeError):
    """The registry does not hold a usable (ranker, textmodel) pair for the request."""


def tracking_uri(cfg: Config) -> str:
    """The MLflow store: ``MLFLOW_TRACKING_URI``, else ``mlflow.tracking_uri``, else SQLite under the data folder."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    db = (Path(cfg.data.dir) / "mlflow" / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def use_store(uri: str) -> None:
    """Point MLflow's module-level store at ``uri`` without leaving it in the environment.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` (and the registry one) into
    ``os.environ``; :func:`tracking_uri` would then read the *previous* store back as if the user had set
    it, and a second data folder in the same process would silently use the first one's registry.
    """
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def registry_client(cfg: Config):
    """A read-only-use MLflow client on the configured store (no experiment set-up: loading never logs)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    use_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ranker_name(prefix: str) -> str:
    return f"{prefix}-ranker"


def textmodel_name(prefix: str) -> str:
    return f"{prefix}-textmodel"


@dataclass
class RankerVersion:
    """A registered ranker version with what is needed to use it."""

    version: str
    booster: object
    inputs: RankerInputs
    spec: FeatureSpec
    textmodel_version: str | None
    data_fingerprint: str | None = None  # the data the ranker was trained on (its registry tag)


def load_ranker_version(client, prefix: str, version: str) -> RankerVersion:
    import mlflow.lightgbm
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    uri = f"models:/{ranker_name(prefix)}/{version}"
    try:
        mv = client.get_model_version(ranker_name(prefix), version)
        info = get_model_info(uri)
        meta = info.metadata or {}
        # A version registered before the scoring bundle is a bare mlflow.lightgbm booster: it still loads.
        booster = mlflow.lightgbm.load_model(uri) if "lightgbm" in info.flavors else _bundle_booster(uri)
    except MlflowException as exc:  # e.g. a registry entry whose artifact folder was deleted or moved
        raise ModelPairError(f"ranker {uri} is not available: {exc.message}") from None
    if "ranker_inputs" not in meta or "feature_spec" not in meta:
        raise ModelPairError(f"{uri}: model metadata lacks ranker_inputs/feature_spec (not logged by recrank?)")
    return RankerVersion(
        version=str(version),
        booster=booster,
        inputs=RankerInputs.from_json(meta["ranker_inputs"]),
        spec=FeatureSpec.from_json(meta["feature_spec"]),
        textmodel_version=mv.tags.get(TEXTMODEL_TAG),
        data_fingerprint=mv.tags.get("data_fingerprint"),
    )


def _bundle_booster(uri: str):
    """The booster of a ranker logged as a scoring-bundle pyfunc (``artifacts/bundle/booster.txt``)."""
    import mlflow.artifacts

    from ranker.mlflow_flavor import BUNDLE_KEY, read_bundle_folder

    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    folder = root / "artifacts" / BUNDLE_KEY
    if not folder.is_dir():
        raise ModelPairError(f"{uri}: neither a LightGBM model nor a recrank scoring bundle (no artifacts/bundle)")
    return read_bundle_folder(folder)[0]


class SnapshotMismatchError(ModelPairError):
    """The online snapshot was not built with the ranker's feature spec, or not from the data it was trained on."""


def check_snapshot(
    spec: FeatureSpec, fingerprint: str | None, snapshot: OnlineSnapshot, ranker: str, where: str | Path
) -> None:
    """Refuse to pair a ranker with a snapshot of another feature definition or another data set.

    A ranker trained with other click windows would fail every request on a missing column; a different CTR
    prior or history cap would silently skew every score. The snapshot's lineage is read from its
    ``online_meta.json``; one built in memory (tests) carries none and is not checked.
    """
    if snapshot.feature_spec is not None and snapshot.feature_spec != spec:
        raise SnapshotMismatchError(
            f"{ranker} was trained with feature spec {spec.to_json()}, but the online snapshot in {where} "
            f"was built with {snapshot.feature_spec.to_json()} (rebuild it: `recrank features build` with the "
            "ranker's config, or serve a ranker trained on it)"
        )
    known = fingerprint not in (None, "None") and snapshot.data_fingerprint not in (None, "None")
    if known and fingerprint != snapshot.data_fingerprint:
        raise SnapshotMismatchError(
            f"{ranker} was trained on data fingerprint {fingerprint}, but the online snapshot in {where} "
            f"(snapshot {snapshot.snapshot_id}) was built from data fingerprint {snapshot.data_fingerprint}"
        )


def current_snapshot(data_dir: str | Path) -> str | None:
    """The id of ``data_dir``'s committed snapshot version: what a pipeline loaded now would serve (cheap: one
    small JSON read, fit for polling)."""
    from features.store import current_snapshot_id

    return current_snapshot_id(data_dir)


def read_current_snapshot(data_dir: str | Path) -> OnlineSnapshot:
    """``data_dir``'s committed snapshot version, as a pipeline loaded now would read it."""
    return read_snapshot(data_dir)


def read_snapshot_version(data_dir: str | Path, snapshot_id: str) -> OnlineSnapshot:
    """Snapshot version ``snapshot_id`` of ``data_dir`` (``snapshots/<id>/``, or a legacy root-level one).

    By id, not "whatever is current when the read happens": a commit between a poll and the read must not
    serve one version under another's id.
    """
    from features.store import SNAPSHOTS_DIR

    folder = Path(data_dir) / SNAPSHOTS_DIR / snapshot_id
    snapshot = read_snapshot(folder if folder.is_dir() else data_dir)
    if snapshot.snapshot_id != snapshot_id:
        raise FileNotFoundError(f"{data_dir}: no snapshot version {snapshot_id} (found {snapshot.snapshot_id})")
    return snapshot


def ranker_fingerprint(client, prefix: str, version: str) -> str | None:
    """The data fingerprint ranker ``version`` was trained on (its registry tag), without loading the model."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(ranker_name(prefix), version).tags.get("data_fingerprint")
    except MlflowException as exc:
        raise ModelPairError(f"{ranker_name(prefix)} version {version} is not available: {exc.message}") from None


def textmodel_folder(client, prefix: str, version: str) -> Path:
    """Download (or find in the local artifact store) the trained folder of a textmodel version."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    name = textmodel_name(prefix)
    try:
        client.get_model_version(name, version)
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    except MlflowException as exc:
        raise ModelPairError(f"textmodel {name} version {version} is not available: {exc.message}") from None
    folder = root / "artifacts" / "textmodel"
    if not folder.is_dir():
        raise ModelPairError(f"models:/{name}/{version}: no artifacts/textmodel folder in the logged model")
    return folder


def resolve_alias(client, prefix: str, alias: str) -> str:
    """The ranker version behind ``<prefix>-ranker@alias`` (resolve once, then load by version: an alias
    that moves while a job runs must not change the models half-way through it)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(ranker_name(prefix), alias).version)
    except MlflowException as exc:
        raise ModelPairError(f"no {ranker_name(prefix)}@{alias}: {exc.message}") from None


def pair_versions(client, prefix: str, alias: str) -> dict[str, str | None]:
    """``{"ranker": v, "textmodel": pinned v or None}`` behind ``<prefix>-ranker@alias``, without loading models."""
    version = resolve_alias(client, prefix, alias)
    tags = client.get_model_version(ranker_name(prefix), version).tags
    return {"ranker": version, "textmodel": tags.get(TEXTMODEL_TAG)}


def load_pipeline(
    client,
    prefix: str,
    alias: str,
    data_dir: Path,
    cache_dir: Path,
    device: torch.device,
) -> RankingPipeline:
    """The ranking pipeline of ``<prefix>-ranker@alias`` and its pinned text model, over the online snapshot."""
    return load_pipeline_version(client, prefix, resolve_alias(client, prefix, alias), data_dir, cache_dir, device)


def load_pipeline_version(
    client,
    prefix: str,
    version: str,
    data_dir: Path,
    cache_dir: Path,
    device: torch.device,
    table_only: bool = False,
    runtime=None,
) -> RankingPipeline:
    """The ranking pipeline of ranker ``version`` and exactly the textmodel version it pins.

    ``table_only``: the text model without its backbone (catalogue items only: promotion, an ingress beside
    an encoder deployment), a fraction of the memory and load time.
    """
    ranker = load_ranker_version(client, prefix, version)
    text = None
    versions = {"ranker": str(version)}
    if ranker.inputs.uses_text:
        if not ranker.textmodel_version:
            raise ModelPairError(f"{ranker_name(prefix)} version {version} has no {TEXTMODEL_TAG} tag")
        text = _text_scorer(client, prefix, ranker.textmodel_version, cache_dir, device, table_only, runtime)
        versions["textmodel"] = ranker.textmodel_version
    snapshot = read_snapshot(data_dir)
    check_snapshot(ranker.spec, ranker.data_fingerprint, snapshot, f"{ranker_name(prefix)} version {version}", data_dir)
    if snapshot.snapshot_id:
        versions["snapshot"] = snapshot.snapshot_id
    return RankingPipeline(
        booster=ranker.booster,
        inputs=ranker.inputs,
        spec=ranker.spec,
        snapshot=snapshot,
        text=text,
        versions=versions,
    )


def device_for(cfg: Config, name: str | None = None) -> torch.device:
    """The torch device for ``name`` (default ``textmodel.train.device``): auto = CUDA when available."""
    from textmodel.model import resolve_device

    return resolve_device(name or cfg.textmodel.train.device)


def load_configured_pipeline(
    cfg: Config, version: str, device: torch.device | None = None, table_only: bool = False
) -> RankingPipeline:
    """The pipeline of ranker ``version`` with the store, data folder and model cache of ``cfg``.

    The one loader behind the API, batch scoring and the tests that compare them. ``table_only``: no
    backbone weights (items outside the text model's table must come with vectors encoded elsewhere).
    """
    from textmodel.artifact import TextRuntime

    return load_pipeline_version(
        registry_client(cfg),
        cfg.mlflow.model_prefix,
        version,
        Path(cfg.data.dir),
        Path(cfg.textmodel.cache_dir),
        device or device_for(cfg),
        table_only,
        TextRuntime.from_config(cfg.textmodel),  # this machine's knobs, not the ones the model was trained with
    )


def load_text_scorer(cfg: Config, textmodel_version: str, device: torch.device):
    """Just the text model of one registered version (the encoder deployment needs no ranker or snapshot)."""
    from textmodel.artifact import TextRuntime

    client, runtime = registry_client(cfg), TextRuntime.from_config(cfg.textmodel)  # this machine's knobs
    return _text_scorer(
        client, cfg.mlflow.model_prefix, textmodel_version, Path(cfg.textmodel.cache_dir), device, runtime=runtime
    )


def _text_scorer(
    client, prefix: str, version: str, cache_dir: Path, device: torch.device, table_only: bool = False, runtime=None
):
    from textmodel.artifact import load_text_model
    from textmodel.scoring import TextScorer

    folder = textmodel_folder(client, prefix, version)
    if table_only:  # the tokenizer still renders item text (for an encoder elsewhere); no backbone weights
        return TextScorer.table_only(folder, device, cache_dir)
    return TextScorer(load_text_model(folder, cache_dir, device, runtime), device)
