"""Backbone loading: local folders only, identities, clear errors, and an exact layer split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textmodel.backbone import BackboneError, build_tiny_gpt2, load_backbone
from textmodel.layers import SplitBackbone


def tiny_llama(folder: Path) -> Path:
    """A 3-layer Llama (the SmolLM2 architecture) built from a config, with the tiny byte tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_src = build_tiny_gpt2(folder.parent / "tok-src")
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tok_src).save_pretrained(folder)
    return folder


def test_tiny_gpt2_is_deterministic_and_offline(model_cache: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = load_backbone("tiny-gpt2", model_cache)
    b = load_backbone("tiny-gpt2", tmp_path / "elsewhere")  # rebuilt from scratch, same seed
    assert a.identity == b.identity
    assert a.identity.model_type == "gpt2" and a.identity.num_layers == 2 and len(a.identity.sha256) == 64
    ids = a.tokenizer(["Toy Story (1995)"])["input_ids"][0]
    assert len(ids) == len("Toy Story (1995)")  # byte-level: one token per ASCII character


def test_local_folder_by_path(model_cache: Path, tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "llama")
    bb = load_backbone(str(folder), model_cache)
    assert bb.identity.model_type == "llama" and bb.identity.num_layers == 3


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "llama"])
def test_layer_split_is_exact_for_every_cut(backbone: str, model_cache: Path, tmp_path: Path) -> None:
    name = "tiny-gpt2" if backbone == "tiny-gpt2" else str(tiny_llama(tmp_path / "llama"))
    bb = load_backbone(name, model_cache)
    for k in range(bb.identity.num_layers + 1):
        assert SplitBackbone(bb.model, k).check_exact(len(bb.tokenizer), atol=1e-5) <= 1e-5, k


def test_missing_folder_is_named(model_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"nope: backbone folder not found"):
        load_backbone(str(tmp_path / "nope"), model_cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match=r"no config\.json"):
        load_backbone(str(tmp_path / "empty"), model_cache)


def test_encoder_only_model_is_refused(model_cache: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(vocab_size=258, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(build_tiny_gpt2(model_cache)).save_pretrained(folder)
    with pytest.raises(BackboneError, match="not a decoder-only causal LM"):
        load_backbone(str(folder), model_cache)


def test_too_many_trainable_layers_is_named(model_cache: Path) -> None:
    bb = load_backbone("tiny-gpt2", model_cache)
    with pytest.raises(ValueError, match="trainable_top_layers=5: the backbone has 2 layers"):
        SplitBackbone(bb.model, 5)


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "llama"])
def test_bf16_lower_layers_stay_close_and_leave_the_rest_float32(backbone: str, model_cache: Path, tmp_path) -> None:
    """A bf16 copy of the frozen layers: float32 out, the base model untouched, outputs within bf16 rounding."""
    import torch

    name = "tiny-gpt2" if backbone == "tiny-gpt2" else str(tiny_llama(tmp_path / "llama"))
    bb = load_backbone(name, model_cache)
    ids = torch.tensor([[5, 9, 14, 20, 33, 41], [7, 8, 9, 10, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    for k in range(bb.identity.num_layers):
        exact = SplitBackbone(bb.model, k)
        fast = SplitBackbone(bb.model, k)
        fast.set_lower_dtype(torch.bfloat16)
        want, got = exact.lower(ids, mask), fast.lower(ids, mask)
        assert got.dtype == torch.float32
        rel = float((got - want)[mask.bool()].norm() / want[mask.bool()].norm())
        assert rel < 0.02, (k, rel)
        assert all(p.dtype == torch.float32 for p in bb.model.parameters())  # the base keeps float32 weights
        if fast.upper_model is not None:
            assert all(p.dtype == torch.float32 for p in fast.upper_model.parameters())
