"""``SmoothingConfig``: what a smoothed classifier is, serialized as ``smoothing_config.json``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from .core import check_sigma

SMOOTHING_CONFIG_NAME = "smoothing_config.json"


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
        default=None, metadata={"help": "Fine-tuning method of the adapter (a name in smoothing_hf.methods.METHODS), if any."}
    )
    method_options: dict = field(default_factory=dict, metadata={"help": "Options the method was applied with."})
    id2label: dict[str, str] | None = field(
        default=None, metadata={"help": "Class names of the classification head (recorded when saving)."}
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
            self.id2label = {str(key): str(value) for key, value in self.id2label.items()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write the config to ``path`` atomically (a temporary file renamed into place)."""
        temporary = f"{os.fspath(path)}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())
        os.replace(temporary, path)

    @classmethod
    def from_dict(cls, values: dict) -> SmoothingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown smoothing config keys {unknown}; allowed: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> SmoothingConfig:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
