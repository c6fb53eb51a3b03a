"""Where a method attaches, derived from the model instead of hard-coded per architecture.

Every ``AutoModelForImageClassification`` is a backbone (``model.base_model_prefix``: ``vit``, ``resnet``,
``convnext``, ...) plus head modules (``classifier``, or DeiT's two heads). PEFT methods target the
backbone's linear layers (convolutions for a purely convolutional backbone) and never the head, which is
trained whole instead (``modules_to_save``): peft's ``"all-linear"`` would also wrap the classifier.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def head_module_names(model: PreTrainedModel) -> list[str]:
    """Names of the model's top-level modules outside its backbone: the classification head(s)."""
    backbone = model.base_model_prefix
    heads = [
        name for name, child in model.named_children() if name != backbone and any(True for _ in child.parameters())
    ]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no classification head outside its backbone `{backbone}`")
    return heads


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The model's backbone module (e.g. ``model.vit``)."""
    return getattr(model, model.base_model_prefix)


def _in_heads(name: str, heads: list[str]) -> bool:
    return any(name == head or name.startswith(head + ".") for head in heads)


def peft_target_modules(model: PreTrainedModel) -> list[str]:
    """peft ``target_modules`` for the backbone: its ``nn.Linear`` layers, else its ``nn.Conv2d`` layers.

    Returns short names (``["fc1", "fc2", "k_proj", ...]``) when they match exactly the intended modules
    under peft's suffix rule, else full module names.
    """
    heads = head_module_names(model)
    for kind in (torch.nn.Linear, torch.nn.Conv2d):
        names = [
            name for name, module in model.named_modules() if isinstance(module, kind) and not _in_heads(name, heads)
        ]
        if names:
            break
    else:
        raise ValueError(f"{type(model).__name__} has no linear or convolutional layers outside its head to adapt")
    short = sorted({name.rsplit(".", 1)[-1] for name in names})
    matched = {
        name for name, _ in model.named_modules() if any(name == s or name.endswith("." + s) for s in short)
    }
    return short if matched == set(names) else names


def sublayer_output_projections(model: PreTrainedModel) -> list[str]:
    """Names of the backbone's sublayer output projections: in each module holding two or more
    ``nn.Linear`` children (a transformer's attention: q, k, v, o; its MLP: fc1, fc2), the last one.
    These are where bottleneck adapters go (Houlsby et al., 2019)."""
    heads = head_module_names(model)
    outputs = []
    for name, module in model.named_modules():
        linears = [child for child, sub in module.named_children() if isinstance(sub, torch.nn.Linear)]
        if len(linears) >= 2 and not _in_heads(name, heads):
            outputs.append(f"{name}.{linears[-1]}" if name else linears[-1])
    return outputs
