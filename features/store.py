"""The data folder's committed state: which table parts and which snapshot version are current.

``recrank data prepare`` writes one file per table; ``recrank events append`` never rewrites them: each
append adds a *part* (``parts/<id>/impressions.parquet``, ``features.parquet`` and, when new products
come with it, ``items.parquet``) and an immutable snapshot version (``snapshots/<snapshot_id>/``, named
by its content hash). ``tables.json`` lists the parts of each table and the current snapshot; replacing
it (write a temporary file, rename) is the one atomic step of a commit. A crash before that rename
leaves the old state whole (the orphan files are swept by the next commit); a reader always sees one
committed state. A folder without ``tables.json`` (written before parts existed) is its single files
and its root-level snapshot.

Writers hold :func:`store_lock` (an exclusive ``flock`` on ``.store.lock``): a second append or build
started meanwhile fails at once with :class:`StoreLockedError` instead of interleaving commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from features.io import write_json_atomic

STORE_FILE = "tables.json"
LOCK_FILE = ".store.lock"
PARTS_DIR = "parts"
SNAPSHOTS_DIR = "snapshots"
BASE_FILES = {"items": "items.parquet", "impressions": "impressions.parquet", "features": "features.parquet"}
TABLES = tuple(BASE_FILES)


class StoreLockedError(RuntimeError):
    """Another append or build holds the data folder."""


@dataclass(frozen=True)
class StoreState:
    """One committed state of a data folder (what ``tables.json`` holds).

    ``tables``: each table's files, relative to the folder, base file first. ``snapshot``: the current
    snapshot version (folder ``snapshots/<id>``; None: the legacy root-level files). ``snapshots``: the
    retained versions, oldest first. ``last_ts``: the newest event time committed (ISO, UTC).
    ``appends``: one entry per committed append (part, rows, time span), the folder's event log.
    """

    version: int = 0
    tables: dict[str, tuple[str, ...]] = field(default_factory=lambda: {t: (f,) for t, f in BASE_FILES.items()})
    snapshot: str | None = None
    snapshots: tuple[str, ...] = ()
    last_ts: str | None = None
    appends: tuple[dict[str, object], ...] = ()

    def to_json(self) -> dict[str, object]:
        raw = asdict(self)
        raw["tables"] = {t: list(files) for t, files in self.tables.items()}
        raw["snapshots"] = list(self.snapshots)
        raw["appends"] = list(self.appends)
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, object], where: Path) -> StoreState:
        try:
            tables = {t: tuple(raw["tables"][t]) for t in TABLES}  # type: ignore[index]
            return cls(
                version=int(raw["version"]),  # type: ignore[arg-type]
                tables=tables,
                snapshot=raw.get("snapshot"),  # type: ignore[arg-type]
                snapshots=tuple(raw.get("snapshots", ())),  # type: ignore[arg-type]
                last_ts=raw.get("last_ts"),  # type: ignore[arg-type]
                appends=tuple(raw.get("appends", ())),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: bad store file ({type(exc).__name__}: {exc})") from None

    def paths(self, data_dir: Path, table: str) -> list[Path]:
        """The existing files of ``table`` (a base file that was never written is skipped)."""
        return [data_dir / f for f in self.tables[table] if (data_dir / f).is_file()]

    def next(self, **changes: object) -> StoreState:
        return replace(self, version=self.version + 1, **changes)


def read_state(data_dir: str | Path) -> StoreState:
    """The committed state of ``data_dir`` (a folder without ``tables.json``: its single base files)."""
    path = Path(data_dir) / STORE_FILE
    if not path.is_file():
        return StoreState()
    return StoreState.from_json(json.loads(path.read_text()), path)


def table_paths(data_dir: str | Path, table: str) -> list[Path]:
    """The files that make up ``table`` (``items``, ``impressions`` or ``features``) in committed order."""
    data_dir = Path(data_dir)
    return read_state(data_dir).paths(data_dir, table)


def snapshot_dir(data_dir: str | Path) -> Path:
    """The folder holding the current snapshot version's files (the data folder itself for a legacy one)."""
    data_dir = Path(data_dir)
    state = read_state(data_dir)
    return data_dir / SNAPSHOTS_DIR / state.snapshot if state.snapshot else data_dir


def current_snapshot_id(data_dir: str | Path) -> str | None:
    """The current snapshot version, read from ``tables.json`` alone: cheap enough to poll every second."""
    state = read_state(data_dir)
    if state.snapshot:
        return state.snapshot
    legacy = Path(data_dir) / "online_meta.json"
    return json.loads(legacy.read_text()).get("snapshot_id") if legacy.is_file() else None


def commit(data_dir: str | Path, state: StoreState, retention: int | None = None) -> StoreState:
    """Make ``state`` the folder's committed state (one rename), then prune and sweep.

    ``retention``: keep this many snapshot versions (the current one always); older folders are deleted
    after the commit, so a crash mid-prune costs disk, never the state. Files under ``parts/`` and
    ``snapshots/`` that no committed state names (left by a crashed append) are swept too.
    """
    data_dir = Path(data_dir)
    if retention is not None and len(state.snapshots) > retention:
        state = replace(state, snapshots=state.snapshots[-max(retention, 1) :])
    write_json_atomic(state.to_json(), data_dir / STORE_FILE)
    _sweep(data_dir, state)
    return state


def _sweep(data_dir: Path, state: StoreState) -> None:
    keep_snapshots = set(state.snapshots) | ({state.snapshot} if state.snapshot else set())
    root = data_dir / SNAPSHOTS_DIR
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name not in keep_snapshots:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    named = {Path(f).parts[1] for files in state.tables.values() for f in files if Path(f).parts[0] == PARTS_DIR}
    root = data_dir / PARTS_DIR
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name not in named:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@contextlib.contextmanager
def store_lock(data_dir: str | Path) -> Iterator[None]:
    """Hold the folder's writer lock for the block; fail at once if another writer holds it."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLockedError(
                f"{data_dir}: another `recrank events append` or `features build` is writing this folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


