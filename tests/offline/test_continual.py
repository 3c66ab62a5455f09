"""`recrank textmodel train --warm-start champion|VERSION --since TIME` against a local SQLite registry: the
champion's pinned text model seeds the run, the registered child carries ``parent_version``, a refused parent
writes nothing, and ``since`` trains on the later train rows only while every row is still scored."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC

from conf import load_config
from offline import registry
from offline.cli import main
from offline.textmodel_stage import INTEREST_FILE, model_dir
from offline.tracking import setup
from ranker.loading import TEXTMODEL_TAG, ranker_name, textmodel_name

pytestmark = pytest.mark.integration

FAST = ["textmodel.train.oof_folds=0", "textmodel.train.probe_epochs=2", "textmodel.train.epochs=1"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory, model_cache: Path) -> list[str]:
    """A tiny world with textmodel version 1 registered and a champion ranker pinning it.

    The champion is a copy of the textmodel version under the ranker's name with the pin tag: ``champion``
    resolution reads only the alias and the tag, so no ranker needs to be trained for it.
    """
    root = tmp_path_factory.mktemp("continual")
    args = [*TINY_SYNTHETIC, f"data.dir={root / 'd'}", f"textmodel.cache_dir={model_cache}", *TEXT_OVERRIDES, *FAST]
    for step in (["data", "prepare"], ["features", "build"], ["textmodel", "train"]):
        assert main([*step, *args]) == 0
    cfg = load_config(None, args)
    client = setup(cfg)
    assert registry.register_textmodel(cfg, model_dir(cfg)) == "1"
    prefix = cfg.mlflow.model_prefix
    champion = client.copy_model_version(f"models:/{textmodel_name(prefix)}/1", ranker_name(prefix))
    client.set_model_version_tag(ranker_name(prefix), champion.version, TEXTMODEL_TAG, "1")
    client.set_registered_model_alias(ranker_name(prefix), "champion", champion.version)
    return args


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` but the registry, with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "mlflow" not in p.relative_to(folder).parts
    }


def test_warm_start_from_champion_on_a_window_registers_the_parent(registered: list[str], capsys) -> None:
    cfg = load_config(None, registered)
    data = Path(cfg.data.dir)
    features = pl.read_parquet(data / "features.parquet")
    train = features.filter(pl.col("split") == "train")
    since = train["ts"].sort()[train.height // 2]
    assert main(["textmodel", "train", "--warm-start", "champion", "--since", since.isoformat(), *registered]) == 0
    capsys.readouterr()
    meta = json.loads((model_dir(cfg) / "textmodel.json").read_text())
    assert meta["parent_version"] == "1"
    assert meta["warm_start"]["from"] == "champion" and meta["warm_start"]["parent_version"] == "1"
    assert [e["phase"] for e in meta["train"]["epochs"]] == ["init", "fine-tune"]  # no probe: parent's towers
    later = train.filter(pl.col("ts") >= since)
    window, selection = meta["train_window"], meta["selection"]
    # the window's latest impressions select the model and are not trained on
    assert window["rows"] + selection["rows"] == later.height < window["split_rows"] == train.height
    assert window["impressions"] + selection["impressions"] == later["impression_id"].n_unique()
    assert meta["export"]["exported"] == "trained"  # warm-started: no probe of its own to compare with
    assert meta["config"]["train"]["since"] == since.isoformat().replace("+00:00", "Z")
    # Every split is still scored (the ranker fits on the earlier train rows too).
    assert pl.read_parquet(data / INTEREST_FILE).height == features.height
    client = setup(cfg)
    version = registry.register_textmodel(cfg, model_dir(cfg))
    name = textmodel_name(cfg.mlflow.model_prefix)
    mv = client.get_model_version(name, version)
    assert version == "2" and mv.tags[registry.PARENT_TAG] == "1"
    assert client.get_run(mv.tags["run_id"]).data.params[registry.PARENT_TAG] == "1"
    assert registry.PARENT_TAG not in client.get_model_version(name, "1").tags  # trained from scratch


@pytest.mark.parametrize(
    ("overrides", "version", "message"),
    [
        (
            ["textmodel.peft.r=2"],
            "1",
            "warm start from textmodel version 1: textmodel.peft.r differs: parent 4, configured 2",
        ),
        (["textmodel.dim=8"], "1", "textmodel.dim differs: parent 16, configured 8"),
        ([], "99", "version 99 is not available"),
    ],
)
def test_a_refused_warm_start_writes_nothing(
    registered: list[str], overrides: list[str], version: str, message: str, capsys
) -> None:
    data = Path(load_config(None, registered).data.dir)
    before = _files(data)
    capsys.readouterr()
    assert main(["textmodel", "train", *registered, *overrides, "--warm-start", version]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert _files(data) == before


def test_warm_start_without_a_registry_creates_none(tmp_path: Path, registered: list[str], capsys) -> None:
    empty = tmp_path / "nodata"
    assert main(["textmodel", "train", *registered, f"data.dir={empty}", "--warm-start", "champion"]) == 2
    assert "no model registry at" in capsys.readouterr().err and not empty.exists()
