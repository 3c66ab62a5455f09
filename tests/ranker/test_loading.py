"""Which MLflow store a config points at, when one process works with several data folders."""

from __future__ import annotations

from conf import load_config
from ranker.loading import registry_client, tracking_uri


def test_each_data_folder_keeps_its_own_store(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = load_config(None, [f"data.dir={tmp_path / 'a'}"])
    second = load_config(None, [f"data.dir={tmp_path / 'b'}"])
    registry_client(first)  # mlflow.set_tracking_uri writes the env var: it must not leak into the next config
    assert tracking_uri(second) == f"sqlite:///{(tmp_path / 'b' / 'mlflow' / 'mlflow.db').resolve()}"
    assert registry_client(second).tracking_uri == tracking_uri(second)


def test_an_explicit_environment_store_wins(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    cfg = load_config(None, [f"data.dir={tmp_path}"])
    assert tracking_uri(cfg) == "http://mlflow.internal:5000"
