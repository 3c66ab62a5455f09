"""MLflow set-up at the edge: where tracking and artifacts live, quiet defaults, run metadata.

Embedded default: a SQLite store and a local artifact folder under ``data.dir/mlflow`` (the file store
needs an opt-in in MLflow 3, and SQLite also gives the model registry). ``MLFLOW_TRACKING_URI`` or
``mlflow.tracking_uri`` points at a real server instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conf import Config
from ranker.loading import tracking_uri, use_store

__all__ = ["artifact_location", "git_commit", "setup", "tracking_uri", "ui_command"]


def artifact_location(cfg: Config) -> str | None:
    if os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow.tracking_uri:
        return None  # the server decides
    folder = (Path(cfg.data.dir) / "mlflow" / "artifacts").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def setup(cfg: Config):
    """Point MLflow at the configured store, create the experiment with its artifact folder, return a client."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    import mlflow
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    uri = tracking_uri(cfg)
    use_store(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if client.get_experiment_by_name(cfg.mlflow.experiment) is None:
        client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location(cfg))
    mlflow.set_experiment(cfg.mlflow.experiment)
    return client


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ui_command(cfg: Config) -> str:
    uri = tracking_uri(cfg)
    return f".venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
