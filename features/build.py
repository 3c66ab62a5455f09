"""``recrank features build``: materialise offline features and the online snapshot for a data folder.

Writes ``features.parquet`` (one row per impression row) and a snapshot version
``snapshots/<snapshot_id>/`` holding ``online_user.parquet``, ``online_item.parquet``,
``online_user_category.parquet`` and ``online_meta.json`` (snapshot time, global counts, the feature spec
and the data fingerprint it was built from), then commits both in ``tables.json`` (:mod:`features.store`):
a reader sees the old state or the new one. A full build replaces the feature parts of earlier appends.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from features.behaviour import FeatureSpec, OnlineSnapshot, build_offline_and_snapshot
from features.history import histories
from features.io import atomic_path, replace_path
from features.prepare import read_manifest
from features.schema import read_impressions, read_items
from features.split import read_split
from features.store import (
    BASE_FILES,
    SNAPSHOTS_DIR,
    STORE_FILE,
    commit,
    read_state,
    snapshot_dir,
    store_lock,
    table_paths,
)

FEATURES_FILE = "features.parquet"
ONLINE_USER_FILE = "online_user.parquet"
ONLINE_ITEM_FILE = "online_item.parquet"
ONLINE_USER_CATEGORY_FILE = "online_user_category.parquet"
ONLINE_META_FILE = "online_meta.json"
ONLINE_FILES = (ONLINE_META_FILE, ONLINE_USER_FILE, ONLINE_ITEM_FILE, ONLINE_USER_CATEGORY_FILE)


def build_features(data_dir: str | Path, spec: FeatureSpec, retention: int = 5) -> dict[str, object]:
    """Build offline features and the online snapshot from every committed event; return a short summary."""
    data_dir = Path(data_dir)
    with store_lock(data_dir):
        items, impressions = read_items(data_dir), read_impressions(data_dir)
        split = read_split(data_dir)
        fingerprint = read_manifest(data_dir).get("fingerprint")
        offline, snapshot = build_offline_and_snapshot(impressions, items, spec, split.expr())
        # Serving needs each user's latest history too: the same history function, at the snapshot's counts.
        snapshot.users = histories(impressions, snapshot.users.lazy(), spec.history_cap).collect()
        with atomic_path(data_dir / FEATURES_FILE) as tmp:
            frame = offline.collect()
            frame.write_parquet(tmp, compression="zstd", statistics=True)
            rows = frame.height
        snapshot_id = write_snapshot(snapshot, data_dir, spec, fingerprint)
        state = read_state(data_dir)
        tables = {**state.tables, "features": (BASE_FILES["features"],)}
        last_ts = (snapshot.as_of - _ONE_US).isoformat()
        commit(
            data_dir,
            state.next(tables=tables, snapshot=snapshot_id, snapshots=(*state.snapshots, snapshot_id), last_ts=last_ts),
            retention,
        )
    return {
        "rows": rows,
        "users": snapshot.users.height,
        "items": snapshot.items.height,
        "as_of": snapshot.as_of.isoformat(),
        "snapshot": snapshot_id,
    }


_ONE_US = timedelta(microseconds=1)
SNAPSHOT_TABLES = (ONLINE_USER_FILE, ONLINE_ITEM_FILE, ONLINE_USER_CATEGORY_FILE)


def write_snapshot(
    snapshot: OnlineSnapshot,
    data_dir: Path,
    spec: FeatureSpec,
    fingerprint: object,
    extra_meta: dict[str, object] | None = None,
) -> str:
    """Write ``snapshot`` as an immutable version ``data_dir/snapshots/<snapshot_id>/``; return the id.

    The folder holds the three tables and ``online_meta.json`` (its time, global counts, the feature spec,
    the data fingerprint, and ``snapshot_id``: a sha256 over the meta and the tables' bytes, its content
    address). It is written under a temporary name and renamed whole; a version already there (same content)
    is kept as it is. Nothing is current until :func:`features.store.commit` names it.
    """
    meta = {**snapshot.meta(), "feature_spec": asdict(spec), "data_fingerprint": fingerprint, **(extra_meta or {})}
    root = Path(data_dir) / SNAPSHOTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".snapshot.", suffix=".tmp", dir=root))
    try:
        snapshot.users.write_parquet(tmp / ONLINE_USER_FILE)
        snapshot.items.write_parquet(tmp / ONLINE_ITEM_FILE)
        snapshot.user_categories.write_parquet(tmp / ONLINE_USER_CATEGORY_FILE)
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
        for name in SNAPSHOT_TABLES:
            digest.update((tmp / name).read_bytes())
        meta["snapshot_id"] = snapshot_id = digest.hexdigest()[:16]
        (tmp / ONLINE_META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        final = root / snapshot_id
        if not final.is_dir():
            replace_path(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return snapshot_id


def read_snapshot(folder: str | Path) -> OnlineSnapshot:
    """Load an online snapshot: the current version of a data folder, or a snapshot folder itself
    (a version under ``snapshots/``, a registered model's copy, a folder written before versions)."""
    folder = Path(folder)
    if (folder / STORE_FILE).is_file():
        folder = snapshot_dir(folder)
    meta_path = folder / ONLINE_META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found (run `recrank features build` first)")
    meta = json.loads(meta_path.read_text())
    return OnlineSnapshot(
        as_of=datetime.fromisoformat(meta["as_of"]),
        users=pl.read_parquet(folder / ONLINE_USER_FILE),
        items=pl.read_parquet(folder / ONLINE_ITEM_FILE),
        user_categories=pl.read_parquet(folder / ONLINE_USER_CATEGORY_FILE),
        global_impressions=int(meta["global_impressions_before"]),
        global_clicks=int(meta["global_clicks_before"]),
        feature_spec=FeatureSpec.from_json(meta["feature_spec"]) if meta.get("feature_spec") else None,
        data_fingerprint=None if meta.get("data_fingerprint") is None else str(meta["data_fingerprint"]),
        snapshot_id=meta.get("snapshot_id"),
    )


def read_features(data_dir: str | Path) -> pl.LazyFrame:
    """The offline feature rows of every committed impression (the base build and each append's part).

    ``split`` is recomputed from the folder's current cut-offs (``split.json``): the split of a row is a
    function of its ``ts`` (:class:`features.split.TimeSplit`), so moving the cut-offs forward (continual
    training) needs no rewrite of the feature files.
    """
    paths = table_paths(data_dir, "features")
    if not paths:
        raise FileNotFoundError(f"{Path(data_dir) / FEATURES_FILE}: not found (run `recrank features build` first)")
    frame = pl.scan_parquet(paths)
    if "split" in frame.collect_schema().names():
        frame = frame.with_columns(read_split(data_dir).expr())
    return frame
