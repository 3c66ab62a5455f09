"""Checks that catch a broken optimisation: the loss is the gradient's objective, adapters start as a no-op,
a zero rate changes nothing, a small set can be overfitted, and the logged held-in loss is the model's own.

On the tiny GPT-2 (``tiny_data``), for LoRA (adapters inside the top layer) and the side network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textmodel.backbone import load_backbone
from textmodel.data import batches, sample_examples
from textmodel.model import build_text_model
from textmodel.train import ClickTrainer

METHODS = ["lora", "side"]


def auc_of(frame) -> float:
    from ranker.metrics import per_group_metrics, summarize

    return summarize(per_group_metrics(frame))["auc"]


def build(cfg, catalogue, method: str, **train):
    cfg = cfg.model_copy(deep=True)
    cfg.textmodel.peft.method = method
    for key, value in train.items():
        setattr(cfg.textmodel.train, key, value)
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"), total_steps=50)
    encoder.build_cache(progress=False)
    trainer = ClickTrainer(model, encoder, cfg.textmodel.train, torch.device("cpu"), auc_of)
    return cfg, model, encoder, trainer


def one_batch(data, size: int = 8):
    rng = np.random.default_rng(3)
    return next(batches(data, sample_examples(data, "softmax", 3, rng), size, rng, 1))


@pytest.mark.parametrize("method", METHODS)
def test_untrained_adapters_give_the_probes_vectors_and_loss(method: str, tiny_data) -> None:
    """Step 0: the adapters start as a no-op, so the full encoder's vectors are the probe's (head over the
    frozen pooled states) and the loss through the live encoder is the loss over the probe's memory."""
    cfg, catalogue, sets = tiny_data
    _, model, encoder, trainer = build(cfg, catalogue, method)
    trainer.probe(sets["train"], sets["val"], progress=False, epochs=2)
    model.eval()
    with torch.no_grad():
        probe_vectors = model.items.head(encoder.pooled_all())
        encoded = encoder.encode_all()
    torch.testing.assert_close(encoded, probe_vectors, atol=1e-6, rtol=0)
    batch = one_batch(sets["train"])
    with torch.no_grad():
        live = float(trainer.loss(batch, probe_vectors))  # candidates and history through the encoder
        probe = float(trainer.loss(batch, probe_vectors, encoder.pooled_all()))  # through the head only
    assert abs(live - probe) < 1e-5
    assert trainer.validation_loss(sets["val"], encoded) == pytest.approx(
        trainer.validation_loss(sets["val"], probe_vectors), abs=1e-6
    )


def test_live_history_gradient_is_the_gradient_of_the_whole_loss(tiny_data) -> None:
    """live_history null: the step's gradient equals autograd of the loss written out by hand, every item of
    the batch (history and candidates) encoded with gradients (brute force). live_history 0 (the memory only)
    gives the same loss but a different gradient: the one of the candidates' path alone."""
    cfg, catalogue, sets = tiny_data
    _, model, encoder, trainer = build(cfg, catalogue, "lora")
    model.eval()  # no dropout: both computations see the same function
    with torch.no_grad():
        memory = encoder.encode_all()
    batch = one_batch(sets["train"])
    adapters = model.adapter_parameters()

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.clone() for g in torch.autograd.grad(loss, adapters)]

    trainer.cfg.live_history = None
    live_loss = trainer.loss(batch, memory)
    live = grads(live_loss)
    vectors = encoder.encode(torch.arange(len(catalogue.item_ids)))  # every item, with gradients
    users = model.users(vectors[batch.history.clamp(min=0)], batch.history >= 0)
    scores = model.score(users, vectors[batch.candidates])
    if batch.offsets is not None:
        scores = scores + trainer.offset_weight * batch.offsets
    by_hand = torch.nn.functional.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long))
    assert float(live_loss.detach()) == pytest.approx(float(by_hand.detach()), abs=1e-6)
    for a, b in zip(live, grads(by_hand), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)
    trainer.cfg.live_history = 0
    stale_loss = trainer.loss(batch, memory)
    assert float(stale_loss.detach()) == pytest.approx(float(live_loss.detach()), abs=1e-6)
    stale = grads(stale_loss)
    assert max(float((a - b).abs().max()) for a, b in zip(live, stale, strict=True)) > 1e-6


