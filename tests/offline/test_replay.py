"""``recrank replay``: the daily loop serves, appends, gates and retrains; it resumes where it was killed."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import SERVED_RANKER_OVERRIDES
from sample_data import TINY_SYNTHETIC

import offline.replay as replay_module
from conf import load_config
from features import read_impressions
from offline.cli import main
from offline.replay import ReplayState, replay

ARGS = [*TINY_SYNTHETIC, "ranker.use_text=false", *SERVED_RANKER_OVERRIDES, "replay.days=3"]
ARGS += ["replay.retrain_every_days=1", "replay.val_days=2"]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> tuple[Path, ReplayState, list[ReplayState]]:
    """A 3-day replay killed once in its last day, then resumed."""
    root = tmp_path_factory.mktemp("replay")
    args = [*ARGS, f"data.dir={root / 'd'}"]
    assert main(["data", "prepare", *args]) == 0
    cfg = load_config(None, args)
    real, seen = replay_module.run_day, []

    def killed_in_day_3(cfg, folder, state, index, progress=True):
        if index == 2 and not seen:
            seen.append(ReplayState(**json.loads((folder / "state.json").read_text())))
            replay_module._append_day(cfg, folder, state.window[index])  # it got as far as the append
            raise KeyboardInterrupt
        return real(cfg, folder, state, index, progress)

    replay_module.run_day = killed_in_day_3
    try:
        with pytest.raises(KeyboardInterrupt):
            replay(cfg, progress=False)
    finally:
        replay_module.run_day = real
    state, _ = replay(cfg, progress=False)
    return root, state, seen


def test_every_day_is_served_appended_and_reported(replayed) -> None:
    root, state, _ = replayed
    folder = root / "d-replay"
    assert state.done == state.window and len(state.daily) == 3
    first = state.daily[0]
    assert first["refreshed"] == first["frozen"]  # day one: the refreshed snapshot is still the frozen one
    assert first["refreshed_snapshot_as_of"] == first["frozen_snapshot_as_of"]
    assert state.daily[2]["refreshed_snapshot_as_of"] > state.daily[1]["refreshed_snapshot_as_of"]
    source = read_impressions(root / "d").collect()
    assert read_impressions(folder / "data").collect().height == source.height  # every day appended once
    days = [d["day"] for d in state.daily]
    served = [d["impressions"] for d in state.daily]
    day = source["ts"].dt.date().cast(pl.String)
    assert served == [source.filter(day == d)["impression_id"].n_unique() for d in days]
    report = (folder / "report.md").read_text()
    assert "AUC refreshed" in report and "Promotion decisions" in report and (folder / "replay.png").stat().st_size
    window = json.loads((folder / "replay.json").read_text())["window"]
    assert window["impressions"] == sum(served)


def test_each_challenger_is_gated_on_a_day_neither_model_trained_on(replayed) -> None:
    _, state, _ = replayed
    gated = [d for d in state.decisions if d["day"] is not None]
    assert [d["day"] for d in gated] == state.window[1:]
    trained = {t["ranker"]: t for t in state.trainings}
    for decision in gated:
        training = trained[decision["challenger"]]
        assert training["cutoff"] <= decision["day"] + "T00:00:00+00:00"  # trained before the gated day
        assert decision["challenger_metrics"]["impressions"] == next(
            d["impressions"] for d in state.daily if d["day"] == decision["day"]
        )


def test_a_killed_replay_resumes_at_the_day_it_was_in(replayed) -> None:
    _, state, seen = replayed
    assert seen and seen[0].done == state.window[:2]  # killed in day 3 with two days done
    assert state.daily[2]["append"]["rows"] == 0 and state.daily[2]["append"]["skipped_rows"] > 0


@pytest.mark.slow
def test_a_replay_with_the_text_model_warm_starts_each_challenger(tmp_path: Path, model_cache: Path) -> None:
    """Two days with the tiny text model: the challenger's text model starts from the champion's, on the new days."""
    from sample_data import TEXT_OVERRIDES

    from ranker.loading import registry_client

    args = [*TINY_SYNTHETIC, *TEXT_OVERRIDES, *SERVED_RANKER_OVERRIDES, f"data.dir={tmp_path / 'd'}"]
    args += [f"textmodel.cache_dir={model_cache}", "replay.days=2", "replay.retrain_every_days=1", "replay.val_days=2"]
    assert main(["data", "prepare", *args]) == 0
    state, _ = replay(load_config(None, args), progress=False)
    training = state.trainings[1]
    assert training["warm_start"] and training["since"] is not None
    folder = tmp_path / "d-replay" / "data"
    meta = json.loads((folder / "textmodel" / "textmodel.json").read_text())
    assert meta["parent_version"] == "1" and meta["train_window"]["since"].startswith(training["since"][:10])
    phases = {e["phase"] for e in meta["train"]["epochs"]}
    assert phases == {"init", "fine-tune"}  # no probe: the towers came from the parent
    cfg = load_config(None, [*args, f"data.dir={folder}"])
    client = registry_client(cfg)
    assert client.get_model_version("recrank-textmodel", "2").tags["parent_version"] == "1"
    assert [d["day"] for d in state.decisions] == [None, state.window[1]]
