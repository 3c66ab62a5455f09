"""``recrank events append``: new impressions (and products) into a data folder, features brought up to date.

One append is one commit (:mod:`features.store`): a new part holding the batch's impressions, its
offline feature rows (:mod:`features.incremental`) and any new catalogue items, plus a new snapshot
version; ``tables.json`` names them only once everything is written. The rules, checked before
anything is written (a refused append changes nothing):

* the batch is validated like prepared data (schema, ids, labels, one ``ts`` per impression), and its
  items must be in the catalogue or in the batch's ``--items``;
* an ``impression_id`` already in the folder is refused; ``skip_existing`` drops those rows instead, so
  re-running the same append is a no-op (idempotent);
* a catalogue ``item_id`` given again in ``--items`` is refused (``skip_existing``: dropped);
* events must be at or after the snapshot's ``as_of`` (the data's last event + 1 µs): the snapshot has
  already counted every earlier instant, so a late event would change features already served and
  trained on. There is no late-event policy: late events are refused, naming the first one;
* appended rows get their split from the folder's cut-offs (``split.json``): rows after the test
  cut-off are ``test``. Moving the cut-offs (continual training) re-labels them without a rewrite.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from features.behaviour import FeatureSpec
from features.build import read_snapshot, write_snapshot
from features.incremental import advance, trailing_reach
from features.io import replace_path
from features.prepare import read_manifest
from features.schema import (
    IMPRESSIONS_FILE,
    ITEMS_FILE,
    DataValidationError,
    check_item_references,
    conform,
    read_impressions,
    read_items,
    read_user_file,
    validate,
)
from features.split import read_split
from features.store import BASE_FILES, PARTS_DIR, commit, read_state, store_lock

FEATURES_FILE = BASE_FILES["features"]


@dataclass
class AppendSummary:
    """What one append did (printed by the CLI, kept in ``tables.json``'s ``appends`` log)."""

    rows: int
    impressions: int
    skipped_rows: int
    new_items: int
    skipped_items: int
    part: str | None
    snapshot: str | None
    as_of: str | None
    store_version: int

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _read(path: Path, table: str) -> pl.DataFrame:
    return conform(read_user_file(path, pl.read_parquet), table, Path(path))


def _new_items(path: Path | None, catalogue: pl.DataFrame, skip_existing: bool) -> tuple[pl.DataFrame | None, int]:
    if path is None:
        return None, 0
    items = _read(path, "items")
    validate(items, "items", path)
    known = items.join(catalogue.select("item_id"), on="item_id", how="semi")
    if known.height and not skip_existing:
        raise DataValidationError(
            path,
            "item_id",
            f"{known.height} item(s) already in the catalogue, e.g. {known['item_id'][0]!r} "
            "(catalogue items are not updated by an append; --skip-existing skips them)",
        )
    fresh = items.join(catalogue.select("item_id"), on="item_id", how="anti")
    return (fresh if fresh.height else None), known.height


def _drop_existing(events: pl.DataFrame, data_dir: Path, path: Path, skip_existing: bool) -> tuple[pl.DataFrame, int]:
    """Rows whose impression is already logged: refused, or dropped with ``skip_existing``."""
    ids = events.select("impression_id").unique()
    logged = read_impressions(data_dir).select("impression_id").join(ids.lazy(), on="impression_id", how="semi")
    present = logged.unique().collect()
    if not present.height:
        return events, 0
    if not skip_existing:
        raise DataValidationError(
            path,
            "impression_id",
            f"{present.height} impression(s) already in {data_dir}, e.g. {present['impression_id'][0]!r} "
            "(--skip-existing skips them: appending the same file twice is then a no-op)",
        )
    kept = events.join(present, on="impression_id", how="anti")
    return kept, events.height - kept.height


def _check_not_late(events: pl.DataFrame, as_of: datetime, path: Path) -> None:
    late = events.filter(pl.col("ts") < as_of)
    if late.height:
        first = late.sort("ts").row(0, named=True)
        raise DataValidationError(
            path,
            "ts",
            f"{late.height} row(s) before the data's snapshot time {as_of.isoformat()} (its last event + 1 us), "
            f"e.g. impression {first['impression_id']!r} at {first['ts'].isoformat()}: late events are refused "
            "(they would change features already served and trained on)",
        )


def _write_part(data_dir: Path, name: str, frames: dict[str, pl.DataFrame]) -> dict[str, str]:
    """The batch's files as ``parts/<name>/``, written under a temporary name and renamed whole."""
    root = data_dir / PARTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        for file, frame in frames.items():
            frame.write_parquet(tmp / file, compression="zstd", statistics=True)
        # a folder of that name left by a crashed try of this same append is replaced: no committed state names it
        replace_path(tmp, root / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {file: f"{PARTS_DIR}/{name}/{file}" for file in frames}


def append_events(
    data_dir: str | Path,
    events_path: str | Path,
    spec: FeatureSpec,
    items_path: str | Path | None = None,
    skip_existing: bool = False,
    retention: int = 5,
) -> AppendSummary:
    """Append ``events_path`` (canonical impressions) and optional new items; see the module docstring."""
    data_dir, events_path = Path(data_dir), Path(events_path)
    with store_lock(data_dir):
        state = read_state(data_dir)
        if state.snapshot is None:
            raise FileNotFoundError(f"{data_dir}: no snapshot version to append to (run `recrank features build`)")
        snapshot = read_snapshot(data_dir)
        if snapshot.feature_spec is not None and snapshot.feature_spec != spec:
            raise ValueError(
                f"{data_dir}: its features were built with {snapshot.feature_spec.to_json()}, the append was asked "
                f"for {spec.to_json()} (append with the folder's config, or rebuild with `recrank features build`)"
            )
        events = _read(events_path, "impressions")
        validate(events, "impressions", events_path)
        catalogue = read_items(data_dir).collect()
        items, skipped_items = _new_items(Path(items_path) if items_path else None, catalogue, skip_existing)
        if items is not None:
            catalogue = pl.concat([catalogue, items])
        check_item_references(events, catalogue, events_path)
        events, skipped = _drop_existing(events, data_dir, events_path, skip_existing)
        if not events.height:
            return AppendSummary(0, 0, skipped, 0, skipped_items, None, None, None, state.version)
        _check_not_late(events, snapshot.as_of, events_path)
        since = events["ts"].min() - trailing_reach(spec)
        trailing = (
            read_impressions(data_dir)
            .filter((pl.col("clicked") == 1) & (pl.col("ts") >= since))
            .select("item_id", "ts")
            .collect()
        )
        offline, advanced = advance(snapshot, events, trailing, catalogue, spec, read_split(data_dir).expr())
        digest = hashlib.sha256(events.hash_rows().to_numpy().tobytes()).hexdigest()[:8]
        name = f"{state.version + 1:06d}-{digest}"
        frames = {IMPRESSIONS_FILE: events, FEATURES_FILE: offline}
        if items is not None:
            frames[ITEMS_FILE] = items
        written = _write_part(data_dir, name, frames)
        fingerprint = read_manifest(data_dir).get("fingerprint")
        lineage = {"parent_snapshot": snapshot.snapshot_id, "store_version": state.version + 1}
        snapshot_id = write_snapshot(advanced, data_dir, spec, fingerprint, lineage)
        summary = AppendSummary(
            rows=events.height,
            impressions=events["impression_id"].n_unique(),
            skipped_rows=skipped,
            new_items=0 if items is None else items.height,
            skipped_items=skipped_items,
            part=name,
            snapshot=snapshot_id,
            as_of=advanced.as_of.isoformat(),
            store_version=state.version + 1,
        )
        tables = {
            "impressions": (*state.tables["impressions"], written[IMPRESSIONS_FILE]),
            "features": (*state.tables["features"], written[FEATURES_FILE]),
            "items": (*state.tables["items"], *([written[ITEMS_FILE]] if items is not None else [])),
        }
        last_ts = events["ts"].max().isoformat()
        commit(
            data_dir,
            state.next(
                tables=tables,
                snapshot=snapshot_id,
                snapshots=(*state.snapshots, snapshot_id),
                last_ts=last_ts,
                appends=(*state.appends, summary.to_json()),
            ),
            retention,
        )
    return summary
