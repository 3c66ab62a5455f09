"""``recrank data prepare``: run an adapter, validate everything, write the canonical tables atomically.

Outputs in ``data.dir``: ``items.parquet``, ``impressions.parquet``, ``split.json`` (the two time cut-offs)
and ``manifest.json`` (row counts and content hashes: the data fingerprint later stages record; and the
dataset's protocol facts, such as the columns not known at serving time).
Either every file is replaced or none is: all are written to temporary paths and renamed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from conf import DataConfig
from features.adapters import ADAPTERS
from features.io import atomic_path
from features.schema import (
    IMPRESSIONS_FILE,
    ITEMS_FILE,
    DataValidationError,
    check_item_references,
    conform,
    validate,
)
from features.split import SPLIT_FILE, TimeSplit, split_from_range
from features.store import STORE_FILE, StoreState

MANIFEST_FILE = "manifest.json"

# Columns a dataset's protocol says are not known when ranking, so no model may read them (a fact about the
# data, not about a profile or a machine). ml100k: "position" is the order the user rated in, not a display
# slot. Other datasets declare nothing: synthetic and canonical positions are display slots (in the shared
# canonical catalogues a seeded shuffle: known, if meaningless), MIND's are the logged impression order.
SERVING_UNKNOWN: dict[str, tuple[str, ...]] = {"ml100k": ("position",)}


@dataclass
class PrepareSummary:
    """What ``prepare`` wrote; printed by the CLI and stored as ``manifest.json``."""

    dataset: str
    items: int
    impression_rows: int
    impressions: int
    users: int
    ctr: float
    split: TimeSplit
    fingerprint: str
    serving_unknown: tuple[str, ...] = ()  # columns not known at serving time (SERVING_UNKNOWN)

    def to_json(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "items": self.items,
            "impression_rows": self.impression_rows,
            "impressions": self.impressions,
            "users": self.users,
            "ctr": self.ctr,
            "split": self.split.to_json(),
            "fingerprint": self.fingerprint,
            "serving_unknown": list(self.serving_unknown),
        }


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_dataset(cfg: DataConfig, progress: bool = True) -> PrepareSummary:
    """Write the canonical tables for ``cfg.dataset`` into ``cfg.dir`` (validated; all-or-nothing)."""
    tables = ADAPTERS[cfg.dataset](cfg)
    items = conform(tables.items, "items", tables.items_file)
    validate(items, "items", tables.items_file)
    out = Path(cfg.dir)
    rows = clicks = 0
    lo = hi = None
    impression_ids: set[str] = set()
    users: set[str] = set()
    with contextlib.ExitStack() as stack:
        tmp = {
            name: stack.enter_context(atomic_path(out / name))
            for name in (MANIFEST_FILE, SPLIT_FILE, ITEMS_FILE, IMPRESSIONS_FILE, STORE_FILE)
        }
        items.write_parquet(tmp[ITEMS_FILE], compression="zstd")
        writer = None
        # disable=None shows the bar only on a terminal, so logs and error output stay one line per event.
        bar = tqdm(desc=f"prepare {cfg.dataset}", unit=" rows", unit_scale=True, disable=None if progress else True)
        try:
            for raw in tables.impression_chunks:
                chunk = conform(raw, "impressions", tables.impressions_file)
                validate(chunk, "impressions", tables.impressions_file)
                check_item_references(chunk, items, tables.impressions_file)
                stats = chunk.select(
                    pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"), pl.col("clicked").sum().alias("c")
                ).row(0, named=True)
                lo = stats["lo"] if lo is None else min(lo, stats["lo"])
                hi = stats["hi"] if hi is None else max(hi, stats["hi"])
                rows, clicks = rows + chunk.height, clicks + int(stats["c"])
                _track_unique(impression_ids, chunk, tables.impressions_file)
                users.update(chunk["user_id"].unique().to_list())
                table = chunk.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(tmp[IMPRESSIONS_FILE], table.schema, compression="zstd")
                writer.write_table(table)
                bar.update(chunk.height)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if writer is None or rows == 0:
            raise ValueError(f"{tables.impressions_file}: no impression rows")
        split = split_from_range(lo, hi, cfg.val_fraction, cfg.test_fraction)
        tmp[SPLIT_FILE].write_text(json.dumps(split.to_json(), indent=2) + "\n")
        fingerprint = hashlib.sha256(
            (file_sha256(tmp[ITEMS_FILE]) + file_sha256(tmp[IMPRESSIONS_FILE])).encode()
        ).hexdigest()[:16]
        summary = PrepareSummary(
            dataset=cfg.dataset,
            items=items.height,
            impression_rows=rows,
            impressions=len(impression_ids),
            users=len(users),
            ctr=clicks / rows,
            split=split,
            fingerprint=fingerprint,
            serving_unknown=SERVING_UNKNOWN.get(cfg.dataset, ()),
        )
        tmp[MANIFEST_FILE].write_text(json.dumps({**summary.to_json(), "info": tables.info}, indent=2) + "\n")
        # A fresh committed state: the parts and snapshot versions of earlier appends belong to the old data
        # (the next `features build` commit sweeps their files).
        tmp[STORE_FILE].write_text(json.dumps(StoreState().to_json(), indent=2) + "\n")
    return summary


def _track_unique(seen: set[str], chunk: pl.DataFrame, file: str | Path) -> None:
    """Impression ids must not repeat across chunks (within a chunk ``validate`` checks keys)."""
    ids = chunk["impression_id"].unique().to_list()
    overlap = seen.intersection(ids)
    if overlap:
        raise DataValidationError(file, "impression_id", f"impression id {next(iter(overlap))!r} repeats across chunks")
    seen.update(ids)


def read_manifest(data_dir: str | Path) -> dict[str, object]:
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `recrank data prepare` first)")
    return json.loads(path.read_text())


def serving_unknown_columns(data_dir: str | Path) -> tuple[str, ...]:
    """Columns of ``data_dir``'s data that are not known at serving time (its manifest's ``serving_unknown``).

    A manifest written before the key existed declares nothing: re-run ``recrank data prepare`` to record it.
    """
    return tuple(read_manifest(data_dir).get("serving_unknown", ()))
