"""The registry of fine-tuning methods: one table from name to a small builder and the method's capabilities.

peft's own methods (``lora``, ``dora``, ``ia3``, ``loha``, ``lokr``) return a ``PeftModel``; ours
(``adapter``, ``vpt``) and the two baselines (``linear``: the head only, ``full``: every parameter) return
the ``PreTrainedModel`` with the right parameters trainable. Target modules are derived from the model
(``targets.py``); the classification head is trained by default.

What a method can do is data in its row, so that no other module tests a method's name: which base models
it applies to (``architectures``), what it trains (``trains``, for model cards), whether its update folds into
the base weights (``mergeable``: a merged export is then a plain ``transformers`` model) and how a smoothing
folder holds it (``saved``). A new method is one row.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from .adapter import AdapterConfig, add_adapters, unfit_for_adapters
from .peft_layers import NotMergeable, carry_base_layer_attributes, is_peft_type, merged_copy
from .targets import adaptable_layers, backbone_module_names, head_module_names, peft_target_modules
from .vpt import VPTConfig, add_prompts, unfit_for_prompts


class Saved(enum.Enum):
    """How a smoothing folder holds a method's model; the value says it in words."""

    PEFT_ADAPTER = "peft's adapter files (adapter_config.json, adapter_model.safetensors) beside the base model's name"
    TRAINABLE_STATE = "its trainable parameters and their modules' buffers (smoothing_weights.safetensors)"
    WHOLE_MODEL = "the whole model (transformers' model.safetensors)"


class Trains(enum.Enum):
    """What fine-tuning with a method trains; the value says it in words."""

    EVERY_PARAMETER = "every parameter of the base model"
    HEAD = "the classification head only, the rest of the base model frozen"
    ADDED_PARAMETERS = "the parameters it adds (and the classification head by default), the base model frozen"


@dataclass(frozen=True)
class Architectures:
    """The base models a method applies to: ``description`` in words (it completes "needs ..."), and
    ``unfit(model)``, the reason a given model does not qualify, or None when it does."""

    description: str
    unfit: Callable[[PreTrainedModel], str | None]


def _unfit_unless(check: Callable[[PreTrainedModel], Any]) -> Callable[[PreTrainedModel], str | None]:
    """An ``Architectures.unfit`` from a ``check(model)`` that raises a ValueError saying why it does not fit."""

    def unfit(model: PreTrainedModel) -> str | None:
        try:
            check(model)
        except ValueError as error:
            return str(error)
        return None

    return unfit


ANY_CLASSIFIER = Architectures("any image classifier", lambda model: None)
PEFT_LAYERS = Architectures("linear or ungrouped convolutional layers in the backbone", _unfit_unless(adaptable_layers))
CLASSIFICATION_HEAD = Architectures("a classification head outside the backbone", _unfit_unless(head_module_names))
TRANSFORMER_BACKBONE = Architectures(
    "a transformer backbone (attention and MLP sublayers of linear layers)", unfit_for_adapters
)
VIT_FAMILY = Architectures(
    "a ViT-family model (a [CLS] token and a stack of transformer layers, no relative position biases)",
    unfit_for_prompts,
)


@dataclass(frozen=True)
class Method:
    """One row of ``METHODS``.

    Args:
        name: the method's name, as ``SmoothingConfig.peft_method`` records it.
        description: one line for model cards.
        apply: (model, options) -> the model to train; see ``apply_method``.
        architectures: the base models it applies to.
        trains: what fine-tuning with it trains.
        mergeable: whether its update folds into the base model's weights, so that a merged export is a plain
            ``transformers`` model (peft's methods, ``linear``, ``full``; not modules of our own).
        saved: how a smoothing folder holds the trained model.
    """

    name: str
    description: str
    apply: Callable[[PreTrainedModel, dict[str, Any]], PreTrainedModel | PeftModel]
    architectures: Architectures
    trains: Trains
    mergeable: bool
    saved: Saved

    def applies_to(self, model: PreTrainedModel) -> bool:
        """Whether this method applies to the base ``model``."""
        return self.architectures.unfit(model) is None

    def check_applies(self, model: PreTrainedModel) -> None:
        """Raise a ValueError naming the methods that do apply when this one does not apply to ``model``."""
        reason = self.architectures.unfit(model)
        if reason is not None:
            raise ValueError(
                f"method '{self.name}' does not apply to {type(model).__name__} (model type "
                f"'{model.config.model_type}'): it needs {self.architectures.description}, and {reason}; the methods "
                f"that apply to it are {applicable_methods(model)}"
            )


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
        return carry_base_layer_attributes(get_peft_model(model, config_class(**settings)))

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


