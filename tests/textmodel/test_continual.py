"""Continual training: a warm start loads exactly the parent's trainable weights, refuses a parent of another
backbone or definition, and the ``since`` window drops the earlier train impressions (and only those)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from conf import load_config
from features import read_features
from textmodel.artifact import META_FILE, WEIGHTS_FILE, embedding_table, save_text_model
from textmodel.backbone import build_tiny_gpt2, load_backbone
from textmodel.continual import WarmStartError, load_parent, train_window
from textmodel.data import TextDataError
from textmodel.model import build_text_model
from textmodel.train import ClickTrainer

CPU = torch.device("cpu")
TRAINER_STATE = {"bias": 0.25, "offset_weight": 1.5}  # distinct from a fresh trainer's 0 and 1


def auc_of(frame) -> float:
    from ranker.metrics import per_group_metrics, summarize

    return summarize(per_group_metrics(frame))["auc"]


def quick(cfg, **train):
    """A copy of ``cfg`` with a short schedule (and any other train keys) for fast tiny runs."""
    cfg = cfg.model_copy(deep=True)
    t = cfg.textmodel.train
    t.probe_epochs, t.epochs, t.max_steps_per_epoch, t.patience = 2, 1, 3, 0
    for key, value in train.items():
        setattr(t, key, value)
    return cfg


def build(cfg, catalogue):
    """A fresh backbone (PEFT wraps its top layers in place: one model per backbone), model, cached encoder."""
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, CPU, total_steps=8)
    encoder.build_cache(progress=False)
    return backbone, model, encoder, ClickTrainer(model, encoder, cfg.textmodel.train, CPU, auc_of)


def trainable(trainer: ClickTrainer) -> dict[str, torch.Tensor]:
    """Everything a warm start loads: the trainable weights and the item tower's standardisation."""
    return {n: p.detach().clone() for n, p in trainer.model.learned_state().items()}


@pytest.fixture(scope="module")
def parent(tiny_data, tmp_path_factory):
    """A trained tiny LoRA model saved as a folder, with the validation metric its weights reach."""
    cfg, catalogue, sets = tiny_data
    cfg = quick(cfg)
    backbone, model, encoder, trainer = build(cfg, catalogue)
    trainer.fit(sets["train"], sets["val"], progress=False)
    memory = encoder.encode_all()
    val = trainer.objective.evaluate(sets["val"], memory)
    extra = {"history_cap": cfg.data.history_cap, "trainer_state": TRAINER_STATE}
    table = embedding_table(catalogue.item_ids, memory)
    folder = save_text_model(
        tmp_path_factory.mktemp("parent") / "tm", model, cfg.textmodel, backbone.identity, table, extra
    )
    return cfg, folder, val


def test_warm_start_loads_the_parents_weights_before_the_first_step_then_trains(tiny_data, parent) -> None:
    _, catalogue, sets = tiny_data
    cfg, folder, parent_val = parent
    cfg = quick(cfg, seed=1)  # another seed: the fresh init differs from the parent's, so loading shows
    saved = load_file(str(folder / WEIGHTS_FILE))
    backbone, model, _, trainer = build(cfg, catalogue)
    assert any(not torch.equal(saved[n], w) for n, w in trainable(trainer).items())
    loaded = load_parent(folder, cfg.textmodel, backbone.identity, version="7")
    assert loaded.version == "7" and loaded.trainer_state == TRAINER_STATE
    with pytest.raises(WarmStartError, match="parent weights do not match the model"):  # never half a model
        trainer.warm_start({k: v for k, v in loaded.weights.items() if "lora" not in k}, {})
    trainer.warm_start(loaded.weights, loaded.trainer_state)
    first: dict[str, torch.Tensor] = {}
    loss = trainer.loss

    def recording(batch, memory, pooled=None):
        if not first:
            first.update(trainable(trainer))
            first.update({f"trainer.{k}": v.detach().clone() for k, v in trainer._own().items()})
        return loss(batch, memory, pooled)

    trainer.loss = recording
    result = trainer.fit(sets["train"], sets["val"], progress=False)
    # Before the first step: every trainable weight is the parent's, bit for bit, the trainer's scalars too.
    assert set(first) == set(saved) | {"trainer.bias", "trainer.offset_weight"}
    for name, weight in saved.items():
        assert torch.equal(first[name], weight), name
    assert float(first["trainer.bias"]) == 0.25 and float(first["trainer.offset_weight"]) == 1.5
    # No probe: the towers come from the parent. The starting point validates as the parent did.
    assert [e.phase for e in result.epochs] == ["init", "fine-tune"]
    assert result.epochs[0].val_metric == pytest.approx(parent_val, abs=1e-9)
    # Training proceeds: finite losses, the adapters move (the towers stay fixed: fine_tune_head_lr 0).
    tuned = result.epochs[1]
    assert tuned.steps == 3 and np.isfinite(tuned.train_loss) and result.steps == 3
    adapters = [n for n in saved if "lora" in n]
    assert adapters and any(not torch.equal(dict(model.named_parameters())[n].detach(), saved[n]) for n in adapters)
    # The curve a bench reads: (cumulative step, validation metric) per epoch.
    assert [(e.step, e.phase) for e in result.epochs] == [(0, "init"), (3, "fine-tune")]
    assert all("step" in e and "val_metric" in e for e in result.to_json()["epochs"])


