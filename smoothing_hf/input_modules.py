"""Input modules: a pixel-to-pixel stage in front of a frozen base classifier.

Denoisers (denoised smoothing) and the black-box coordinator (visual prompts trained from queries) both map
the noisy image to another image that the unchanged base model then classifies. The composite
``base(input_module(x + noise))`` is one fixed function of the noisy input, so Cohen's certificate holds
for it like for any base classifier. ``SmoothedImageClassifier`` runs the module before normalizing and
saves it as ``input_module.safetensors`` with a ``{"type", "options"}`` record in ``smoothing_config.json``.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch

INPUT_MODULE_WEIGHTS_NAME = "input_module.safetensors"

INPUT_MODULES = {
    "coordinator": "smoothing_hf.coordinator:Coordinator",
    "dncnn": "smoothing_hf.baselines:DnCNN",
    "diffusion": "smoothing_hf.baselines:DiffusionDenoiser",
}
"""Registered input module types and the class of each (imported on first use: the modules that define
them build on the model wrapper, which must not import them)."""


class InputModule(torch.nn.Module):
    """A module from pixels [B, C, H, W] to pixels [B, C, H, W] (the [0, 1] scale, noisy pixels may leave
    it), placed before the base classifier.

    Subclasses set ``module_type`` (their ``INPUT_MODULES`` name) and ``description``, and pass their constructor's options to
    ``super().__init__(**options)``: JSON values, enough to rebuild the architecture with ``from_options``
    before the saved weights are loaded into it. Parameters with ``requires_grad`` are the trained ones.
    """

    module_type: ClassVar[str]
    description: ClassVar[str]
    """One line for model cards, e.g. "a DnCNN denoiser trained with the stability objective"."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> InputModule:
        """The architecture that ``options`` describe, with fresh weights."""
        return cls(**options)

    def record(self) -> dict[str, Any]:
        """What ``smoothing_config.json`` keeps of this module: its type and options."""
        return {"type": self.module_type, "options": dict(self.options)}


def input_module_class(module_type: str) -> type[InputModule]:
    """The class registered as ``module_type`` in ``INPUT_MODULES``."""
    if module_type not in INPUT_MODULES:
        raise ValueError(f"unknown input module type {module_type!r}; allowed: {sorted(INPUT_MODULES)}")
    module_name, class_name = INPUT_MODULES[module_type].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def input_module_from_record(record: dict[str, Any]) -> InputModule:
    """A fresh module of the architecture a ``{"type", "options"}`` record describes."""
    return input_module_class(record["type"]).from_options(dict(record["options"]))


def check_input_module_record(record: object) -> dict[str, Any]:
    """A copy of an ``input_module`` config record, checked: a dict with a registered ``type`` and an
    ``options`` dict, nothing else."""
    if not isinstance(record, dict) or set(record) != {"type", "options"}:
        raise ValueError(f"`input_module` must be a dict with exactly the keys 'type' and 'options', got {record!r}")
    if record["type"] not in INPUT_MODULES:
        raise ValueError(f"`input_module['type']` must be one of {sorted(INPUT_MODULES)}, got {record['type']!r}")
    if not isinstance(record["options"], dict):
        raise TypeError(f"`input_module['options']` must be a dict, got {type(record['options']).__name__}")
    return {"type": record["type"], "options": dict(record["options"])}
