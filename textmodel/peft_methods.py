"""One dispatch table from ``textmodel.peft.method`` to the function that adapts the upper layers.

Each entry takes the upper model (the top layers, see :mod:`textmodel.layers`) with every weight frozen
and returns the module to train: a PEFT model for ``lora``, ``adalora``, ``ia3`` and ``prefix``, the
same model with its top layers unfrozen for ``full``, and for ``side`` the side network that
:class:`textmodel.side.SideBackbone` put in the upper model's place, unfrozen.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from conf import PeftConfig
from textmodel.backbone import BackboneError

# Per architecture: attention projections for LoRA-style methods, and (targets, feed-forward) for IA3.
_LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
_IA3_TARGETS = {
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "gpt_neox": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
}
# Llama-style attention is shared by many families; they take the llama defaults.
_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "smollm3"}
_CONV1D = {"gpt2"}  # GPT-2 stores Linear layers transposed (Conv1D): adapters need fan_in_fan_out


def _family(model_type: str) -> str:
    return "llama" if model_type in _LLAMA_LIKE else model_type


def _lora_targets(cfg: PeftConfig, model_type: str) -> list[str]:
    if cfg.target_modules:
        return list(cfg.target_modules)
    try:
        return _LORA_TARGETS[_family(model_type)]
    except KeyError:
        raise BackboneError(
            f"no default adapter targets for model type {model_type!r}: set textmodel.peft.target_modules"
        ) from None


def _lora(upper: nn.Module, cfg: PeftConfig, model_type: str, total_steps: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        upper,
        LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=_lora_targets(cfg, model_type),
            fan_in_fan_out=model_type in _CONV1D,
        ),
    )


def _adalora(upper: nn.Module, cfg: PeftConfig, model_type: str, total_steps: int) -> nn.Module:
    from peft import AdaLoraConfig, get_peft_model

    # AdaLoRA starts with more rank than it keeps and prunes on a schedule inside ``total_steps``.
    tinit, tfinal = max(1, total_steps // 5), max(1, total_steps // 5)
    return get_peft_model(
        upper,
        AdaLoraConfig(
            init_r=max(cfg.r + 1, int(cfg.r * 1.5)),
            target_r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=_lora_targets(cfg, model_type),
            fan_in_fan_out=model_type in _CONV1D,
            total_step=max(total_steps, tinit + tfinal + 1),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=1,
        ),
    )


def _ia3(upper: nn.Module, cfg: PeftConfig, model_type: str, total_steps: int) -> nn.Module:
    from peft import IA3Config, get_peft_model

    if cfg.target_modules:
        targets, feedforward = list(cfg.target_modules), []
    else:
        try:
            targets, feedforward = _IA3_TARGETS[_family(model_type)]
        except KeyError:
            raise BackboneError(
                f"no default IA3 targets for model type {model_type!r}: set textmodel.peft.target_modules"
            ) from None
    return get_peft_model(
        upper,
        IA3Config(target_modules=targets, feedforward_modules=feedforward, fan_in_fan_out=model_type in _CONV1D),
    )


def _prefix(upper: nn.Module, cfg: PeftConfig, model_type: str, total_steps: int) -> nn.Module:
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    # FEATURE_EXTRACTION on the base model: SEQ_CLS refuses models without past key values (peft 0.21).
    return get_peft_model(
        upper, PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=cfg.prefix_tokens)
    )


def _full(upper: nn.Module, cfg: PeftConfig, model_type: str, total_steps: int) -> nn.Module:
    for param in upper.parameters():
        param.requires_grad_(True)
    return upper


def _side(side: nn.Module, cfg: PeftConfig, model_type: str, total_steps: int) -> nn.Module:
    # The side network (built with the backbone that feeds it: textmodel.side) is all trainable.
    for param in side.parameters():
        param.requires_grad_(True)
    return side


AdaptFn = Callable[[nn.Module, PeftConfig, str, int], nn.Module]
PEFT_METHODS: dict[str, AdaptFn] = {
    "lora": _lora,
    "adalora": _adalora,
    "ia3": _ia3,
    "prefix": _prefix,
    "full": _full,
    "side": _side,
}


def adapt(upper: nn.Module, cfg: PeftConfig, model_type: str, total_steps: int) -> nn.Module:
    """Freeze ``upper`` and apply ``cfg.method``; returns the module whose trainable weights are the adapters."""
    if cfg.method not in PEFT_METHODS:
        raise ValueError(f"textmodel.peft.method: unknown method {cfg.method!r} (choose from {sorted(PEFT_METHODS)})")
    for param in upper.parameters():
        param.requires_grad_(False)
    return PEFT_METHODS[cfg.method](upper, cfg, model_type, total_steps)


def step_hook(module: nn.Module, global_step: int) -> None:
    """Per-step bookkeeping some methods need after ``backward`` (AdaLoRA's rank allocation)."""
    base = getattr(module, "base_model", None)
    if base is not None and hasattr(base, "update_and_allocate"):
        base.update_and_allocate(global_step)