def test_from_scratch_history_records_cumulative_steps(tiny_data) -> None:
    cfg, catalogue, sets = tiny_data
    *_, trainer = build(quick(cfg, patience=5), catalogue)
    result = trainer.fit(sets["train"], sets["val"], progress=False)
    assert [e.phase for e in result.epochs] == ["init", "probe", "probe", "fine-tune"]
    steps = [e.step for e in result.epochs]
    assert steps == list(np.cumsum([e.steps for e in result.epochs])) and steps[-1] == result.steps


def test_a_frozen_backbone_keeps_its_probe_from_the_parents_towers(tiny_data, tmp_path: Path) -> None:
    cfg, catalogue, sets = tiny_data
    cfg = quick(cfg)
    cfg.textmodel.trainable_top_layers = 0
    backbone, model, encoder, trainer = build(cfg, catalogue)
    trainer.fit(sets["train"], sets["val"], progress=False)
    table = embedding_table(catalogue.item_ids, encoder.encode_all())
    folder = save_text_model(tmp_path / "tm", model, cfg.textmodel, backbone.identity, table, {})
    child_backbone, _, _, child = build(quick(cfg, seed=1), catalogue)
    loaded = load_parent(folder, cfg.textmodel, child_backbone.identity)
    child.warm_start(loaded.weights, loaded.trainer_state)
    result = child.fit(sets["train"], sets["val"], progress=False)
    # With fine_tune_head_lr 0 the probe is the only phase that trains a frozen model: it stays, from the parent.
    assert [e.phase for e in result.epochs][:2] == ["init", "probe"] and result.steps > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("peft.r=2", "textmodel.peft.r differs: parent 4, configured 2"),
        ("peft.alpha=8", "textmodel.peft.alpha differs: parent 16.0, configured 8.0"),
        ("peft.method=ia3", "textmodel.peft.method differs: parent 'lora', configured 'ia3'"),
        ("trainable_top_layers=2", "textmodel.trainable_top_layers differs: parent 1, configured 2"),
        ("dim=8", "textmodel.dim differs: parent 16, configured 8"),
        ("pooling=last", "textmodel.pooling differs: parent 'mean', configured 'last'"),
        ("max_tokens=16", "textmodel.max_tokens differs: parent 32, configured 16"),
        (
            "prompt='{title}'",
            "textmodel.prompt differs: parent '{title}\\n{subcategory}\\n{body}', configured '{title}'",
        ),
        (
            "train.offset_feature=null",
            "textmodel.train.offset_feature differs: parent 'item_ctr_smoothed', configured None",
        ),
        ("standardize=false", "textmodel.standardize differs: parent True, configured False"),
    ],
)
def test_warm_start_refuses_another_definition(parent, override: str, message: str) -> None:
    cfg, folder, _ = parent
    other = load_config(None, [*_overrides(cfg), f"textmodel.{override}"])
    identity = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir).identity
    with pytest.raises(WarmStartError, match=r"^warm start from textmodel version 3: ") as info:
        load_parent(folder, other.textmodel, identity, version="3")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_warm_start_accepts_other_training_knobs(parent) -> None:
    cfg, folder, _ = parent
    other = load_config(
        None, [*_overrides(cfg), "textmodel.train.lr=0.5", "textmodel.train.epochs=9", "textmodel.train.negatives=2"]
    )
    identity = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir).identity
    assert load_parent(folder, other.textmodel, identity).weights


