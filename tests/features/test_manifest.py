"""The manifest carries the dataset's protocol facts: which columns are not known at serving time."""

from __future__ import annotations

import json
from pathlib import Path

from sample_data import TINY_SYNTHETIC

from conf import load_config
from features import prepare_dataset, read_manifest, serving_unknown_columns
from features.prepare import MANIFEST_FILE


def test_ml100k_declares_position_unknown_at_serving_time(tmp_path: Path) -> None:
    """In ml100k "position" is the order the user rated in, not a display slot."""
    cfg = load_config(None, [f"data.dir={tmp_path}", "data.dataset=ml100k"])
    summary = prepare_dataset(cfg.data, progress=False)
    assert summary.serving_unknown == ("position",)
    assert read_manifest(tmp_path)["serving_unknown"] == ["position"]
    assert serving_unknown_columns(tmp_path) == ("position",)


def test_synthetic_declares_nothing(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY_SYNTHETIC, f"data.dir={tmp_path}"])
    prepare_dataset(cfg.data, progress=False)
    assert read_manifest(tmp_path)["serving_unknown"] == [] and serving_unknown_columns(tmp_path) == ()


def test_a_manifest_written_before_the_key_declares_nothing(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"dataset": "ml100k", "fingerprint": "abc"}))
    assert serving_unknown_columns(tmp_path) == ()
