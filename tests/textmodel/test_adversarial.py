"""FGM / PGD perturbations against hand-computed ones; adversarial training runs and adds the perturbed loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textmodel.adversarial import adversarial_loss
from textmodel.backbone import load_backbone
from textmodel.encoder import BucketStates
from textmodel.model import build_text_model
from textmodel.train import ClickTrainer


def _linear_case():
    """Two items, token states (2, 3, 2); the second item has one padding position. loss = sum(w * h)."""
    states = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    seen: list[torch.Tensor] = []

    def loss_fn(parts):
        seen.append(parts[0].states.detach().clone())
        return (parts[0].states * w).sum()

    leaf = states.clone().requires_grad_(True)
    parts = [BucketStates(torch.arange(2), leaf, mask)]
    return states, mask, w, loss_fn, parts, leaf, seen


def _expected_delta(states, mask, w, epsilon):
    """By hand: gradient = w at real tokens, 0 at padding; delta_i = eps * ||h_i|| * g_i / ||g_i||."""
    g = w.expand_as(states) * mask[..., None]
    h_norm = states.flatten(1).norm(dim=1)  # ||h_1|| = 5, ||h_2|| = sqrt(52)
    g_norm = g.flatten(1).norm(dim=1)  # ||g_1|| = 1, ||g_2|| = sqrt(2)
    return epsilon * (h_norm / g_norm)[:, None, None] * g


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_perturbation_is_the_hand_computed_one(method: str) -> None:
    states, mask, w, loss_fn, parts, leaf, seen = _linear_case()
    clean = loss_fn(parts)
    adv = adversarial_loss(loss_fn, parts, clean, [leaf], method, epsilon=0.1, steps=4)
    delta = seen[-1] - states  # the perturbed input of the last call
    want = _expected_delta(states, mask, w, 0.1)
    # With a linear loss the gradient never changes direction, so PGD ends on the ball's edge along it: = FGM.
    assert torch.allclose(delta, want, atol=1e-6)
    assert torch.equal(delta[1, 2], torch.zeros(2))  # padding is never perturbed
    assert torch.allclose(delta.flatten(1).norm(dim=1), 0.1 * states.flatten(1).norm(dim=1), atol=1e-6)
    assert float((adv - clean).detach()) == pytest.approx(float((w * want).sum()), abs=1e-5)  # linear: exact
    assert float(adv.detach()) > float(clean.detach())


def test_pgd_stays_in_the_ball_on_a_curved_loss() -> None:
    states = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 4, dtype=torch.long)
    leaf = states.clone().requires_grad_(True)
    parts = [BucketStates(torch.arange(3), leaf, mask)]
    seen = []

    def loss_fn(p):
        seen.append(p[0].states.detach().clone())
        return torch.sin(p[0].states).pow(2).sum()

    clean = loss_fn(parts)
    adv = adversarial_loss(loss_fn, parts, clean, [leaf], "pgd", epsilon=0.05, steps=5)
    norms = (seen[-1] - states).flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.05 * states.flatten(1).norm(dim=1) + 1e-6)
    assert float(adv.detach()) > float(clean.detach())
    assert len(seen) == 1 + 4 + 1  # clean, 4 inner re-evaluations, the final perturbed loss


def test_unknown_method_is_refused() -> None:
    _, _, _, loss_fn, parts, leaf, _ = _linear_case()
    with pytest.raises(ValueError, match=r"adversarial\.method"):
        adversarial_loss(loss_fn, parts, loss_fn(parts), [leaf], "fsgm", 0.1, 1)


def _trainer(cfg, catalogue, method: str):
    cfg = cfg.model_copy(deep=True)
    cfg.textmodel.train.adversarial.method = method
    cfg.textmodel.train.adversarial.epsilon = 0.05
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"), total_steps=8)
    encoder.build_cache(progress=False)
    trainer = ClickTrainer(model, encoder, cfg.textmodel.train, torch.device("cpu"), lambda f: 0.5)
    return trainer, encoder


@pytest.mark.parametrize("pooled", [False, True], ids=["adapters", "head"])
def test_adversarial_training_adds_the_perturbed_loss(tiny_data, pooled: bool) -> None:
    from textmodel.data import batches, sample_examples

    cfg, catalogue, sets = tiny_data
    t = cfg.textmodel.train
    ex = sample_examples(sets["train"], t.objective, t.negatives, np.random.default_rng(0))
    batch = next(batches(sets["train"], ex, 8, np.random.default_rng(0), 1))
    losses = {}
    for method in ("none", "fgm", "pgd"):
        trainer, encoder = _trainer(cfg, catalogue, method)
        memory = encoder.encode_all()
        source = encoder.pooled_all() if pooled else None
        loss = trainer.loss(batch, memory, source)
        loss.backward()  # gradients reach the trainable weights through both terms
        grads = [p.grad for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        losses[method] = float(loss)
    # clean + adversarial: more than twice the clean loss (the perturbation raises the loss).
    assert losses["fgm"] > 2 * losses["none"]
    assert losses["pgd"] > 2 * losses["none"]


def test_fine_tuned_state_is_exported_when_fine_tuning_is_configured(tiny_data) -> None:
    """The best fine-tune epoch is kept even when a probe epoch validated higher (the adapters are the point)."""
    cfg, catalogue, sets = tiny_data
    trainer, _ = _trainer(cfg, catalogue, "none")
    calls = iter([0.5, 0.9, 0.8, 0.6, 0.7, 0.65, 0.6, 0.6, 0.6, 0.6])  # init, probe..., then fine-tune epochs
    trainer.objective.val_metric = lambda frame: next(calls)
    trainer.cfg.probe_epochs, trainer.cfg.epochs, trainer.cfg.patience = 2, 2, 5
    result = trainer.fit(sets["train"], sets["val"], progress=False)
    phases = [e.phase for e in result.epochs]
    assert phases == ["init", "probe", "probe", "fine-tune", "fine-tune"]
    assert result.best_phase == "fine-tune" and result.best_val_metric == pytest.approx(0.7)
    assert result.best_by_phase == {"init": 0.5, "probe": 0.9, "fine-tune": 0.7}
