"""Serving follows the data folder: a new snapshot version is swapped in without a restart (issue #15 item 2).

Unit tests drive :class:`serving.models.ModelHolder` with injected sources (no data folder, no registry);
the last test runs the real wiring (registry holder, uvicorn in a thread) over a copy of the served world
while clients rank and a new snapshot version is committed.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from conf import Config, load_config
from features.behaviour import FeatureSpec, OnlineSnapshot, build_snapshot
from features.build import write_snapshot
from features.history import histories
from features.prepare import read_manifest
from features.schema import read_impressions, read_items
from features.store import commit, read_state, store_lock
from ranker.loading import SnapshotMismatchError, check_snapshot, read_snapshot_version
from ranker.pipeline import Candidate
from serving.app import build_app
from serving.models import ModelHolder, SnapshotSource, folder_snapshots

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)


@dataclass
class FakePipeline:
    """What the holder touches of a pipeline: its spec, snapshot and versions (no booster, no text model)."""

    spec: FeatureSpec
    snapshot: OnlineSnapshot
    versions: dict[str, str]


@pytest.fixture(scope="module")
def snapshots(tiny_world) -> dict[str, OnlineSnapshot]:
    """Versions s0 (all events), s1 (all but the last day), a wrong-spec and a wrong-data one."""
    items, impressions = tiny_world
    full = build_snapshot(impressions.lazy(), items.lazy(), SPEC)
    cut = impressions.filter(pl.col("ts") < impressions["ts"].max() - pl.duration(days=1))
    earlier = build_snapshot(cut.lazy(), items.lazy(), SPEC)
    other_spec = dataclasses.replace(SPEC, history_cap=SPEC.history_cap + 1)
    return {
        "s0": dataclasses.replace(full, snapshot_id="s0", feature_spec=SPEC, data_fingerprint="fp"),
        "s1": dataclasses.replace(earlier, snapshot_id="s1", feature_spec=SPEC, data_fingerprint="fp"),
        "spec": dataclasses.replace(earlier, snapshot_id="spec", feature_spec=other_spec, data_fingerprint="fp"),
        "data": dataclasses.replace(earlier, snapshot_id="data", feature_spec=SPEC, data_fingerprint="other"),
    }


class World:
    """An alias and a data folder in memory: tests move ``ranker`` and ``snapshot`` and count loads."""

    def __init__(self, snapshots: dict[str, OnlineSnapshot], snapshot_delay_s: float = 0.0) -> None:
        self.snapshots = snapshots
        self.ranker, self.snapshot = "1", "s0"
        self.snapshot_loads = 0
        self.snapshot_delay_s = snapshot_delay_s
        self.broken: set[str] = set()

    def load(self, version: str) -> FakePipeline:
        """A model load reads the folder's current snapshot, as :func:`ranker.loading.load_pipeline_version`."""
        snap = self.snapshots[self.snapshot]
        return FakePipeline(SPEC, snap, {"ranker": version, "snapshot": self.snapshot})

    def load_snapshot(self, snapshot_id: str) -> OnlineSnapshot:
        self.snapshot_loads += 1
        time.sleep(self.snapshot_delay_s)
        if snapshot_id in self.broken:
            raise OSError(f"snapshots/{snapshot_id}/online_user.parquet: truncated")
        return self.snapshots[snapshot_id]

    def check(self, pipeline: FakePipeline, snapshot: OnlineSnapshot) -> None:
        check_snapshot(pipeline.spec, "fp", snapshot, f"ranker version {pipeline.versions['ranker']}", "memory")

    def holder(self) -> ModelHolder:
        source = SnapshotSource(current=lambda: self.snapshot, load=self.load_snapshot, check=self.check)
        h = ModelHolder("champion", lambda: self.ranker, self.load, source)
        assert h.refresh()
        return h


def test_a_new_snapshot_version_is_swapped_in(snapshots) -> None:
    world = World(snapshots)
    holder = world.holder()
    before = holder.current
    world.snapshot = "s1"
    assert holder.refresh_snapshot()
    after = holder.current
    assert after is not before and after.snapshot is snapshots["s1"]
    assert after.versions == {"ranker": "1", "snapshot": "s1"}
    assert before.versions == {"ranker": "1", "snapshot": "s0"}  # a request holding it still reads s0
    assert after.snapshot._index is not None  # warmed before the swap, not by the first request
    served = holder.state.snapshot
    assert served.id == "s1" and served.as_of == snapshots["s1"].as_of
    assert served.age_s() == pytest.approx((datetime.now(UTC) - snapshots["s1"].as_of).total_seconds(), abs=5)
    assert holder.state.versions["snapshot"] == "s1" and holder.state.snapshot_error is None


