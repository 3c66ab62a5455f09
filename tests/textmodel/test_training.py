"""Every PEFT method trains, saves and loads back to identical scores; the layer cache changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from textmodel.artifact import embedding_table, load_text_model, save_text_model
from textmodel.backbone import load_backbone
from textmodel.model import build_text_model
from textmodel.peft_methods import PEFT_METHODS
from textmodel.scoring import TextScorer, score_impressions, scored_frame
from textmodel.train import ClickTrainer


def auc_of(frame) -> float:
    from ranker.metrics import per_group_metrics, summarize

    return summarize(per_group_metrics(frame))["auc"]


def trained(cfg, catalogue, sets, method: str):
    cfg = cfg.model_copy(deep=True)
    cfg.textmodel.peft.method = method
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"), total_steps=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    encoder.build_cache(progress=False)
    result = ClickTrainer(model, encoder, cfg.textmodel.train, torch.device("cpu"), auc_of).fit(
        sets["train"], sets["val"], progress=False
    )
    return cfg, backbone, model, encoder, before, result


def save(tmp_path: Path, cfg, catalogue, backbone, model, memory) -> Path:
    return save_text_model(
        tmp_path / "tm",
        model,
        cfg.textmodel,
        backbone.identity,
        embedding_table(catalogue.item_ids, memory),
        {"history_cap": cfg.data.history_cap},
    )


@pytest.mark.parametrize("method", sorted(PEFT_METHODS))
def test_method_trains_saves_and_loads(method: str, tiny_data, tmp_path: Path) -> None:
    cfg, catalogue, sets = tiny_data
    cfg, backbone, model, encoder, before, result = trained(cfg, catalogue, sets, method)
    assert result.steps > 0 and all(np.isfinite(e.train_loss) for e in result.epochs[1:])
    best = result.epochs[result.best_epoch]
    best_of_phase = max(e.val_metric for e in result.epochs if e.phase == best.phase)
    assert result.best_val_metric == best.val_metric == best_of_phase
    adapters = {n for n in before if "proj" not in n and "users" not in n and "log_scale" not in n}
    assert adapters, "the method added no trainable backbone weights"
    assert [e.phase for e in result.epochs][:2] == ["init", "probe"]
    assert any(e.phase == "fine-tune" for e in result.epochs)
    if result.epochs[result.best_epoch].phase == "fine-tune":  # the restored best state has moved adapters
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in adapters)
    memory = encoder.encode_all()
    scores = score_impressions(model, memory, sets["test"])
    folder = save(tmp_path, cfg, catalogue, backbone, model, memory)
    loaded = load_text_model(folder, cfg.textmodel.cache_dir, torch.device("cpu"))
    reloaded_memory = torch.from_numpy(loaded.table["vector"].to_numpy())
    np.testing.assert_array_equal(score_impressions(loaded.model, reloaded_memory, sets["test"]), scores)
    # The loaded model re-encodes items from text to the same vectors (a fresh, uncached path).
    fresh = TextScorer(loaded, torch.device("cpu")).encode_texts(catalogue.texts[:20])
    torch.testing.assert_close(fresh, memory[:20], atol=1e-5, rtol=0)


def test_cached_path_equals_uncached_path(tiny_data) -> None:
    """Tolerance 1e-5 (float32): the cache holds exactly the tensors the lower layers produce."""
    cfg, catalogue, sets = tiny_data
    cfg, _, model, encoder, _, _ = trained(cfg, catalogue, sets, "lora")
    model.eval()
    index = torch.arange(len(catalogue.item_ids))
    with torch.no_grad():
        cached = encoder.encode(index)
        cache, encoder.cache = encoder.cache, None
        uncached = encoder.encode(index)
        encoder.cache = cache
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=0)
    # And a full training loss step agrees with and without the cache.
    from textmodel.data import batches, sample_examples

    rng = np.random.default_rng(0)
    batch = next(batches(sets["train"], sample_examples(sets["train"], "softmax", 3, rng), 8, rng, 1))
    trainer = ClickTrainer(model, encoder, cfg.textmodel.train, torch.device("cpu"), auc_of)
    memory = encoder.encode_all()
    with torch.no_grad():
        with_cache = trainer.loss(batch, memory)
        encoder.cache = None
        without = trainer.loss(batch, memory)
    assert abs(float(with_cache) - float(without)) < 1e-5


def test_scorer_matches_bulk_scores_and_encodes_unknown_items(tiny_data, tmp_path: Path) -> None:
    cfg, catalogue, sets = tiny_data
    cfg, backbone, model, encoder, _, _ = trained(cfg, catalogue, sets, "lora")
    memory = encoder.encode_all()
    folder = save(tmp_path, cfg, catalogue, backbone, model, memory)
    scorer = TextScorer(load_text_model(folder, cfg.textmodel.cache_dir, torch.device("cpu")), torch.device("cpu"))
    test = sets["test"]
    bulk = scored_frame(test, score_impressions(model, memory, test))
    first = test.impression_ids[0]
    rows = bulk.filter(bulk["impression_id"] == first)
    history = [catalogue.item_ids[i] for i in test.history[0] if i >= 0]
    online = scorer.scores(history, rows["item_id"].to_list())
    np.testing.assert_allclose(online, rows["score"].to_numpy(), atol=1e-5)
    new = scorer.scores(history, ["brand-new"], {"brand-new": "The bold story of sports"})
    assert new.shape == (1,) and np.isfinite(new).all()
    with pytest.raises(KeyError, match="'nope' is not in the embedding table and has no text"):
        scorer.scores(history, ["nope"])


def test_memory_refresh_steps_re_encodes_the_history_memory_mid_epoch(tiny_data) -> None:
    """memory_refresh_steps=2: the loss sees a fresh memory every 2 fine-tuning steps, equal to encode_all()."""
    cfg, catalogue, sets = tiny_data
    cfg = cfg.model_copy(deep=True)
    t = cfg.textmodel.train
    t.memory_refresh_steps, t.epochs, t.max_steps_per_epoch, t.probe_epochs, t.patience = 2, 1, 5, 0, 0
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"), total_steps=5)
    encoder.build_cache(progress=False)
    trainer = ClickTrainer(model, encoder, t, torch.device("cpu"), auc_of)
    seen: list[torch.Tensor] = []
    loss = trainer.loss

    def recording(batch, memory, pooled=None):
        seen.append(memory)
        if pooled is None and len(seen) % 2 == 1:  # just refreshed: what the current adapters encode
            training = model.training
            model.eval()
            torch.testing.assert_close(memory, encoder.encode_all(), atol=1e-6, rtol=0)
            model.train(training)
        return loss(batch, memory, pooled)

    trainer.loss = recording
    trainer.fit(sets["train"], sets["val"], progress=False)
    assert len(seen) == 5
    same = [seen[i] is seen[i + 1] for i in range(4)]
    assert same == [True, False, True, False]  # steps 1-2 share one memory, 3-4 the next, 5 a third


def test_dot_similarity_trains_saves_and_scores_the_same_everywhere(tiny_data, tmp_path: Path) -> None:
    """similarity=dot: vectors keep their length (not unit), and the saved model, the table-only scorer and the
    bulk scores agree."""
    cfg, catalogue, sets = tiny_data
    cfg = cfg.model_copy(deep=True)
    cfg.textmodel.similarity = "dot"
    cfg, backbone, model, encoder, _, result = trained(cfg, catalogue, sets, "side")
    assert np.isfinite(result.best_val_metric)
    memory = encoder.encode_all()
    norms = memory.norm(dim=-1)
    assert float((norms - 1).abs().max()) > 1e-3  # not normalised
    scores = score_impressions(model, memory, sets["test"])
    folder = save(tmp_path, cfg, catalogue, backbone, model, memory)
    loaded = load_text_model(folder, cfg.textmodel.cache_dir, torch.device("cpu"))
    reloaded = torch.from_numpy(loaded.table["vector"].to_numpy().copy())
    np.testing.assert_array_equal(score_impressions(loaded.model, reloaded, sets["test"]), scores)
    table_only = TextScorer.table_only(folder, torch.device("cpu"))
    test = sets["test"]
    rows = scored_frame(test, scores).filter(pl.col("impression_id") == test.impression_ids[0])
    history = [catalogue.item_ids[i] for i in test.history[0] if i >= 0]
    np.testing.assert_allclose(table_only.scores(history, rows["item_id"].to_list()), rows["score"].to_numpy())
