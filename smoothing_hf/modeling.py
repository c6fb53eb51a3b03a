"""``SmoothedImageClassifier``: any ``AutoModelForImageClassification`` made a smoothed classifier.

It takes un-normalized pixels in [0, 1] (the space the noise and the certified radius live in),
normalizes them with the base model's mean/std as its first step, and runs the base model (with its
PEFT adapter, if any). ``predict``/``certify`` delegate to ``Smoother`` at the model's own sigma.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .config import SmoothingConfig
from .core import Certificate, Smoother
from .transforms import PixelTransform

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")


class SmoothedImageClassifier(torch.nn.Module):
    """A base image classifier and a noise level sigma: the smoothed classifier g of randomized smoothing.

    Args:
        model: the base ``PreTrainedModel`` (or a ``PeftModel`` around one) for image classification.
        config: sigma and the normalization the base model expects.
        image_processor: the base model's image processor, used for ``image_transform`` and saved with it.
    """

    def __init__(self, model: PreTrainedModel | PeftModel, config: SmoothingConfig, image_processor: Any = None) -> None:
        super().__init__()
        if not isinstance(model, (PreTrainedModel, PeftModel)):
            raise TypeError(f"`model` must be a transformers PreTrainedModel or a peft PeftModel, got {type(model).__name__}")
        if not isinstance(config, SmoothingConfig):
            raise TypeError(f"`config` must be a SmoothingConfig, got {type(config).__name__}")
        num_channels = getattr(model.config, "num_channels", len(config.image_mean))
        if len(config.image_mean) != num_channels:
            raise ValueError(
                f"`config.image_mean`/`image_std` must have one value per input channel ({num_channels}), got "
                f"{len(config.image_mean)}"
            )
        self.model = model
        self.config = config
        self.image_processor = image_processor
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, -1, 1, 1), persistent=False)

    @property
    def sigma(self) -> float:
        return self.config.sigma

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels

    @property
    def num_channels(self) -> int:
        return len(self.config.image_mean)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        *,
        sigma: float,
        peft_config: PeftConfig | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **model_kwargs: Any,
    ) -> SmoothedImageClassifier:
        """Load a base classifier (Hub id or local folder: one code path) and smooth it at ``sigma``.

        The base is loaded with ``AutoModelForImageClassification.from_pretrained`` and its normalization
        with ``AutoImageProcessor.from_pretrained``; ``image_mean``/``image_std`` override the processor's
        (and are required when the folder has no image processor). With ``peft_config`` the base is wrapped
        by ``peft.get_peft_model``. ``model_kwargs`` go to the model loader; the Hub arguments among them
        (revision, token, cache_dir, local_files_only, ...) go to the processor loader too.
        """
        model = AutoModelForImageClassification.from_pretrained(pretrained_model_name_or_path, **model_kwargs)
        hub_kwargs = {k: v for k, v in model_kwargs.items() if k in HUB_KWARGS}
        try:
            image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except OSError as error:
            if image_mean is None or image_std is None:
                raise ValueError(
                    f"{pretrained_model_name_or_path!r} has no image processor to take the normalization from; "
                    "pass `image_mean` and `image_std` (per-channel, for [0, 1] pixels)"
                ) from error
            image_processor = None
        num_channels = getattr(model.config, "num_channels", 3)
        if image_processor is not None and getattr(image_processor, "do_normalize", False):
            mean, std = _per_channel(image_processor.image_mean, num_channels), _per_channel(image_processor.image_std, num_channels)
        else:
            mean, std = [0.0] * num_channels, [1.0] * num_channels
        config = SmoothingConfig(
            sigma=sigma,
            image_mean=list(image_mean) if image_mean is not None else mean,
            image_std=list(image_std) if image_std is not None else std,
            base_model_name_or_path=str(pretrained_model_name_or_path),
            base_model_revision=model_kwargs.get("revision") or getattr(model.config, "_commit_hash", None),
            peft_method=str(peft_config.peft_type.value).lower() if peft_config is not None else None,
        )
        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        return cls(model, config, image_processor)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        """Classify [B, C, H, W] pixels on the [0, 1] scale (noisy pixels may leave [0, 1]; they are not
        clipped). Returns the base model's ``ImageClassifierOutput``: logits [B, num_labels], and the loss
        when ``labels`` [B] are given."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"`pixel_values` must have shape [B, {self.num_channels}, H, W], got {tuple(pixel_values.shape)}"
            )
        normalized = (pixel_values - self.image_mean) / self.image_std
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=normalized.to(dtype), labels=labels, return_dict=True)

    def inference_model(self) -> SmoothedImageClassifier:
        """This model for certification: a PEFT adapter is merged into a copy of the weights (peft's
        ``merge_and_unload``), so an adapter costs nothing per forward pass; without an adapter, ``self``."""
        if not isinstance(self.model, PeftModel):
            return self
        merged = copy.deepcopy(self.model).merge_and_unload()
        return SmoothedImageClassifier(merged, self.config, self.image_processor)

    def smoother(self, merge_adapter: bool = True) -> Smoother:
        """A ``Smoother`` over this model at its sigma; with ``merge_adapter``, over ``inference_model()``.
        Build it once when certifying many batches: merging copies the weights."""
        model = self.inference_model() if merge_adapter else self
        return Smoother(model, num_classes=self.num_labels, sigma=self.sigma, num_channels=self.num_channels)

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int, seed: int | Sequence[int] = 0
    ) -> int | list[int]:
        """Cohen's PREDICT for [C, H, W] or [B, C, H, W] pixels in [0, 1]; see ``Smoother.predict``."""
        return self.smoother().predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed)

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, seed: int | Sequence[int] = 0
    ) -> Certificate | list[Certificate]:
        """Cohen's CERTIFY for [C, H, W] or [B, C, H, W] pixels in [0, 1]; see ``Smoother.certify``."""
        return self.smoother().certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed)

    def image_transform(self) -> PixelTransform:
        """The dataset transform for this model: resize with the base model's processor and rescale to [0, 1],
        without normalizing (``forward`` normalizes)."""
        if self.image_processor is None:
            raise ValueError("this model has no image processor; build it with one to get its image transform")
        return PixelTransform(self.image_processor)


def _per_channel(values: float | Sequence[float], num_channels: int) -> list[float]:
    """The processor's mean/std as one value per channel (processors store a scalar or a 3-list)."""
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == num_channels:
        return values
    if len(set(values)) == 1:
        return values[:1] * num_channels
    raise ValueError(
        f"the image processor's normalization has {len(values)} values but the model takes {num_channels} "
        "channels; pass `image_mean` and `image_std` explicitly"
    )