def test_the_same_version_is_not_reloaded(snapshots) -> None:
    world = World(snapshots)
    holder = world.holder()
    served = holder.current
    assert holder.refresh_snapshot() is False and holder.refresh_snapshot() is False
    assert holder.current is served and world.snapshot_loads == 0


def test_a_failed_load_keeps_the_served_snapshot_and_is_reported(snapshots) -> None:
    world = World(snapshots)
    holder = world.holder()
    world.broken.add("s1")
    world.snapshot = "s1"
    assert holder.refresh_snapshot() is False
    assert holder.current.versions["snapshot"] == "s0" and holder.state.snapshot.id == "s0"
    ready = TestClient(build_app(load_config(None, []).serving, holder)).get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["snapshot"]["id"] == "s0" and "truncated" in ready.json()["snapshot_error"]
    world.broken.clear()  # retried at the next poll
    assert holder.refresh_snapshot() and holder.current.versions["snapshot"] == "s1"
    assert holder.state.snapshot_error is None


@pytest.mark.parametrize(("version", "message"), [("spec", "feature spec"), ("data", "data fingerprint")])
def test_a_snapshot_the_ranker_was_not_trained_for_is_refused(snapshots, version: str, message: str) -> None:
    world = World(snapshots)
    holder = world.holder()
    world.snapshot = version
    assert holder.refresh_snapshot() is False
    assert holder.current.versions["snapshot"] == "s0"
    assert "SnapshotMismatchError" in holder.state.snapshot_error and message in holder.state.snapshot_error


def test_a_model_reload_and_a_snapshot_swap_never_race(snapshots) -> None:
    """A slow snapshot swap (ranker 1 + s1) must not overwrite a model reload that starts during it: the
    reload waits, then loads ranker 2 over the current snapshot."""
    world = World(snapshots, snapshot_delay_s=0.4)
    holder = world.holder()
    world.snapshot = "s1"
    swap = threading.Thread(target=holder.refresh_snapshot)
    swap.start()
    time.sleep(0.1)  # the swap holds the lock, loading s1
    world.ranker = "2"
    assert holder.refresh()  # blocks until the swap is done
    swap.join()
    assert holder.current.versions == {"ranker": "2", "snapshot": "s1"}
    assert holder.state.snapshot.id == "s1" and holder.refresh_snapshot() is False


def test_polling_follows_the_snapshot_without_polling_the_alias(snapshots) -> None:
    world = World(snapshots)
    holder = world.holder()
    holder.start_polling(0, 0.05)  # alias never polled, snapshot every 50 ms
    try:
        world.snapshot = "s1"
        assert _within(2.0, lambda: holder.current.versions["snapshot"] == "s1")
        assert holder.state.last_check is not None and holder.state.snapshot_check is not None
    finally:
        holder.stop()
    idle = World(snapshots).holder()
    idle.start_polling(0, 0)
    assert idle._thread is None


def test_folder_snapshots_read_versions_by_id_and_check_the_rankers_lineage(snapshots, tmp_path: Path) -> None:
    plain = dataclasses.replace(snapshots["s0"], snapshot_id=None, feature_spec=None, data_fingerprint=None)
    sid = write_snapshot(plain, tmp_path, SPEC, "fp-1")
    commit(tmp_path, read_state(tmp_path).next(snapshot=sid, snapshots=(sid,)))
    pipeline = FakePipeline(SPEC, snapshots["s0"], {"ranker": "3"})
    asked: list[str] = []

    def fingerprint(version: str) -> str:
        asked.append(version)
        return "fp-1"

    source = folder_snapshots(tmp_path, fingerprint)
    assert source.current() == sid
    loaded = source.load(sid)
    assert loaded.snapshot_id == sid and loaded.as_of == plain.as_of
    source.check(pipeline, loaded)
    source.check(pipeline, loaded)
    assert asked == ["3"]  # one registry look-up per ranker version
    with pytest.raises(SnapshotMismatchError, match="data fingerprint"):
        folder_snapshots(tmp_path, lambda v: "fp-2").check(pipeline, loaded)
    with pytest.raises(FileNotFoundError, match="no snapshot version 0123abcd"):
        read_snapshot_version(tmp_path, "0123abcd")


# --- a server under traffic while a new version is committed ---------------------------------------------


