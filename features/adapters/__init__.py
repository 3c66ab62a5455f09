"""Dataset adapters: each turns one source format into the canonical ``items`` and ``impressions``."""

from __future__ import annotations

from collections.abc import Callable

from conf import DataConfig
from features.adapters.base import SourceTables
from features.adapters.canonical import load_canonical
from features.adapters.mind import load_mind
from features.adapters.ml100k import load_ml100k, locate_ml100k
from features.adapters.synthetic import SyntheticWorld, load_synthetic


def _needs_source(cfg: DataConfig) -> None:
    if cfg.source is None:
        raise ValueError(f"dataset {cfg.dataset!r} needs a source folder (--source FOLDER or data.source=...)")


def _mind(cfg: DataConfig) -> SourceTables:
    _needs_source(cfg)
    return load_mind(cfg.source)


def _canonical(cfg: DataConfig) -> SourceTables:
    _needs_source(cfg)
    return load_canonical(cfg.source)


# One dispatch table: the config key ``data.dataset`` picks the adapter.
ADAPTERS: dict[str, Callable[[DataConfig], SourceTables]] = {
    "ml100k": lambda cfg: load_ml100k(),
    "mind": _mind,
    "synthetic": lambda cfg: load_synthetic(cfg.synthetic),
    "canonical": _canonical,
}

__all__ = [
    "ADAPTERS",
    "SourceTables",
    "SyntheticWorld",
    "load_canonical",
    "load_mind",
    "load_ml100k",
    "load_synthetic",
    "locate_ml100k",
]
