"""smoothing_hf: certified l2 robustness for Hugging Face image classifiers by randomized smoothing,
with the base model adapted to Gaussian noise by parameter-efficient fine-tuning (PEFTSmoothing)."""

# The public names load on first use (PEP 562 module __getattr__), so that ``python -m smoothing_hf.report`` and
# other light entry points do not pay for importing torch, transformers, peft and diffusers.
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "analysis.attacks": ("attack_dataset", "smooth_adv"),
    "baselines": ("DenoiserTrainer",),
    "blackbox.spsa": ("SPSAGC",),
    "blackbox.target": ("BlackBoxClassifier", "QueryBudgetExceeded"),
    "blackbox.training": ("train_coordinator",),
    "certified_pipeline": ("CertifiedImageClassificationPipeline",),
    "certification": ("ABSTAIN", "Certificate", "RadiiDecision", "RadiusDecision", "Smoother",
                      "certificates_from_counts", "clopper_pearson_lower"),
    "config": ("SMOOTHING_CONFIG_NAME", "SmoothingConfig"),
    "data": ("DatasetArguments", "EvaluationDatasetArguments", "check_labels", "class_names", "load_image_dataset",
             "num_classes", "prepare_columns"),
    "embedded": ("EMBEDDED_DATASETS",),
    "input_modules.base": ("InputModule",),
    "input_modules.coordinator": ("Coordinator",),
    "input_modules.diffusion": ("DiffusionDenoiser",),
    "input_modules.dncnn": ("DnCNN",),
    "methods": ("METHODS", "apply_method", "trainable_parameters"),
    "modeling": ("SmoothedImageClassifier",),
    "noise": ("NOISE_CHUNK_SIZE", "NoiseCollator", "Phase", "derive_seed"),
    "pipeline": ("certify", "merge_shards"),
    "trainer": ("SmoothingTrainer",),
    "transforms": ("ImageClassificationTransform", "PixelTransform"),
}
"""The module of ``smoothing_hf`` that defines each public name."""
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]

# pipeline("certified-image-classification", model=...) after `import smoothing_hf`: the task is registered when
# transformers.pipelines is imported (at once if it already is), so this import stays free of transformers.
from .registration import register_task_when_transformers_pipelines_loads  # noqa: E402

register_task_when_transformers_pipelines_loads()


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
