"""``recrank features build``: materialise offline features and the online snapshot for a data folder.

Writes ``features.parquet`` (one row per impression row), ``online_user.parquet``, ``online_item.parquet``,
``online_user_category.parquet`` and ``online_meta.json`` (snapshot time, global counts, the feature spec
and the data fingerprint it was built from). Every file goes through a temporary path and a rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import polars as pl

from features.behaviour import FeatureSpec, OnlineSnapshot, build_offline_and_snapshot
from features.history import histories
from features.io import atomic_path
from features.prepare import read_manifest
from features.schema import read_impressions, read_items
from features.split import read_split

FEATURES_FILE = "features.parquet"
ONLINE_USER_FILE = "online_user.parquet"
ONLINE_ITEM_FILE = "online_item.parquet"
ONLINE_USER_CATEGORY_FILE = "online_user_category.parquet"
ONLINE_META_FILE = "online_meta.json"
ONLINE_FILES = (ONLINE_META_FILE, ONLINE_USER_FILE, ONLINE_ITEM_FILE, ONLINE_USER_CATEGORY_FILE)


def build_features(data_dir: str | Path, spec: FeatureSpec) -> dict[str, object]:
    """Build offline features and the online snapshot; return a short summary."""
    data_dir = Path(data_dir)
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
    write_snapshot(snapshot, data_dir, spec, fingerprint)
    return {
        "rows": rows,
        "users": snapshot.users.height,
        "items": snapshot.items.height,
        "as_of": snapshot.as_of.isoformat(),
    }


def write_snapshot(snapshot: OnlineSnapshot, data_dir: Path, spec: FeatureSpec, fingerprint: object) -> None:
    """The snapshot's tables and ``online_meta.json`` (its time, global counts, the feature spec, the data
    fingerprint, and ``snapshot_id``: a sha256 over the meta and the tables' bytes, its content address)."""
    meta = {**snapshot.meta(), "feature_spec": asdict(spec), "data_fingerprint": fingerprint}
    tables = (ONLINE_USER_FILE, ONLINE_ITEM_FILE, ONLINE_USER_CATEGORY_FILE)
    with contextlib.ExitStack() as stack:
        paths = {name: stack.enter_context(atomic_path(data_dir / name)) for name in (ONLINE_META_FILE, *tables)}
        snapshot.users.write_parquet(paths[ONLINE_USER_FILE])
        snapshot.items.write_parquet(paths[ONLINE_ITEM_FILE])
        snapshot.user_categories.write_parquet(paths[ONLINE_USER_CATEGORY_FILE])
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for name in tables:
            digest.update(paths[name].read_bytes())
        meta["snapshot_id"] = digest.hexdigest()[:16]
        paths[ONLINE_META_FILE].write_text(json.dumps(meta, indent=2) + "\n")


def read_snapshot(data_dir: str | Path) -> OnlineSnapshot:
    """Load the online snapshot written by :func:`build_features`."""
    data_dir = Path(data_dir)
    meta_path = data_dir / ONLINE_META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found (run `recrank features build` first)")
    meta = json.loads(meta_path.read_text())
    return OnlineSnapshot(
        as_of=datetime.fromisoformat(meta["as_of"]),
        users=pl.read_parquet(data_dir / ONLINE_USER_FILE),
        items=pl.read_parquet(data_dir / ONLINE_ITEM_FILE),
        user_categories=pl.read_parquet(data_dir / ONLINE_USER_CATEGORY_FILE),
        global_impressions=int(meta["global_impressions_before"]),
        global_clicks=int(meta["global_clicks_before"]),
        feature_spec=FeatureSpec.from_json(meta["feature_spec"]) if meta.get("feature_spec") else None,
        data_fingerprint=None if meta.get("data_fingerprint") is None else str(meta["data_fingerprint"]),
        snapshot_id=meta.get("snapshot_id"),
    )


def read_features(data_dir: str | Path) -> pl.LazyFrame:
    path = Path(data_dir) / FEATURES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `recrank features build` first)")
    return pl.scan_parquet(path)
