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
    gated = [d for d in state.decisions if d["day"] is not None and d["verdict"] != "superseded"]
    assert [d["day"] for d in gated] == state.window[1:]
    trained = {t["ranker"]: t for t in state.trainings}
    for decision in gated:
        training = trained[decision["challenger"]]
        assert training["cutoff"] <= decision["day"] + "T00:00:00+00:00"  # trained before the gated day
        assert decision["since"] == training["cutoff"]  # judged on every day since its cut-off: here, one
        assert decision["verdict"] in ("promoted", "refused", "not enough evidence")
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


def test_an_undecided_challenger_is_judged_again_on_every_day_since_its_cut_off(tmp_path: Path, monkeypatch) -> None:
    """The gate's state machine (the models and the registry stubbed): 'not enough evidence' keeps the challenger
    pending, and its next gate pools the days from its cut-off; a decided one is not judged again; a challenger
    still pending when a new one is trained is recorded as superseded."""

    from offline import registry
    from offline.gate import INSUFFICIENT, PROMOTED, REFUSED
    from offline.registry import Decision

    cfg = load_config(None, [*ARGS, f"data.dir={tmp_path / 'd'}", "replay.retrain_every_days=2"])
    window = ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04", "2020-01-05"]
    state = ReplayState(window=window, pending="2", pending_since="2020-01-01T00:00:00+00:00")
    verdicts = iter([INSUFFICIENT, PROMOTED, INSUFFICIENT, INSUFFICIENT, REFUSED])
    judged: list[str] = []

    def promote(cfg, force=False, challenger=None):
        judged.append(challenger)
        verdict = next(verdicts)
        return Decision(verdict == PROMOTED, challenger, "1", "1", verdict, {}, {}, {}, verdict, "rule", 10)

    def serve(cfg, folder, date):
        return {"day": date}, {"refreshed": pl.DataFrame({"a": [1]})}

    monkeypatch.setattr(replay_module, "serve_day", serve)
    monkeypatch.setattr(replay_module, "_append_day", lambda cfg, folder, date: {})
    monkeypatch.setattr(replay_module, "_set_cutoffs", lambda cfg, start: None)
    monkeypatch.setattr(replay_module, "_train_and_register", lambda cfg, warm, since, p: (str(3 + len(judged)), warm))
    monkeypatch.setattr(registry, "promote", promote)
    for index in range(5):
        replay_module.run_day(cfg, tmp_path, state, index, progress=False)
    # day 1: v2 undecided; day 2: v2 judged on days 1-2, promoted; v5 trained at day 2's end; days 3 and 4: v5
    # undecided on day 3, then on days 3-4; v7 trained at day 4's end supersedes it; day 5: v7 refused.
    assert judged == ["2", "2", "5", "5", "7"]
    got = [(d["challenger"], d["verdict"], d.get("since")) for d in state.decisions]
    assert got == [
        ("2", INSUFFICIENT, "2020-01-01T00:00:00+00:00"),
        ("2", PROMOTED, "2020-01-01T00:00:00+00:00"),
        ("5", INSUFFICIENT, "2020-01-03T00:00:00+00:00"),
        ("5", INSUFFICIENT, "2020-01-03T00:00:00+00:00"),
        ("5", "superseded", None),
        ("7", REFUSED, "2020-01-05T00:00:00+00:00"),
    ]
    assert state.pending is None and state.pending_since is None
