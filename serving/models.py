"""The served pipeline and its two refreshes: a new model pair (the registry alias moved) and a new snapshot
version (``recrank events append`` committed one in the data folder).

Either kind of refresh loads the new pipeline beside the old one and swaps one reference. A request takes
``holder.current`` once and uses that pipeline to the end, so a swap never changes the models or the
features under an in-flight request and nothing is dropped: the old pipeline is freed when the last request
using it finishes. A failed load keeps the old pipeline serving and is reported on ``/readyz``. One lock
serialises both refreshes: a model reload and a snapshot swap never race (each would otherwise replace the
other's pipeline with one built from a stale half).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ranker.pipeline import OnlineSnapshot, RankingPipeline

log = logging.getLogger("recrank.serving")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _utc(ts: datetime) -> datetime:
    return ts if ts.utcoffset() is not None else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ServedSnapshot:
    """The snapshot version the current pipeline reads: its id, its time and when this process loaded it."""

    id: str | None
    as_of: datetime
    loaded_at: datetime

    @classmethod
    def of(cls, pipeline: RankingPipeline) -> ServedSnapshot:
        return cls(pipeline.versions.get("snapshot"), _utc(pipeline.snapshot.as_of), datetime.now(UTC))

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds from the snapshot's last event to ``now``: how stale the served features are."""
        return ((now or datetime.now(UTC)) - self.as_of).total_seconds()

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "as_of": self.as_of.isoformat(),
            "loaded_at": self.loaded_at.isoformat(timespec="milliseconds"),
            "age_s": round(self.age_s(), 3),
        }


@dataclass
class ModelState:
    """What ``/readyz`` and ``/version`` report."""

    alias: str
    versions: dict[str, str]
    loaded_at: str | None = None
    last_check: str | None = None
    reload_error: str | None = None
    snapshot: ServedSnapshot | None = None
    snapshot_check: str | None = None
    snapshot_error: str | None = None
    loads: dict[str, int] = dataclasses.field(default_factory=lambda: {"ok": 0, "failed": 0})  # model pairs
    snapshot_swaps: dict[str, int] = dataclasses.field(default_factory=lambda: {"ok": 0, "failed": 0})


@dataclass(frozen=True)
class SnapshotSource:
    """Where snapshot versions come from, injected like the model loader (tests need no data folder).

    ``current()``: the id of the committed version (polled: must be cheap); ``load(id)``: that version;
    ``check(pipeline, snapshot)``: raises when the served ranker must not read ``snapshot`` (another feature
    spec, another data set).
    """

    current: Callable[[], str | None]
    load: Callable[[str], OnlineSnapshot]
    check: Callable[[RankingPipeline, OnlineSnapshot], None]


def with_snapshot(pipeline: RankingPipeline, snapshot: OnlineSnapshot, snapshot_id: str) -> RankingPipeline:
    """``pipeline`` reading ``snapshot``: same booster and text model, its request-time index built now,
    before any request can reach it (the first request after a swap must not pay for it)."""
    new = dataclasses.replace(pipeline, snapshot=snapshot, versions={**pipeline.versions, "snapshot": snapshot_id})
    new.snapshot.index()
    return new


def folder_snapshots(data_dir: str | Path, fingerprint_of: Callable[[str], str | None]) -> SnapshotSource:
    """The snapshot versions of a data folder (``tables.json``), checked as a model load checks them.

    ``fingerprint_of(ranker_version)``: the data fingerprint that ranker was trained on (a registry tag), so a
    swap runs :func:`ranker.loading.check_snapshot` against the served ranker itself, not against the
    snapshot it happens to serve now. Looked up once per ranker version.
    """
    from ranker.loading import check_snapshot, current_snapshot, read_snapshot_version

    data_dir = Path(data_dir)
    fingerprints: dict[str, str | None] = {}

    def check(pipeline: RankingPipeline, snapshot: OnlineSnapshot) -> None:
        version = pipeline.versions.get("ranker", "?")
        if version not in fingerprints:
            fingerprints[version] = fingerprint_of(version)
        check_snapshot(pipeline.spec, fingerprints[version], snapshot, f"ranker version {version}", data_dir)

    return SnapshotSource(
        current=lambda: current_snapshot(data_dir),
        load=lambda snapshot_id: read_snapshot_version(data_dir, snapshot_id),
        check=check,
    )


