"""A checkpointed run resumes step for step: from a checkpoint taken mid-epoch in the probe or in the fine-tuning,
a fresh trainer ends with the same step losses, the same validation log and the same weights as the run that was
never stopped. Also: the run's records go to JSON and back, and the fixed-seed validation loss is chunk-proof."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from textmodel.backbone import load_backbone
from textmodel.model import build_text_model
from textmodel.results import TrainResult
from textmodel.resume import load_state, save_state
from textmodel.train import ClickTrainer

CPU = torch.device("cpu")


def auc_of(frame) -> float:
    from ranker.metrics import per_group_metrics, summarize

    return summarize(per_group_metrics(frame))["auc"]


def schedule(cfg):
    """Two probe epochs and two fine-tuning epochs of 4 steps, a checkpoint every 3 steps (mid-epoch ones)."""
    cfg = cfg.model_copy(deep=True)
    t = cfg.textmodel.train
    t.probe_epochs, t.epochs, t.max_steps_per_epoch, t.patience, t.batch_size = 2, 2, 4, 5, 16
    t.distributed.checkpoint_every_steps = 3
    return cfg


def trainer_for(cfg, catalogue, checkpointer=None) -> ClickTrainer:
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, CPU, total_steps=8)
    encoder.build_cache(progress=False)
    return ClickTrainer(model, encoder, cfg.textmodel.train, CPU, auc_of, checkpointer=checkpointer)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """The reference run, every checkpoint it handed out written to disk and read back (as Ray Train would)."""
    cfg, catalogue, sets = tiny_data
    cfg = schedule(cfg)
    root = tmp_path_factory.mktemp("checkpoints")
    folders: list[Path] = []

    def keep(state: dict) -> None:
        folders.append(save_state(state, root / f"checkpoint_{len(folders):03d}").parent)

    trainer = trainer_for(cfg, catalogue, keep)
    result = trainer.fit(sets["train"], sets["val"], progress=False)
    return cfg, result, trainer.trainable_state(), [load_state(f) for f in folders]


def pick(states: list[dict], phase: str) -> dict:
    """The first checkpoint taken inside an epoch of ``phase`` (not at an epoch's end)."""
    return next(s for s in states if s["cursor"]["phase"] == phase and s["cursor"]["step_in_epoch"] > 0)


def test_checkpoints_are_taken_at_each_epoch_end_and_every_n_steps(uninterrupted) -> None:
    _, result, _, states = uninterrupted
    cursors = [s["cursor"] for s in states]
    ends = [c for c in cursors if c["step_in_epoch"] == 0]
    assert len(ends) == 4  # 2 probe epochs + 2 fine-tuning epochs, no early stop (patience 5)
    steps = [s["result"]["steps"] for s in states if s["cursor"]["step_in_epoch"] > 0]
    assert steps and all(n % 3 == 0 for n in steps)
    assert states[-1]["result"]["steps"] == result.steps


@pytest.mark.parametrize("phase", ["probe", "fine-tune"])
def test_a_resumed_run_takes_the_same_steps_and_ends_with_the_same_weights(tiny_data, uninterrupted, phase) -> None:
    _, catalogue, sets = tiny_data
    cfg, reference, final, states = uninterrupted
    state = pick(states, phase)
    taken = state["result"]["steps"]
    assert 0 < taken < reference.steps
    trainer = trainer_for(cfg, catalogue)
    resumed = trainer.fit(sets["train"], sets["val"], progress=False, resume=state)
    assert resumed.steps == reference.steps
    np.testing.assert_allclose(resumed.step_losses, reference.step_losses, rtol=1e-6, atol=0)
    assert [e.phase for e in resumed.epochs] == [e.phase for e in reference.epochs]
    np.testing.assert_allclose(
        [e.val_metric for e in resumed.epochs], [e.val_metric for e in reference.epochs], rtol=1e-6
    )
    assert (resumed.best_epoch, resumed.best_phase) == (reference.best_epoch, reference.best_phase)
    weights = trainer.trainable_state()
    assert weights.keys() == final.keys()
    for name, value in final.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-7, msg=name)
    again = trainer_for(cfg, catalogue).fit(sets["train"], sets["val"], progress=False, resume=state)
    assert again.step_losses == resumed.step_losses  # the checkpoint was not consumed by resuming from it


def test_train_result_goes_to_json_and_back(uninterrupted) -> None:
    _, result, _, _ = uninterrupted
    back = TrainResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back.to_json() == json.loads(json.dumps(result.to_json()))
    assert back.epochs[1].val_loss is not None and back.step_losses == result.step_losses


def test_validation_loss_is_fixed_and_does_not_depend_on_the_chunk(tiny_data) -> None:
    cfg, catalogue, sets = tiny_data
    trainer = trainer_for(schedule(cfg), catalogue)
    memory = trainer.encoder.encode_all()
    whole = trainer.validation_loss(sets["val"], memory, chunk=100_000)
    assert whole is not None and np.isfinite(whole) and whole > 0
    assert trainer.validation_loss(sets["val"], memory, chunk=100_000) == whole  # same examples every call
    assert trainer.validation_loss(sets["val"], memory, chunk=7) == pytest.approx(whole, rel=1e-6)
