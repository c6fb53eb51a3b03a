"""Input modules: a pixel-to-pixel stage in front of a frozen base classifier, and their registry.

Denoisers (denoised smoothing: ``DnCNN``; diffusion denoised smoothing: ``DiffusionDenoiser``) and the
black-box coordinator (``Coordinator``, visual prompts trained from queries) all map the noisy image to another
image that the unchanged base model then classifies. The composite ``base(input_module(x + noise))`` is one
fixed function of the noisy input, so Cohen's certificate holds for it like for any base classifier.
``SmoothedImageClassifier`` runs the module before normalizing and saves it as ``input_module.safetensors``
with a ``{"type", "options"}`` record in ``smoothing_config.json``.

Modules only: their training lives in ``smoothing_hf.baselines`` (denoisers, DDPM) and
``smoothing_hf.blackbox`` (the coordinator), so loading a saved composite imports no training code.
"""

from __future__ import annotations

from typing import Any

from .base import InputModule
from .coordinator import Coordinator
from .diffusion import DiffusionDenoiser, diffusion_timestep
from .dncnn import DnCNN

INPUT_MODULES: dict[str, type[InputModule]] = {
    module.module_type: module for module in (Coordinator, DnCNN, DiffusionDenoiser)
}
"""Registered input module types (the ``type`` of a config record) and the class of each."""


def input_module_class(module_type: str) -> type[InputModule]:
    """The class registered as ``module_type`` in ``INPUT_MODULES``."""
    if module_type not in INPUT_MODULES:
        raise ValueError(f"unknown input module type {module_type!r}; allowed: {sorted(INPUT_MODULES)}")
    return INPUT_MODULES[module_type]


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


__all__ = [
    "INPUT_MODULES", "Coordinator", "DiffusionDenoiser", "DnCNN", "InputModule",
    "check_input_module_record", "diffusion_timestep", "input_module_class", "input_module_from_record",
]
