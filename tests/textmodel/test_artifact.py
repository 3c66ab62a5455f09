"""A saved text model holds its definition, not the runtime knobs of the machine that saved it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conf import load_config
from textmodel.artifact import (
    META_FILE,
    RUNTIME_FIELDS,
    TextRuntime,
    embedding_table,
    load_text_model,
    save_text_model,
)
from textmodel.backbone import load_backbone
from textmodel.model import build_text_model_only
from textmodel.scoring import TextScorer

CPU = torch.device("cpu")


def _saved(folder: Path, cfg) -> Path:
    """An untrained tiny text model saved under ``folder`` with ``cfg.textmodel``."""
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model = build_text_model_only(cfg.textmodel, backbone, CPU)
    table = embedding_table(["i0", "i1"], torch.nn.functional.normalize(torch.randn(2, cfg.textmodel.dim), dim=-1))
    return save_text_model(folder, model, cfg.textmodel, backbone.identity, table, {"history_cap": 8})


def _lower_dtype(loaded) -> torch.dtype:
    return next(loaded.model.items.backbone.lower_model.parameters()).dtype


def test_the_saved_config_has_no_runtime_knobs(tiny_data, tmp_path: Path) -> None:
    folder = _saved(tmp_path / "tm", tiny_data[0])
    saved = json.loads((folder / META_FILE).read_text())["config"]
    for path in RUNTIME_FIELDS:
        *parents, leaf = path.split(".")
        node = saved
        for key in parents:
            node = node[key]
        assert leaf not in node, path
    assert saved["max_tokens"] == tiny_data[0].textmodel.max_tokens and saved["train"]["seed"] == 0  # definition


def test_loading_runs_under_the_callers_runtime(tiny_data, tmp_path: Path) -> None:
    cfg = tiny_data[0]
    folder = _saved(tmp_path / "tm", cfg)
    runtime = TextRuntime(encode_batch_tokens=64, lower_dtype="bfloat16")
    loaded = load_text_model(folder, cfg.textmodel.cache_dir, CPU, runtime)
    assert loaded.config.train.encode_batch_tokens == 64 and loaded.config.lower_dtype == "bfloat16"
    assert loaded.config.cache_dir == Path(cfg.textmodel.cache_dir) and loaded.config.train.device == "cpu"
    assert _lower_dtype(loaded) == torch.bfloat16
    assert TextScorer(loaded, CPU).config.train.encode_batch_tokens == 64  # what encode_texts batches by
    plain = load_text_model(folder, cfg.textmodel.cache_dir, CPU, TextRuntime(lower_dtype="float32"))
    assert _lower_dtype(plain) == torch.float32


def test_a_model_saved_with_runtime_knobs_loads_and_ignores_them(tiny_data, tmp_path: Path) -> None:
    """Folders written before the split carry the saving machine's knobs: the loader's win."""
    cfg = tiny_data[0]
    folder = _saved(tmp_path / "old", cfg)
    meta = json.loads((folder / META_FILE).read_text())
    meta["config"]["cache_dir"] = str(tmp_path / "elsewhere")
    meta["config"]["lower_dtype"] = "bfloat16"
    meta["config"]["train"].update(device="cuda", bf16="on", encode_batch_tokens=7)
    (folder / META_FILE).write_text(json.dumps(meta))
    loaded = load_text_model(folder, cfg.textmodel.cache_dir, CPU, TextRuntime(lower_dtype="float32"))
    assert loaded.config.train.device == "cpu" and loaded.config.train.bf16 == "auto"
    assert loaded.config.train.encode_batch_tokens == 4096 and loaded.config.cache_dir == Path(cfg.textmodel.cache_dir)
    assert _lower_dtype(loaded) == torch.float32
    fresh = _saved(tmp_path / "new", cfg)
    new = load_text_model(fresh, cfg.textmodel.cache_dir, CPU, TextRuntime(lower_dtype="float32"))
    texts = ["The bold story", "Of sports"]
    torch.testing.assert_close(
        TextScorer(loaded, CPU).encode_texts(texts), TextScorer(new, CPU).encode_texts(texts), atol=0, rtol=0
    )


def test_runtime_from_the_default_config_is_the_default_runtime() -> None:
    """TextRuntime's defaults are conf/default.yaml's (kept in step by this test)."""
    assert TextRuntime.from_config(load_config(None).textmodel) == TextRuntime()


def test_runtime_from_a_config_takes_its_knobs() -> None:
    cfg = load_config(None, ["textmodel.train.encode_batch_tokens=512", "textmodel.lower_dtype=float32"]).textmodel
    runtime = TextRuntime.from_config(cfg)
    assert runtime.encode_batch_tokens == 512 and runtime.lower_dtype == "float32"
    with pytest.raises(ValueError, match="encode_batch_tokens must be > 0"):
        TextRuntime(encode_batch_tokens=0)
