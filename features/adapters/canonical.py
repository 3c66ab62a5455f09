"""Already-canonical tables (``items.parquet`` + ``impressions.parquet`` in a folder), validated and copied.

This is the door for any dataset we have no adapter for: convert it to the two tables, then
``recrank data prepare --dataset canonical --source FOLDER``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features.adapters.base import SourceTables
from features.schema import IMPRESSIONS_FILE, ITEMS_FILE, DataValidationError, conform, read_user_file


def load_canonical(folder: Path) -> SourceTables:
    folder = Path(folder)
    items_path, imps_path = folder / ITEMS_FILE, folder / IMPRESSIONS_FILE
    for path in (items_path, imps_path):
        if not path.is_file():
            raise DataValidationError(path, None, "file not found")
    items = conform(read_user_file(items_path, pl.read_parquet), "items", items_path)
    impressions = conform(read_user_file(imps_path, pl.read_parquet), "impressions", imps_path)
    return SourceTables(
        items=items,
        impression_chunks=[impressions],
        items_file=items_path,
        impressions_file=imps_path,
        info={"source": str(folder)},
    )
