"""The registry of fine-tuning methods, by name: one table from name to a small builder.

peft's own methods (``lora``, ``dora``, ``ia3``, ``loha``, ``lokr``) return a ``PeftModel``; ours
(``adapter``, ``vpt``) and the two baselines (``linear``: the head only, ``full``: every parameter) return
the ``PreTrainedModel`` with the right parameters trainable. Target modules are derived from the model
(``targets.py``); the classification head is trained by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from .adapter import AdapterConfig, add_adapters
from .targets import head_module_names, peft_target_modules
from .vpt import VPTConfig, add_prompts


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    apply: Callable[[PreTrainedModel, dict[str, Any]], PreTrainedModel | PeftModel]
    is_peft: bool


def _peft_method(config_class: type[PeftConfig], defaults: dict[str, Any]) -> Callable:
    def apply(model: PreTrainedModel, options: dict[str, Any]) -> PeftModel:
        options = dict(options)
        train_head = options.pop("train_head", True)
        _check_options(config_class, options)
        settings = {
            **defaults,
            "target_modules": peft_target_modules(model),
            "modules_to_save": head_module_names(model) if train_head else None,
            **options,
        }
        return get_peft_model(model, config_class(**settings))

    return apply


def _own_method(config_class: type | None, add: Callable[[PreTrainedModel, Any], Any] | None) -> Callable:
    def apply(model: PreTrainedModel, options: dict[str, Any]) -> PreTrainedModel:
        options = dict(options)
        train_head = options.pop("train_head", True)
        if config_class is None and options:
            raise ValueError(f"this method takes no options but `train_head`, got {sorted(options)}")
        model.requires_grad_(False)
        if add is not None:  # the modules it adds are new, hence trainable; what they wrap stays frozen
            _check_options(config_class, options)
            add(model, config_class(**options))
        if train_head:
            for head in head_module_names(model):
                model.get_submodule(head).requires_grad_(True)
        return model

    return apply


def _full(model: PreTrainedModel, options: dict[str, Any]) -> PreTrainedModel:
    if options:
        raise ValueError(f"method 'full' takes no options, got {sorted(options)}")
    return model.requires_grad_(True)


def _check_options(config_class: type, options: dict[str, Any]) -> None:
    allowed = {f.name for f in dataclasses.fields(config_class)} | {"train_head"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown options {unknown} for {config_class.__name__}; allowed: {sorted(allowed)}")


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method("lora", "LoRA (peft): low-rank updates of the backbone's linear layers", _peft_method(LoraConfig, {"r": 8, "lora_alpha": 16}), True),
        Method("dora", "DoRA (peft LoraConfig(use_dora=True)): weight-decomposed LoRA", _peft_method(LoraConfig, {"r": 8, "lora_alpha": 16, "use_dora": True}), True),
        Method("ia3", "IA3 (peft): learned rescaling of the backbone's linear outputs", _peft_method(IA3Config, {"feedforward_modules": []}), True),
        Method("loha", "LoHa (peft): low-rank Hadamard-product updates", _peft_method(LoHaConfig, {"r": 8, "alpha": 16}), True),
        Method("lokr", "LoKr (peft): low-rank Kronecker-product updates", _peft_method(LoKrConfig, {"r": 8, "alpha": 16}), True),
        Method("adapter", "bottleneck adapters after attention and MLP sublayers (ours)", _own_method(AdapterConfig, add_adapters), False),
        Method("vpt", "visual prompt tuning, shallow or deep, for ViT-family models (ours)", _own_method(VPTConfig, add_prompts), False),
        Method("linear", "the classification head only", _own_method(None, None), False),
        Method("full", "every parameter (full fine-tuning)", _full, False),
    ]
}


def apply_method(model: PreTrainedModel, method: str, **options: Any) -> PreTrainedModel | PeftModel:
    """Prepare ``model`` for fine-tuning with ``method`` (a ``METHODS`` name); ``options`` go to the method's
    config (e.g. ``r=16`` for LoRA, ``num_prompts=4, deep=True`` for VPT, ``train_head=False``).
    Modifies ``model`` in place for our methods; returns the model to train."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {sorted(METHODS)}")
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"`model` must be a transformers PreTrainedModel, got {type(model).__name__}")
    return METHODS[method].apply(model, options)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


__all__ = ["METHODS", "AdapterConfig", "Method", "VPTConfig", "apply_method", "head_module_names", "peft_target_modules", "trainable_parameters"]