_LORA = {"r": 8, "lora_alpha": 16}
_ADDED, _HEAD, _ALL = Trains.ADDED_PARAMETERS, Trains.HEAD, Trains.EVERY_PARAMETER
_PEFT, _OURS, _WHOLE = Saved.PEFT_ADAPTER, Saved.TRAINABLE_STATE, Saved.WHOLE_MODEL
METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        # name, description, builder, architectures, trains, mergeable, saved
        Method("lora", "LoRA (peft): low-rank updates of the backbone's linear layers",
               _peft_method(LoraConfig, _LORA), PEFT_LAYERS, _ADDED, True, _PEFT),
        Method("dora", "DoRA (peft LoraConfig(use_dora=True)): weight-decomposed LoRA",
               _peft_method(LoraConfig, {**_LORA, "use_dora": True}), PEFT_LAYERS, _ADDED, True, _PEFT),
        Method("ia3", "IA3 (peft): learned rescaling of the backbone's linear outputs",
               _peft_method(IA3Config, {"feedforward_modules": []}), PEFT_LAYERS, _ADDED, True, _PEFT),
        Method("loha", "LoHa (peft): low-rank Hadamard-product updates",
               _peft_method(LoHaConfig, {"r": 8, "alpha": 16}), PEFT_LAYERS, _ADDED, True, _PEFT),
        Method("lokr", "LoKr (peft): low-rank Kronecker-product updates",
               _peft_method(LoKrConfig, {"r": 8, "alpha": 16}), PEFT_LAYERS, _ADDED, True, _PEFT),
        Method("adapter", "bottleneck adapters after attention and MLP sublayers (ours)",
               _own_method(AdapterConfig, add_adapters), TRANSFORMER_BACKBONE, _ADDED, False, _OURS),
        Method("vpt", "visual prompt tuning, shallow or deep, for ViT-family models (ours)",
               _own_method(VPTConfig, add_prompts), VIT_FAMILY, _ADDED, False, _OURS),
        Method("linear", "the classification head only",
               _own_method(None, None), CLASSIFICATION_HEAD, _HEAD, True, _OURS),
        Method("full", "every parameter (full fine-tuning)", _full, ANY_CLASSIFIER, _ALL, True, _WHOLE),
    ]
}


def get_method(name: str) -> Method:
    """The ``METHODS`` row of ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {sorted(METHODS)}")
    return METHODS[name]


def applicable_methods(model: PreTrainedModel) -> list[str]:
    """The names of the methods that apply to the base ``model``, sorted."""
    return sorted(name for name, method in METHODS.items() if method.applies_to(model))


def saved_form(method: str | None, *, merged: bool = False) -> Saved | None:
    """How a smoothing folder of a model fine-tuned with ``method`` holds that model: a ``METHODS`` name as its
    row says; any other peft method (a ``peft_config`` of a type the registry lacks, e.g. ``"vera"``) as
    peft's adapter files; None for an unadapted base, whose folder holds no weights of it; a merged one
    whole. Anything else is a ValueError listing the known names."""
    if merged:
        return Saved.WHOLE_MODEL
    if method is None:
        return None
    if method not in METHODS and is_peft_type(method):
        return Saved.PEFT_ADAPTER
    return get_method(method).saved


def apply_method(model: PreTrainedModel, method: str, **options: Any) -> PreTrainedModel | PeftModel:
    """Prepare ``model`` for fine-tuning with ``method`` (a ``METHODS`` name); ``options`` go to the method's
    config (e.g. ``r=16`` for LoRA, ``num_prompts=4, deep=True`` for VPT, ``train_head=False``).
    Modifies ``model`` in place for our methods; returns the model to train. A method that does not apply to
    ``model``'s architecture is a ValueError naming the ones that do."""
    row = get_method(method)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"`model` must be a transformers PreTrainedModel, got {type(model).__name__}")
    row.check_applies(model)
    return row.apply(model, options)


