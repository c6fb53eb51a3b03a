"""BlackVIP's coordinator (Oh et al., CVPR 2023): the input module that black-box PEFTSmoothing trains.

A frozen pretrained encoder and a small trainable decoder turn a (noisy) image into a visual prompt the size
of the image; the target classifies clip(x + prompt(x), 0, 1) (``Coordinator``). The module only: its
training by SPSA-GC from the target's answers alone, and ``pretrain_autoencoder`` (an encoder without labels
where no pretrained backbone can be downloaded), are in ``smoothing_hf.blackbox``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig

from ..checks import check_choice, check_int, check_number, check_positive_int
from ..transforms import load_image_processor, per_channel
from .base import InputModule

FEATURES = ("pooler", "mean")
"""What the coordinator reads of its encoder: the ``pooler_output``, or the mean of ``last_hidden_state``."""


class Coordinator(InputModule):
    """BlackVIP's coordinator: x -> clip(x + prompt(x), 0, 1), an input-dependent visual prompt.

    prompt(x) = prompt_scale * tanh(decoder(layer_norm(encoder(x)) ++ trigger)), a [C, prompt_size,
    prompt_size] map upsampled bilinearly to the input's size. ``encoder`` is a frozen pretrained
    ``transformers`` backbone (its ``pooler_output``, or the mean of ``last_hidden_state`` over tokens or
    positions with ``feature="mean"``), fed the input clipped to [0, 1], resized to its image size and
    normalized with its own mean/std; ``trigger`` is BlackVIP's learnable prompt trigger (U[0, 0.1]); the
    decoder is Linear -> GELU -> Linear, its last layer zero, so the first prompt is 0 and the composite
    starts as the target on clipped noisy images. Trainable: trigger and decoder (``requires_grad``).

    The prompt is computed from the (noisy) input itself, never from a clean image, so the composite
    target(coordinator(x + noise)) is a fixed function of x + noise: Cohen's certificate applies to it.

    Options (JSON, recorded in ``smoothing_config.json``): ``encoder_config`` (the encoder's
    ``transformers`` config as a dict: the architecture is rebuilt from it without a download, the weights
    come from ``input_module.safetensors``), ``num_channels``, ``encoder_name_or_path`` (for the record),
    ``encoder_image_mean``/``encoder_image_std``, ``feature``, ``trigger_size``, ``hidden_size``,
    ``prompt_size`` and ``prompt_scale`` (the largest prompt value, in [0, 1] pixel units).
    """

    module_type = "coordinator"
    description = (
        "a BlackVIP coordinator (frozen encoder + small decoder giving an input-dependent visual prompt) trained by "
        "SPSA-GC from black-box queries of the base model"
    )

    def __init__(
        self,
        encoder_config: dict,
        num_channels: int,
        *,
        encoder_name_or_path: str | None = None,
        encoder_image_mean: list[float] | None = None,
        encoder_image_std: list[float] | None = None,
        feature: str = "pooler",
        trigger_size: int = 16,
        hidden_size: int = 32,
        prompt_size: int = 7,
        prompt_scale: float = 1.0,
    ) -> None:
        super().__init__(
            encoder_config=encoder_config, num_channels=num_channels, encoder_name_or_path=encoder_name_or_path,
            encoder_image_mean=encoder_image_mean, encoder_image_std=encoder_image_std, feature=feature,
            trigger_size=trigger_size, hidden_size=hidden_size, prompt_size=prompt_size, prompt_scale=prompt_scale,
        )
        for name, value in (("num_channels", num_channels), ("hidden_size", hidden_size), ("prompt_size", prompt_size)):
            check_positive_int(value, name)
        check_int(trigger_size, "trigger_size", minimum=0)
        check_choice(feature, "feature", FEATURES)
        check_number(prompt_scale, "prompt_scale", minimum=0, maximum=2, strict_minimum=True, unit="[0, 1] pixel units")
        config = _config_from_dict(encoder_config)
        self.encoder = AutoModel.from_config(config).eval().requires_grad_(False)
        self.encoder_channels = getattr(config, "num_channels", num_channels)
        if self.encoder_channels != num_channels and 1 not in (self.encoder_channels, num_channels):
            raise ValueError(
                f"an encoder of {self.encoder_channels} channels cannot read {num_channels}-channel images"
            )
        size = getattr(config, "image_size", None)
        self.encoder_image_size = (
            None if size is None else tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        )
        mean = encoder_image_mean if encoder_image_mean is not None else [0.0] * self.encoder_channels
        std = encoder_image_std if encoder_image_std is not None else [1.0] * self.encoder_channels
        for name, values in (("encoder_mean", mean), ("encoder_std", std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.feature = feature
        self.prompt_size = prompt_size
        self.prompt_scale = float(prompt_scale)
        with torch.no_grad():
            feature_dim = self.features(torch.zeros(1, num_channels, *(self.encoder_image_size or (32, 32)))).shape[1]
        self.trigger = torch.nn.Parameter(torch.empty(trigger_size).uniform_(0.0, 0.1))
        self.hidden = torch.nn.Linear(feature_dim + trigger_size, hidden_size)
        self.out = torch.nn.Linear(hidden_size, num_channels * prompt_size * prompt_size)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    @classmethod
    def from_encoder(cls, encoder_name_or_path: str, num_channels: int, **options: Any) -> Coordinator:
        """A coordinator around the pretrained backbone ``encoder_name_or_path`` (Hub id or folder, loaded
        with ``AutoModel``; its image processor gives the normalization). The ``pooler_output`` is the
        feature unless the checkpoint has no trained pooler (then the token/position mean)."""
        encoder, info = AutoModel.from_pretrained(  # safetensors only: never unpickles a checkpoint
            encoder_name_or_path, output_loading_info=True, use_safetensors=True
        )
        untrained_pooler = any(key.split(".")[0] == "pooler" for key in info["missing_keys"])
        processor = load_image_processor(encoder_name_or_path)
        channels = getattr(encoder.config, "num_channels", num_channels)
        if processor is not None and getattr(processor, "do_normalize", False):
            options.setdefault("encoder_image_mean", per_channel(processor.image_mean, channels))
            options.setdefault("encoder_image_std", per_channel(processor.image_std, channels))
        options.setdefault("feature", "mean" if untrained_pooler else "pooler")
        coordinator = cls(
            _config_to_dict(encoder.config), num_channels, encoder_name_or_path=str(encoder_name_or_path), **options
        )
        coordinator.encoder.load_state_dict(encoder.state_dict())
        return coordinator

    def train(self, mode: bool = True) -> Coordinator:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, fixed normalization statistics
        return self

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's [B, D] feature of ``pixels`` [B, C, H, W] (clipped to [0, 1] first)."""
        x = pixels.clamp(0, 1)
        if x.shape[1] != self.encoder_channels:
            x = x.expand(-1, self.encoder_channels, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
        if self.encoder_image_size is not None and tuple(x.shape[-2:]) != self.encoder_image_size:
            x = F.interpolate(x, size=self.encoder_image_size, mode="bilinear", align_corners=False)
        x = (x - self.encoder_mean) / self.encoder_std
        with torch.no_grad():
            output = self.encoder(pixel_values=x.to(next(self.encoder.parameters()).dtype))
        pooled = getattr(output, "pooler_output", None) if self.feature == "pooler" else None
        if pooled is not None:
            return pooled.flatten(1).float()
        hidden = output.last_hidden_state
        return (hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(dim=2)).float()

    def prompt(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The [B, C, *size] prompt for encoder features [B, D]."""
        z = F.layer_norm(features, features.shape[-1:])
        z = torch.cat([z, self.trigger.expand(z.shape[0], -1)], dim=1)
        low = self.out(F.gelu(self.hidden(z))).view(z.shape[0], -1, self.prompt_size, self.prompt_size)
        return self.prompt_scale * F.interpolate(torch.tanh(low), size=size, mode="bilinear", align_corners=False)

    def compose(self, pixels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """clip(pixels + prompt, 0, 1), with the prompt from ``features`` = ``self.features(pixels)``."""
        return (pixels + self.prompt(features, tuple(pixels.shape[-2:]))).clamp(0, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """clip(pixels + prompt(pixels), 0, 1) for [B, C, H, W] (noisy) pixels."""
        return self.compose(pixels, self.features(pixels))


def _config_to_dict(config: PretrainedConfig) -> dict:
    """The config as plain JSON values (every field, so the architecture does not depend on defaults)."""
    values = json.loads(config.to_json_string(use_diff=False))
    for key in ("_name_or_path", "transformers_version", "architectures"):
        values.pop(key, None)
    return values


def _config_from_dict(values: dict) -> PretrainedConfig:
    if not isinstance(values, dict) or "model_type" not in values:
        raise ValueError("`encoder_config` must be a transformers config as a dict, with its 'model_type'")
    values = dict(values)
    return AutoConfig.for_model(values.pop("model_type"), **values)