def test_live_history_k_encodes_the_newest_k_history_items(tiny_data) -> None:
    cfg, catalogue, _ = tiny_data
    _, _, _, trainer = build(cfg, catalogue, "lora", live_history=2)
    history = torch.tensor([[-1, -1, 5, 6, 7], [-1, -1, -1, -1, 4], [1, 2, 3, 4, 5]])
    expected = [[False, False, False, True, True], [False, False, False, False, True], [False] * 3 + [True] * 2]
    assert trainer.objective.live(history, head_only=False).tolist() == expected
    assert trainer.objective.live(history, head_only=True).tolist() == (history >= 0).tolist()  # head-only: every item


@pytest.mark.parametrize("method", METHODS)
def test_zero_rate_keeps_validation_flat(method: str, tiny_data) -> None:
    """Rate 0 for adapters and towers: every fine-tuning epoch validates exactly where the probe ended, with
    the same held-in loss (the schema refuses lr 0: the check sets it on a copy)."""
    cfg, catalogue, sets = tiny_data
    _, _, _, trainer = build(cfg, catalogue, method, epochs=3, patience=5)
    trainer.cfg = trainer.cfg.model_copy(update={"lr": 0.0, "fine_tune_head_lr": 0.0})  # no validation
    result = trainer.fit(sets["train"], sets["val"], progress=False)
    probe = [e for e in result.epochs if e.phase == "probe"]
    best_probe = max(probe, key=lambda e: e.val_metric)
    fine = [e for e in result.epochs if e.phase == "fine-tune"]
    assert len(fine) == 3
    assert {e.val_metric for e in fine} == {best_probe.val_metric}
    assert {round(e.held_in_loss, 6) for e in fine} == {round(best_probe.held_in_loss, 6)}


@pytest.mark.parametrize(("method", "lr"), [("lora", 0.003), ("side", 0.01)])
def test_a_few_hundred_impressions_can_be_overfitted(method: str, lr: float, tiny_data) -> None:
    """Trained on 200 impressions for 20 epochs, the held-in training loss falls far below the probe's and keeps
    falling: the update is the gradient of the logged objective. (With the history read from a memory without
    gradients, the loss rose after each refresh on real data; here that path stalls near the probe's.)"""
    cfg, catalogue, sets = tiny_data
    train = sets["train"].subset(np.arange(len(sets["train"].impression_ids)) < 200)
    _, _, _, trainer = build(
        cfg,
        catalogue,
        method,
        epochs=20,
        max_steps_per_epoch=None,
        patience=20,
        lr=lr,
        fine_tune_head_lr=0.003,
        warmup_steps=1,
        probe_epochs=3,
        held_in_impressions=200,
        negatives=3,
    )
    result = trainer.fit(train, sets["val"], progress=False)
    probe_end = [e.held_in_loss for e in result.epochs if e.phase == "probe"][-1]
    fine = [e.held_in_loss for e in result.epochs if e.phase == "fine-tune"]
    assert len(fine) == 20
    assert probe_end > 1.0  # chance is log(4) = 1.386
    assert fine[-1] < 0.65 * probe_end  # measured: lora 0.608, side 0.460 (probe 1.064, 1.007)
    assert fine[-1] < min(fine[:5]) - 0.2


def test_every_epoch_logs_its_held_in_loss(tiny_data) -> None:
    """The held-in loss is the loss of the epoch's final weights on a fixed draw of train impressions: for the
    last epoch (the trainer restores the best, so a run with one fine-tuning epoch ends on it) it is recomputed
    from the trained model."""
    cfg, catalogue, sets = tiny_data
    _, model, encoder, trainer = build(cfg, catalogue, "side", epochs=1, held_in_impressions=50)
    result = trainer.fit(sets["train"], sets["val"], progress=False)
    assert all(e.held_in_loss is not None and np.isfinite(e.held_in_loss) for e in result.epochs)
    held = trainer.objective.held_in(sets["train"])
    assert len(held.impression_ids) == 50
    last = result.epochs[-1]
    if result.best_epoch == last.epoch:
        model.eval()
        with torch.no_grad():
            memory = encoder.encode_all()
        assert trainer.validation_loss(held, memory) == pytest.approx(last.held_in_loss, abs=1e-6)


