"""``SmoothingConfig``: what a smoothed classifier is, serialized as ``smoothing_config.json``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from dataclasses import dataclass, field

from .checks import check_seed, check_sigma, is_number
from .files import read_json, write_text
from .input_modules import check_input_module_record
from .space import INTERPOLATIONS, check_size, describe

SMOOTHING_CONFIG_NAME = "smoothing_config.json"

TRAINING_KEYS = {
    "dataset": "Dataset the adapter was trained on (Hub id, embedded:<name> or a folder).",
    "trainable_parameters": "Parameters trained (the adapter, prompts and head; all of them for `full`).",
    "total_parameters": "Parameters of the model being trained, base included.",
    "train_head": "Whether the classification head was trained with the adapter.",
    "steps": "Optimizer steps.",
    "epochs": "Epochs over the training set.",
    "num_noise_samples": "Noisy copies of each image per batch.",
    "consistency_weight": "Weight of the consistency loss (older records; now objective 'consistency', option lbd).",
    "noisy_accuracy": "Accuracy of the base classifier on noisy validation images after training.",
    "objective": "Training objective: for fine-tuning a name in smoothing_hf.objectives.OBJECTIVES ('gaussian', "
    "'consistency', 'smoothadv', 'macer'); for an input module its own (e.g. 'mse' or 'stability' for a denoiser).",
    "objective_options": "Options of the training objective, a JSON object (e.g. {'epsilon': 0.5, 'steps': 2}).",
    "queries": "Images sent to the black-box target while training a coordinator (each image of a batch counts).",
}
"""Keys allowed in ``SmoothingConfig.training``, with their meaning (all optional)."""

CERTIFICATION_KEYS = {
    "n0": "Selection samples per image.",
    "n": "Estimation samples per image.",
    "alpha": "Failure probability of each certificate.",
    "seed": "Noise seed (example idx drew its noise from derive_seed(seed, idx)).",
    "num_examples": "Examples certified.",
    "skip": "Every skip-th example of the split was certified.",
    "dataset": "Dataset certified (Hub id, embedded:<name> or a folder).",
    "split": "Split certified.",
    "certified_accuracy": "Certified accuracy (fraction) at each l2 radius, keyed by the radius as text ('0.25').",
    "acr": "Average certified radius (l2, [0, 1] pixels).",
    "abstain_rate": "Fraction of examples on which the smoothed classifier abstained.",
    "clean_accuracy": "Accuracy of the smoothed classifier (certified accuracy at radius 0).",
    "space": "Where the radii live (smoothing_hf.space.describe), e.g. 'l2 in [0, 1] pixels of 32 x 32 x 3'.",
    "precision": "Precision of the base classifier's forward pass: 'fp32', 'bf16' or 'fp16' (autocast).",
    "bound_seed": "Seed of the randomized Clopper-Pearson bound's uniforms, where pA_lower is that bound.",
}
"""Keys allowed in ``SmoothingConfig.certification``; n0, n, alpha, num_examples, certified_accuracy and acr
are required."""
REQUIRED_CERTIFICATION_KEYS = ("n0", "n", "alpha", "num_examples", "certified_accuracy", "acr")


@dataclass
class SmoothingConfig:
    """Settings of a ``SmoothedImageClassifier``.

    Pixels are in [0, 1]; the model normalizes them with ``image_mean``/``image_std`` as its first step.
    """

    sigma: float = field(metadata={"help": "Noise standard deviation in [0, 1] pixel units (e.g. 0.25, 0.5, 1.0)."})
    image_mean: list[float] = field(metadata={"help": "Per-channel mean the base model normalizes pixels with."})
    image_std: list[float] = field(metadata={"help": "Per-channel std the base model normalizes pixels with."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or folder of the base AutoModelForImageClassification."}
    )
    base_model_revision: str | None = field(default=None, metadata={"help": "Revision (commit) of the base model."})
    peft_method: str | None = field(
        default=None,
        metadata={"help": "Fine-tuning method of the adapter (a name in smoothing_hf.methods.METHODS), if any."},
    )
    method_options: dict = field(default_factory=dict, metadata={"help": "Options the method was applied with."})
    id2label: dict[str, str] | None = field(
        default=None, metadata={"help": "Class names of the classification head (recorded when saving)."}
    )
    input_module: dict | None = field(
        default=None,
        metadata={
            "help": "Pixel-to-pixel module before the frozen base model (denoiser, black-box coordinator): "
            "{'type', 'options'}."
        },
    )
    certify_size: list[int] | None = field(
        default=None,
        metadata={
            "help": "[height, width] at which noise is added and radii are measured, when below the base model's "
            "input size (the forward resizes noisy pixels to `model_input_size`); None: the model's input size."
        },
    )
    model_input_size: list[int] | None = field(
        default=None, metadata={"help": "[height, width] the base model takes (recorded with `certify_size`)."}
    )
    resize_interpolation: str = field(
        default="bilinear",
        metadata={"help": f"How the forward resizes to model_input_size: {', '.join(INTERPOLATIONS)}."},
    )
    merged: bool = field(
        default=False,
        metadata={
            "help": "The folder holds the whole model with the adapter folded into its weights "
            "(plain transformers loads it)."
        },
    )
    training: dict | None = field(
        default=None, metadata={"help": f"How the model was trained, when known; keys: {', '.join(TRAINING_KEYS)}."}
    )
    certification: dict | None = field(
        default=None,
        metadata={
            "help": "Settings and results of the latest certification, when known; keys: "
            f"{', '.join(CERTIFICATION_KEYS)}."
        },
    )

    def __post_init__(self) -> None:
        self.sigma = check_sigma(self.sigma)
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values:
                raise TypeError(f"`{name}` must be a non-empty list of floats (one per channel), got {values!r}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"`{name}` must hold finite floats, got {values!r}")
            setattr(self, name, [float(v) for v in values])
        if len(self.image_mean) != len(self.image_std):
            raise ValueError(
                f"`image_mean` and `image_std` must have one value per channel, got {len(self.image_mean)} and "
                f"{len(self.image_std)}"
            )
        if min(self.image_std) <= 0:
            raise ValueError(f"`image_std` must be positive, got {self.image_std}")
        if self.id2label is not None:
            self.id2label = check_id2label(self.id2label)
        if self.input_module is not None:
            self.input_module = check_input_module_record(self.input_module)
        self._check_space()
        if not isinstance(self.merged, bool):
            raise TypeError(f"`merged` must be a bool, got {self.merged!r}")
        if self.training is not None:
            self.training = check_training(self.training)
        if self.certification is not None:
            self.certification = check_certification(self.certification)

    def _check_space(self) -> None:
        self.certify_size = check_size(self.certify_size, "certify_size")
        self.model_input_size = check_size(self.model_input_size, "model_input_size")
        if self.resize_interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"`resize_interpolation` must be one of {list(INTERPOLATIONS)}, got {self.resize_interpolation!r}"
            )
        if self.certify_size is None:
            return
        if self.model_input_size is None:
            raise ValueError("`certify_size` needs `model_input_size`, the size the forward resizes noisy pixels to")
        if any(c > m for c, m in zip(self.certify_size, self.model_input_size)):
            raise ValueError(
                f"`certify_size` {self.certify_size} is larger than the model's input size {self.model_input_size}: "
                "the downsampling would average the noise away, so its radii would not describe the classifier's "
                "robustness at that size; certify at or below the model's input size"
            )

    def space(self, num_channels: int) -> str | None:
        """Where this model's radii live, in words (``"l2 in [0, 1] pixels of 8 x 8 x 1"``); None when it
        certifies at the model's input size and that is not recorded."""
        size = self.certify_size or self.model_input_size
        return None if size is None else describe(size, num_channels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write the config to ``path`` atomically (a temporary file renamed into place)."""
        write_text(self.to_json_string(), path)

    @classmethod
    def from_dict(cls, values: dict) -> SmoothingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown smoothing config keys {unknown}; allowed: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> SmoothingConfig:
        """Read ``path``; a file that is not JSON, or not a smoothing config, is a ValueError naming it."""
        values = read_json(path)
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{os.fspath(path)}: {error}") from None


def _check_keys(values: object, name: str, allowed: dict[str, str]) -> dict:
    if not isinstance(values, dict):
        raise TypeError(f"`{name}` must be a dict or None, got {type(values).__name__}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown `{name}` keys {unknown}; allowed: {sorted(allowed)}")
    return values


def check_training(values: object) -> dict:
    """A copy of a ``training`` record, checked: its keys among ``TRAINING_KEYS``, the objective (where recorded)
    a non-empty string and its options a dict. Records written before objectives were recorded (none, or a
    ``consistency_weight``) are valid as they are."""
    values = dict(_check_keys(values, "training", TRAINING_KEYS))
    objective = values.get("objective")
    if objective is not None and (not isinstance(objective, str) or not objective.strip()):
        raise ValueError(f"`training['objective']` must be a non-empty string such as 'smoothadv', got {objective!r}")
    options = values.get("objective_options")
    if options is not None and not isinstance(options, dict):
        raise TypeError(
            f"`training['objective_options']` must be a dict (a JSON object) of the objective's options, got "
            f"{type(options).__name__} {options!r}"
        )
    return values


def check_id2label(values: object) -> dict[str, str]:
    """``id2label`` as ``{"0": name, ..., "K-1": name}``: a dict from class index (an int or a string of digits)
    to class name (a string), holding each index 0..K-1 once, K >= 1."""
    allowed = "a dict from class index (int or digit string) to class name (str), with indices 0..K-1 each once"
    if not isinstance(values, dict):
        raise TypeError(f"`id2label` must be {allowed}, got {type(values).__name__} {reprlib.repr(values)}")
    if not values:
        raise ValueError(f"`id2label` must be {allowed}, K >= 1, got an empty dict")
    indices: dict[int, str] = {}
    for key, name in values.items():
        digits = isinstance(key, str) and key.isascii() and key.isdigit()
        if not (digits or (isinstance(key, int) and not isinstance(key, bool))) or not isinstance(name, str):
            raise ValueError(f"`id2label` must be {allowed}, got {key!r}: {name!r}")
        if int(key) in indices:
            raise ValueError(f"`id2label` must be {allowed}, got index {int(key)} twice ({key!r})")
        indices[int(key)] = name
    if sorted(indices) != list(range(len(indices))):
        missing = sorted(set(range(len(indices))) - set(indices))[:5]
        raise ValueError(f"`id2label` must be {allowed}, got {len(indices)} classes without indices {missing}")
    return {str(index): indices[index] for index in sorted(indices)}


def check_certification(values: object) -> dict:
    """A copy of a ``certification`` record, checked: the required keys, sample counts >= 1, alpha in (0, 1),
    accuracies and the abstain rate in [0, 1], ACR >= 0, radii as text of non-negative numbers, the space (where
    recorded) a non-empty string."""
    values = dict(_check_keys(values, "certification", CERTIFICATION_KEYS))
    missing = [key for key in REQUIRED_CERTIFICATION_KEYS if values.get(key) is None]
    if missing:
        raise ValueError(f"`certification` must record {list(REQUIRED_CERTIFICATION_KEYS)}; missing {missing}")
    if values.get("bound_seed") is not None:
        check_seed(values["bound_seed"], "certification['bound_seed']")
    for key in ("n0", "n", "num_examples"):
        if isinstance(values[key], bool) or not isinstance(values[key], int) or values[key] < 1:
            raise ValueError(f"`certification['{key}']` must be a positive int, got {values[key]!r}")
    if not is_number(values["alpha"]) or not 0 < values["alpha"] < 1:
        raise ValueError(f"`certification['alpha']` must be in (0, 1), got {values['alpha']!r}")
    if not is_number(values["acr"]) or values["acr"] < 0:
        raise ValueError(f"`certification['acr']` must be a number >= 0, got {values['acr']!r}")
    for key in ("abstain_rate", "clean_accuracy"):
        if values.get(key) is not None and (not is_number(values[key]) or not 0 <= values[key] <= 1):
            raise ValueError(f"`certification['{key}']` must be a fraction in [0, 1], got {values[key]!r}")
    if values.get("space") is not None and (not isinstance(values["space"], str) or not values["space"].strip()):
        raise ValueError(
            "`certification['space']` must be a non-empty string such as 'l2 in [0, 1] pixels of 32 x 32 x 3', got "
            f"{values['space']!r}"
        )
    if values.get("precision") is not None and values["precision"] not in ("fp32", "bf16", "fp16"):
        raise ValueError(
            f"`certification['precision']` must be one of ['bf16', 'fp16', 'fp32'], got {values['precision']!r}"
        )
    accuracy = values["certified_accuracy"]
    if not isinstance(accuracy, dict) or not accuracy:
        raise ValueError(f"`certification['certified_accuracy']` must map radii to fractions, got {accuracy!r}")
    checked = {}
    for radius, value in accuracy.items():
        try:
            number = float(radius)
        except (TypeError, ValueError):
            number = -1.0
        if not (math.isfinite(number) and number >= 0) or not is_number(value) or not 0 <= value <= 1:
            raise ValueError(
                f"`certification['certified_accuracy']` must map radii >= 0 (as text, e.g. '0.25') to fractions in "
                f"[0, 1], got {radius!r}: {value!r}"
            )
        checked[f"{number:g}"] = float(value)
    values["certified_accuracy"] = dict(sorted(checked.items(), key=lambda item: float(item[0])))
    return values
