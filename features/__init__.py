"""Canonical data, dataset adapters, the time split and point-in-time behavioural features."""

from features.append import AppendSummary, append_events
from features.behaviour import (
    FeatureSpec,
    OnlineSnapshot,
    build_offline,
    build_offline_and_snapshot,
    build_snapshot,
    derive,
)
from features.build import build_features, read_features, read_snapshot
from features.prepare import PrepareSummary, prepare_dataset, read_manifest, serving_unknown_columns
from features.schema import (
    IMPRESSIONS_SCHEMA,
    ITEMS_SCHEMA,
    DataValidationError,
    read_impressions,
    read_items,
)
from features.split import TimeSplit, read_split

__all__ = [
    "IMPRESSIONS_SCHEMA",
    "ITEMS_SCHEMA",
    "AppendSummary",
    "DataValidationError",
    "FeatureSpec",
    "OnlineSnapshot",
    "PrepareSummary",
    "TimeSplit",
    "append_events",
    "build_features",
    "build_offline",
    "build_offline_and_snapshot",
    "build_snapshot",
    "derive",
    "prepare_dataset",
    "read_features",
    "read_impressions",
    "read_items",
    "read_manifest",
    "read_snapshot",
    "read_split",
    "serving_unknown_columns",
]