class ModelHolder:
    """Holds the current :class:`RankingPipeline`; ``refresh`` moves it to the version the alias points at,
    ``refresh_snapshot`` to the data folder's current snapshot version.

    ``resolve()`` returns the ranker version behind the alias; ``load(version)`` builds its pipeline (over the
    data folder's current snapshot); ``snapshots`` (optional) is where new snapshot versions come from.
    All injected so tests can drive reloads without a registry or a data folder.
    """

    def __init__(
        self,
        alias: str,
        resolve: Callable[[], str],
        load: Callable[[str], RankingPipeline],
        snapshots: SnapshotSource | None = None,
    ) -> None:
        self._resolve = resolve
        self._load = load
        self._snapshots = snapshots
        self._lock = threading.Lock()  # one refresh of either kind at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: RankingPipeline | None = None
        self.state = ModelState(alias=alias, versions={})

    @property
    def ready(self) -> bool:
        return self.current is not None

    def _serve(self, pipeline: RankingPipeline) -> None:
        """The swap (one reference assignment), then what ``/readyz`` reports about it."""
        self.current = pipeline
        self.state.versions = dict(pipeline.versions)
        self.state.snapshot = ServedSnapshot.of(pipeline)

    def refresh(self) -> bool:
        """Load the alias's version if it differs from the served one; True when the served pair changed."""
        with self._lock:
            self.state.last_check = _now()
            try:
                version = self._resolve()
                if self.current is not None and self.current.versions.get("ranker") == version:
                    self.state.reload_error = None
                    return False
                pipeline = self._load(version)
            except Exception as exc:  # a bad registry state must not take the server down
                self.state.reload_error = f"{type(exc).__name__}: {exc}"
                self.state.loads["failed"] += 1
                log.error(
                    "model load failed; %s", "keeping the served pair" if self.ready else "not ready", exc_info=exc
                )
                return False
            self._serve(pipeline)
            self.state.loads["ok"] += 1
            self.state.loaded_at = _now()
            self.state.reload_error = None
            self.state.snapshot_error = None  # the new pair read the current snapshot and passed its check
            log.warning("serving ranker %s", pipeline.versions)
            return True

    def refresh_snapshot(self) -> bool:
        """Serve the data folder's current snapshot version if it differs from the served one; True on a swap.

        Nothing happens before a pair is loaded (that load reads the current snapshot itself). A version that
        fails to load or is refused by the check is retried at the next poll (a refused one fails again,
        cheaply visible on ``/readyz``); the served pipeline keeps serving meanwhile.
        """
        if self._snapshots is None:
            return False
        with self._lock:
            self.state.snapshot_check = _now()
            pipeline = self.current
            if pipeline is None:
                return False
            try:
                wanted = self._snapshots.current()
                if wanted is None or wanted == pipeline.versions.get("snapshot"):
                    self.state.snapshot_error = None
                    return False
                snapshot = self._snapshots.load(wanted)
                self._snapshots.check(pipeline, snapshot)
                new = with_snapshot(pipeline, snapshot, wanted)
            except Exception as exc:  # a bad snapshot must not take the server down
                self._snapshot_failed(exc)
                return False
            self._serve(new)
            self.state.snapshot_swaps["ok"] += 1
            self.state.snapshot_error = None
            log.warning("serving snapshot %s (as of %s)", wanted, snapshot.as_of.isoformat())
            return True

    def _snapshot_failed(self, exc: Exception) -> None:
        self.state.snapshot_swaps["failed"] += 1
        error = f"{type(exc).__name__}: {exc}"
        if error != self.state.snapshot_error:  # once per distinct failure, not at every poll
            log.error("snapshot load failed; keeping snapshot %s", self.state.versions.get("snapshot"), exc_info=exc)
        self.state.snapshot_error = error

    def start_polling(self, interval_s: float, snapshot_interval_s: float = 0.0) -> None:
        """Poll the alias every ``interval_s`` and the snapshot every ``snapshot_interval_s`` seconds (0 = never),
        each at its own pace, in one daemon thread (loads must not block requests)."""
        jobs = [(interval_s, self.refresh)]
        if self._snapshots is not None:
            jobs.append((snapshot_interval_s, self.refresh_snapshot))
        jobs = [(s, job) for s, job in jobs if s > 0]
        if not jobs or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, args=(jobs,), name="recrank-model-reload", daemon=True)
        self._thread.start()

    def _poll(self, jobs: list[tuple[float, Callable[[], bool]]]) -> None:
        due = [time.monotonic() + s for s, _ in jobs]
        while not self._stop.wait(max(0.0, min(due) - time.monotonic())):
            for k, (interval_s, job) in enumerate(jobs):
                if time.monotonic() >= due[k]:
                    try:
                        job()
                    except Exception:  # both catch their own load errors; this keeps the thread alive
                        log.exception("refresh failed")
                    due[k] = time.monotonic() + interval_s

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
