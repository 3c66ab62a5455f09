"""What every dataset adapter returns: source tables already in canonical shape."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl


@dataclass
class SourceTables:
    """Canonical ``items`` and the ``impressions`` as one or more chunks (large sources stream).

    ``items_file`` / ``impressions_file`` name the source files, so a validation error points at the file
    the user has to fix, not at an intermediate.
    """

    items: pl.DataFrame
    impression_chunks: Iterable[pl.DataFrame]
    items_file: str | Path
    impressions_file: str | Path
    info: dict[str, object] = field(default_factory=dict)