def apply_peft_config(model: PreTrainedModel, peft_config: PeftConfig) -> PeftModel:
    """``get_peft_model`` with a ``peft_config`` from the user; targets that match nothing in ``model`` are a
    ValueError naming the layers that would work."""
    try:
        peft_model = get_peft_model(model, peft_config)
    except ValueError as error:
        if "target" not in str(error).lower():
            raise
        raise ValueError(
            f"`peft_config` ({type(peft_config).__name__}, target_modules={peft_config.target_modules!r}) does not fit "
            f"{type(model).__name__}: {error}. Its adaptable layers are target_modules={peft_target_modules(model)!r}"
        ) from None
    return carry_base_layer_attributes(peft_model)


def merge_adapter(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """``model`` with its peft adapter folded into a copy of the weights (``smoothing_hf.methods.merged_copy``),
    so that the adapter costs nothing per forward pass; ``model`` itself when it holds no peft adapter
    (``linear`` and ``full`` train the base weights themselves; our adapters and prompts stay modules of their
    own). An adapter that cannot be folded exactly is a ``NotMergeable`` error saying why."""
    return merged_copy(model) if isinstance(model, PeftModel) else model


def merged_model(model: PreTrainedModel | PeftModel, method: str | None) -> PreTrainedModel:
    """The plain ``transformers`` model of a merged export: ``merge_adapter(model)``, for a method whose
    registry row says it is ``mergeable`` (or no method, or a peft method outside the registry); a
    ValueError saying why otherwise."""
    if method in METHODS and not METHODS[method].mergeable:
        mergeable = sorted(name for name, row in METHODS.items() if row.mergeable)
        raise ValueError(
            f"`merge_adapter=True` needs a method whose update folds into the base weights ({mergeable}); "
            f"{method!r} adds modules of its own: save it without `merge_adapter`"
        )
    try:
        return merge_adapter(model)
    except NotMergeable as error:
        raise ValueError(f"`merge_adapter=True` is not possible for this model: {error}; save it without "
                         "`merge_adapter` (certification uses the unmerged model, which computes the same "
                         "classifier)") from None


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What ``Saved.TRAINABLE_STATE`` holds of ``model``: its trainable parameters, plus the buffers (BatchNorm
    statistics) of the modules that own one, so that a convolutional head reloads with its running statistics."""
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            prefix = f"{module_name}." if module_name else ""
            state.update({prefix + name: b for name, b in module.named_buffers(recurse=False)})
    return state


__all__ = [
    "ANY_CLASSIFIER", "CLASSIFICATION_HEAD", "METHODS", "PEFT_LAYERS", "TRANSFORMER_BACKBONE", "VIT_FAMILY",
    "AdapterConfig", "Architectures", "Method", "NotMergeable", "Saved", "Trains", "VPTConfig", "adaptable_layers",
    "applicable_methods", "apply_method", "apply_peft_config", "backbone_module_names", "carry_base_layer_attributes",
    "get_method", "head_module_names", "is_peft_type", "merge_adapter", "merged_copy", "merged_model",
    "peft_target_modules", "saved_form",
    "trainable_parameters", "trainable_state",
]