def commit_earlier_snapshot(data_dir: Path, spec: FeatureSpec, hours: int) -> tuple[str, OnlineSnapshot]:
    """Build a snapshot over every event but the last ``hours`` and commit it as the current version (what
    ``recrank events append`` does with new events, here with fewer: the id differs just the same)."""
    impressions = read_impressions(data_dir)
    impressions = impressions.filter(pl.col("ts") < pl.col("ts").max() - pl.duration(hours=hours))
    snapshot = build_snapshot(impressions, read_items(data_dir), spec)
    snapshot.users = histories(impressions, snapshot.users.lazy(), spec.history_cap).collect()
    with store_lock(data_dir):
        sid = write_snapshot(snapshot, data_dir, spec, read_manifest(data_dir)["fingerprint"])
        state = read_state(data_dir)
        commit(data_dir, state.next(snapshot=sid, snapshots=(*state.snapshots, sid)))
    return sid, snapshot


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def own_world(served_world: Config, tmp_path: Path) -> Config:
    """The served world's data folder copied (its registry too): this test commits into it; others read theirs."""
    cfg = served_world.model_copy(deep=True)
    shutil.copytree(served_world.data.dir, tmp_path / "d")
    cfg.data.dir = tmp_path / "d"
    cfg.serving.reload_interval_s = 0
    cfg.serving.snapshot_refresh_s = 0.2
    return cfg


@pytest.mark.integration
def test_a_server_under_traffic_follows_a_new_snapshot_and_fails_nothing(own_world: Config, serve_app) -> None:
    from features.build import read_snapshot
    from features.store import current_snapshot_id
    from ranker.loading import load_configured_pipeline
    from serving.hosts import start_holder

    cfg = own_world
    old_id = current_snapshot_id(cfg.data.dir)
    holder = start_holder(cfg)  # the real wiring: registry pair + the folder's snapshot versions, polled
    try:
        assert holder.ready and holder.current.versions["snapshot"] == old_id
        snap = holder.current.snapshot
        users = [u for u in snap.users["user_id"].to_list() if holder.current.history(u)][:3]
        items = snap.items["item_id"].head(10).to_list()
        seen: list[tuple[float, float, int, str]] = []  # (sent, answered, status, snapshot id) per request
        stop = threading.Event()

        with serve_app(build_app(cfg.serving, holder)) as url:

            def traffic(user: str) -> None:
                with httpx.Client(base_url=url, timeout=10) as http:
                    while not stop.is_set():
                        sent = time.monotonic()
                        r = http.post("/rank", json={"user_id": user, "candidates": items})
                        sid = r.json().get("versions", {}).get("snapshot", "?") if r.status_code == 200 else "?"
                        seen.append((sent, time.monotonic(), r.status_code, sid))

            clients = [threading.Thread(target=traffic, args=(u,)) for u in users]
            for t in clients:
                t.start()
            time.sleep(0.8)
            committing = time.monotonic()
            new_id, new_snapshot = commit_earlier_snapshot(cfg.data.dir, holder.current.spec, hours=24)
            committed = time.monotonic()
            swapped = _within(5.0, lambda: any(s == new_id for *_, s in seen))
            time.sleep(0.6)
            stop.set()
            for t in clients:
                t.join()
            ready = httpx.get(f"{url}/readyz").json()
            version = httpx.get(f"{url}/version").json()
            after = httpx.post(f"{url}/rank", json={"user_id": users[0], "candidates": items}).json()
    finally:
        holder.stop()

    assert new_id != old_id and swapped, seen[-5:]
    assert {status for *_, status, _ in seen} == {200}, [x for x in seen if x[2] != 200][:5]
    assert {sid for *_, sid in seen} == {old_id, new_id}
    assert all(sid == old_id for sent, _, _, sid in seen if sent < committing)
    first_new = min(done for _, done, _, sid in seen if sid == new_id)
    assert first_new - committed < cfg.serving.snapshot_refresh_s + 2.0  # one poll interval and a load
    assert all(sid == new_id for sent, _, _, sid in seen if sent > first_new)  # no way back once swapped
    assert sum(sid == new_id for *_, sid in seen) >= len(users)
    assert ready["versions"]["snapshot"] == new_id and ready["snapshot_error"] is None
    assert ready["snapshot"]["id"] == new_id and ready["snapshot"]["as_of"] == new_snapshot.as_of.isoformat()
    age = (datetime.now(UTC) - new_snapshot.as_of).total_seconds()
    assert ready["snapshot"]["age_s"] == pytest.approx(age, abs=30)
    assert version["models"]["snapshot"] == new_id and version["snapshot"]["as_of"] == ready["snapshot"]["as_of"]
    # The swapped pipeline scores as a fresh model load over the new version would (the same floats).
    fresh = load_configured_pipeline(cfg, "1")
    assert fresh.versions["snapshot"] == new_id and read_snapshot(cfg.data.dir).snapshot_id == new_id
    want = fresh.score(users[0], [Candidate(i) for i in items]).tolist()
    got = {x["item_id"]: x["score"] for x in after["items"]}
    assert [got[i] for i in items] == want and after["versions"]["snapshot"] == new_id
