"""peft's layers in transformers' image classifiers: the two places where they disagree, and merging.

Written here because peft targets language models first:

- peft's wrapped convolutions do not carry the geometry of the layer they wrap (``stride``, ``padding``, ...),
  which some classifiers read in their forward (MobileNet's TensorFlow padding reads ``conv.stride``);
  ``carry_base_layer_attributes`` copies it onto the wrapper.
- peft's generic unloading assigns ``weight`` to every trained head it unwraps, which fails for a head without
  one (ResNet's ``Sequential`` head under IA3, LoHa, LoKr); ``merged_copy`` unwraps the heads itself first.

``merged_copy`` folds an adapter into a copy of the weights only where that gives the same function: every
adapted layer must be a stock ``nn.Linear``/``nn.Conv2d`` computation (a subclass with its own forward, such as
BiT's weight-standardized convolution, transforms its weight first, so the merged delta would be wrong) and
peft must be able to merge it (it cannot merge grouped convolutions). Otherwise it says why, and the caller
keeps the unmerged model, which computes the same classifier.
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel, PeftType
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper

_STOCK_FORWARDS = {torch.nn.Linear: torch.nn.Linear.forward, torch.nn.Conv2d: torch.nn.Conv2d.forward}


class NotMergeable(ValueError):
    """An adapter that cannot be folded into its base model's weights; the message says why."""


def is_peft_type(name: str) -> bool:
    """Whether ``name`` is a peft method's type in lower case (``"lora"``, ``"vera"``, ``"boft"``, ...)."""
    return isinstance(name, str) and name.upper() in PeftType.__members__


def carry_base_layer_attributes(model: torch.nn.Module) -> torch.nn.Module:
    """Copy each peft layer's base-layer constants (a convolution's ``stride``, ``padding``, ``dilation``,
    ``groups``, ``kernel_size``, ...) onto the peft layer where it lacks them, in place; returns ``model``."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            for name in getattr(type(base), "__constants__", ()):
                if not hasattr(module, name) and hasattr(base, name):
                    setattr(module, name, getattr(base, name))
    return model


def _unmergeable_layers(model: PeftModel) -> list[str]:
    """Adapted layers whose merged weights would not compute what the unmerged layer does."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and not isinstance(module, ModulesToSaveWrapper):
            base = module.get_base_layer()
            stock = next((forward for kind, forward in _STOCK_FORWARDS.items() if isinstance(base, kind)), None)
            if stock is not None and type(base).forward is not stock:
                found.append(f"{name} ({type(base).__name__} has its own forward)")
            elif getattr(base, "groups", 1) != 1:
                found.append(f"{name} (a convolution with groups={base.groups})")
    return found


def merged_copy(model: PeftModel) -> torch.nn.Module:
    """A copy of ``model``'s base model with the adapter folded into its weights (peft's ``merge_and_unload``);
    ``NotMergeable`` saying why when that would change the function or peft cannot do it."""
    unmergeable = _unmergeable_layers(model)
    if unmergeable:
        shown = "; ".join(unmergeable[:3]) + (f"; and {len(unmergeable) - 3} more" if len(unmergeable) > 3 else "")
        raise NotMergeable(f"peft cannot fold these adapted layers into their weights exactly: {shown}")
    merged = copy.deepcopy(model)
    for name, module in list(merged.base_model.model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            trained = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
            merged.base_model.model.set_submodule(name, trained)
    try:
        return merged.merge_and_unload()
    except (NotImplementedError, ValueError) as error:  # what peft raises for a layer kind it cannot merge
        raise NotMergeable(f"peft could not merge the adapter ({type(error).__name__}: {error})") from error
