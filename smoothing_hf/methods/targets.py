"""Where a method attaches, derived from the model instead of hard-coded per architecture.

Every ``AutoModelForImageClassification`` is a backbone plus head modules. The backbone is the top-level child
that ``model.base_model_prefix`` names (``vit``, ``resnet``, ``convnext``, ...); where no child has that name
(CLIP's and SigLIP's ``vision_model``, HGNet-V2's ``embedder`` and ``encoder``, PP-LCNet's ``encoder`` and
``last_convolution``), the heads are the top-level children that end in a layer with one output per class, and
the backbone is the rest. PEFT methods target the backbone's linear layers (convolutions for a convolutional
backbone) and never the head, which is trained whole instead (``modules_to_save``): peft's ``"all-linear"``
would also wrap the classifier.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def _has_parameters(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _ends_in_class_scores(module: torch.nn.Module, num_labels: int) -> bool:
    """Whether the last linear or convolutional layer of ``module`` has ``num_labels`` outputs."""
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if not layers:
        return False
    last = layers[-1]
    return (last.out_features if isinstance(last, torch.nn.Linear) else last.out_channels) == num_labels


def backbone_module_names(model: PreTrainedModel) -> list[str]:
    """Names of the model's top-level modules that make up its backbone (``["vit"]``, ``["vision_model"]``,
    ``["embedder", "encoder"]``); everything with parameters outside the head."""
    heads = set(head_module_names(model))
    return [name for name, child in model.named_children() if name not in heads and _has_parameters(child)]


def head_module_names(model: PreTrainedModel) -> list[str]:
    """Names of the model's top-level modules outside its backbone: the classification head(s) (``classifier``;
    DeiT's ``cls_classifier`` and ``distillation_classifier``; PoolFormer's final ``norm`` with its
    ``classifier``)."""
    children = [(name, child) for name, child in model.named_children() if _has_parameters(child)]
    prefix = model.base_model_prefix
    if any(name == prefix for name, _ in children):
        heads = [name for name, _ in children if name != prefix]
    else:
        num_labels = model.config.num_labels
        heads = [name for name, child in children if _ends_in_class_scores(child, num_labels)]
        if len(heads) == len(children):
            heads = []
    if not heads:
        raise ValueError(
            f"{type(model).__name__} has no classification head outside its backbone: no top-level module but "
            f"`{prefix}` holds parameters, or none ends in a layer with num_labels={model.config.num_labels} outputs"
        )
    return heads


def backbone(model: PreTrainedModel) -> torch.nn.Module | None:
    """The model's backbone when it is one module (e.g. ``model.vit``, ``model.vision_model``), else None."""
    names = backbone_module_names(model)
    return model.get_submodule(names[0]) if len(names) == 1 else None


def _in_modules(name: str, modules: list[str]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in modules)


def adaptable_layers(model: PreTrainedModel) -> list[str]:
    """Full names of the backbone layers PEFT methods adapt: its ``nn.Linear`` layers, else (a convolutional
    backbone) its ``nn.Conv2d`` layers, subclasses included (EfficientNet's, BiT's weight-standardized ones).

    Grouped and depthwise convolutions (``groups > 1``: MobileNet's, RegNet's, EfficientNet's) are left out:
    peft's convolutional layers need the rank divisible by the groups and cannot merge them, and they hold few
    weights (k x k per channel); the pointwise and dense convolutions around them are adapted."""
    backbone_names = backbone_module_names(model)
    for kind in (torch.nn.Linear, torch.nn.Conv2d):
        names = [
            name for name, module in model.named_modules()
            if isinstance(module, kind) and _in_modules(name, backbone_names) and getattr(module, "groups", 1) == 1
        ]
        if names:
            return names
    raise ValueError(
        f"{type(model).__name__} ({model.config.model_type}) has no linear or ungrouped convolutional layers in its "
        f"backbone {backbone_names} to adapt"
    )


def peft_target_modules(model: PreTrainedModel) -> list[str]:
    """peft ``target_modules`` for ``adaptable_layers(model)``.

    Returns short names (``["fc1", "fc2", "k_proj", ...]``) when they match exactly those layers under peft's
    suffix rule, else full module names.
    """
    names = adaptable_layers(model)
    short = sorted({name.rsplit(".", 1)[-1] for name in names})
    matched = {
        name for name, _ in model.named_modules() if any(name == s or name.endswith("." + s) for s in short)
    }
    return short if matched == set(names) else names


def sublayer_output_projections(model: PreTrainedModel) -> list[str]:
    """Names of the backbone's sublayer output projections: in each module holding two or more
    ``nn.Linear`` children (a transformer's attention: q, k, v, o; its MLP: fc1, fc2), the last one.
    These are where bottleneck adapters go (Houlsby et al., 2019)."""
    backbone_names = backbone_module_names(model)
    outputs = []
    for name, module in model.named_modules():
        linears = [child for child, sub in module.named_children() if isinstance(sub, torch.nn.Linear)]
        if len(linears) >= 2 and _in_modules(name, backbone_names):
            outputs.append(f"{name}.{linears[-1]}")
    return outputs