def test_warm_start_refuses_another_backbone(parent, model_cache: Path, tmp_path: Path) -> None:
    cfg, folder, _ = parent
    # The same architecture with other weights: the shapes would load, the identity must not.
    other = load_backbone(str(build_tiny_gpt2(model_cache, seed=1)), model_cache).identity
    with pytest.raises(
        WarmStartError, match=re.escape("backbone.name differs: parent 'tiny-gpt2-seed0', configured 'tiny-gpt2-seed1'")
    ):
        load_parent(folder, cfg.textmodel, other)
    # Same name, other content hash (e.g. a re-converted backbone): refused on the hash.
    copy = Path(shutil.copytree(folder, tmp_path / "tampered"))
    meta = json.loads((copy / META_FILE).read_text())
    meta["backbone"]["sha256"] = "0" * 64
    (copy / META_FILE).write_text(json.dumps(meta))
    ours = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir).identity
    with pytest.raises(
        WarmStartError, match=f"backbone.sha256 differs: parent '{'0' * 64}', configured '{ours.sha256}'"
    ):
        load_parent(copy, cfg.textmodel, ours)


def test_warm_start_from_a_folder_that_is_no_model_is_one_line(tmp_path: Path, parent) -> None:
    cfg, _, _ = parent
    identity = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir).identity
    with pytest.raises(WarmStartError, match=r"warm start from .*textmodel.json: not found"):
        load_parent(tmp_path, cfg.textmodel, identity)


def test_since_drops_exactly_the_earlier_train_impressions(tiny_data) -> None:
    cfg, _, sets = tiny_data
    train = sets["train"]
    rows = read_features(cfg.data.dir).filter(pl.col("split") == "train").collect()
    since = rows["ts"].sort()[rows.height // 2]  # a time that some impressions share: "at or after" is inclusive
    window = train_window(train, since)
    later = rows.filter(pl.col("ts") >= since)
    assert window.num_rows == later.height < train.num_rows
    assert len(window.impression_ids) == later["impression_id"].n_unique()
    assert set(window.impression_ids) == set(later["impression_id"])
    assert window.row_keys.sort("impression_id", "item_id").equals(
        later.select("impression_id", "item_id").sort("impression_id", "item_id")
    )
    assert train_window(train, None) is train
    with pytest.raises(
        TextDataError, match=re.escape("textmodel.train.since=2030-01-01T00:00:00+00:00: no train impression")
    ):
        train_window(train, datetime(2030, 1, 1, tzinfo=UTC))


def test_since_and_warm_start_config() -> None:
    cfg = load_config(None, ["textmodel.train.since=2024-01-05", "textmodel.train.warm_start=12"])
    assert cfg.textmodel.train.since == datetime(2024, 1, 5, tzinfo=UTC)  # a date: midnight UTC
    assert cfg.textmodel.train.warm_start == "12"  # a YAML int is the same version
    default = load_config(None)
    assert default.textmodel.train.since is None and default.textmodel.train.warm_start is None
    with pytest.raises(ValueError, match="expected 'champion' or a textmodel version number, got 'latest'"):
        load_config(None, ["textmodel.train.warm_start=latest"])


def _overrides(cfg) -> list[str]:
    """The tiny test config as overrides (to vary one definition field through the real loader)."""
    from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC

    return [
        *TINY_SYNTHETIC,
        *TEXT_OVERRIDES,
        f"data.dir={cfg.data.dir}",
        f"textmodel.cache_dir={cfg.textmodel.cache_dir}",
    ]


def test_a_side_network_parent_warm_starts_a_side_network_and_not_lora(tiny_data, tmp_path: Path) -> None:
    """The side network is saved, loaded and warm-started like the adapters: every weight bit for bit, and a
    configured model of another method is refused, naming the field."""
    cfg, catalogue, sets = tiny_data
    cfg = quick(cfg)
    cfg.textmodel.peft.method = "side"
    backbone, model, encoder, trainer = build(cfg, catalogue)
    trainer.fit(sets["train"], sets["val"], progress=False)
    memory = encoder.encode_all()
    table = embedding_table(catalogue.item_ids, memory)
    extra = {"history_cap": cfg.data.history_cap}
    folder = save_text_model(tmp_path / "tm", model, cfg.textmodel, backbone.identity, table, extra)
    saved = load_file(str(folder / WEIGHTS_FILE))
    assert any(".up." in n for n in saved)  # the side network's weights are in the artifact
    child_cfg = quick(cfg, seed=1)
    child_backbone, _, _, child = build(child_cfg, catalogue)
    child.warm_start(load_parent(folder, child_cfg.textmodel, child_backbone.identity).weights, {})
    for name, weight in saved.items():
        assert torch.equal(trainable(child)[name], weight), name
    lora_cfg = quick(cfg, seed=1)
    lora_cfg.textmodel.peft.method = "lora"
    with pytest.raises(
        WarmStartError, match=re.escape("textmodel.peft.method differs: parent 'side', configured 'lora'")
    ):
        load_parent(folder, lora_cfg.textmodel, child_backbone.identity)