def test_the_side_backbone_caches_the_top_layers_pooled_states_and_the_final_one(tiny_data) -> None:
    """``lower``: per item, the pooled output of each read layer below the top and, last, the pooled final
    (normed) state the probe reads, computed with a plain forward here; with a zero side network the pooled
    vector is that final state."""
    from textmodel.layers import pool

    cfg, catalogue, _ = tiny_data
    cfg = cfg.model_copy(deep=True)
    cfg.textmodel.trainable_top_layers = 2  # both layers of the tiny GPT-2: one raw output and the final state
    _, model, encoder, _ = build(cfg, catalogue, "side", seed=0)
    backbone = model.items.backbone
    assert backbone.top_layers == 2
    base = backbone.lower_model  # the frozen copy that runs (bf16 where lower_dtype auto picks it)
    index = torch.arange(6)
    ids, lengths = encoder.tokens.ids[index], encoder.tokens.lengths[index]
    width = int(lengths.max())
    ids, mask = ids[:, :width], (torch.arange(width)[None, :] < lengths[:, None]).long()
    states = backbone.lower(ids, mask)
    assert states.shape == (6, backbone.top_layers, base.config.hidden_size)
    with torch.no_grad():
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    final = pool(out.last_hidden_state.float(), mask, "mean")
    torch.testing.assert_close(states[:, -1], final, atol=1e-6, rtol=0)
    below = pool(out.hidden_states[1].float(), mask, "mean")  # the first layer's output (the raw residual stream)
    torch.testing.assert_close(states[:, 0], below, atol=1e-6, rtol=0)
    assert float((states[:, 0] - states[:, 1]).abs().max()) > 1e-3
    model.eval()
    with torch.no_grad():
        pooled = model.items.pooled(states, backbone.state_mask(mask))
    torch.testing.assert_close(pooled, states[:, -1], atol=0, rtol=0)


def test_fine_tuning_from_scratch_starts_at_the_untrained_towers(tiny_data) -> None:
    """``fine_tune_from: scratch``: with every rate 0 the fine-tuning epochs validate exactly where the untrained
    model did (the init epoch), not where the probe ended, and the probe's state is still kept as the frozen
    reference; with rates, the run trains adapters and towers together from there."""
    cfg, catalogue, sets = tiny_data
    _, _, _, trainer = build(cfg, catalogue, "side", epochs=2, patience=5, fine_tune_from="scratch")
    trainer.cfg = trainer.cfg.model_copy(update={"lr": 0.0, "fine_tune_head_lr": 0.0})
    result = trainer.fit(sets["train"], sets["val"], progress=False)
    init = result.epochs[0]
    best_probe = max((e for e in result.epochs if e.phase == "probe"), key=lambda e: e.val_metric)
    fine = [e for e in result.epochs if e.phase == "fine-tune"]
    assert init.phase == "init" and len(fine) == 2
    assert best_probe.val_metric != init.val_metric
    assert {e.val_metric for e in fine} == {init.val_metric}
    assert {round(e.held_in_loss, 6) for e in fine} == {round(init.held_in_loss, 6)}
    assert trainer.probe_state is not None and result.best_phase == "fine-tune"

    _, _, _, trained = build(cfg, catalogue, "side", epochs=2, patience=5, fine_tune_from="scratch", lr=0.01)
    result = trained.fit(sets["train"], sets["val"], progress=False)
    fine = [e for e in result.epochs if e.phase == "fine-tune"]
    assert all(e.held_in_loss < result.epochs[0].held_in_loss - 0.01 for e in fine)
