"""Dataset transforms that resize and rescale images to [0, 1] pixels without normalizing them.

Noise is added in [0, 1] pixel space (DESIGN.md contract 1), so normalization is the model's job, not
the dataset's. We reuse the base model's own image processor for resizing so that images reach the model
at the size it was trained at.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor


def _needs_rescale(image: ImageLike) -> bool:
    """PIL images and integer arrays are 0-255 and need rescaling; float arrays must already be in [0, 1]."""
    if isinstance(image, Image.Image):
        return True
    if isinstance(image, (np.ndarray, torch.Tensor)):
        if isinstance(image, torch.Tensor):
            floating = image.is_floating_point()
        else:
            floating = np.issubdtype(image.dtype, np.floating)
        if not floating:
            return True
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 1:
            raise ValueError(f"float images must hold pixels in [0, 1], got values in [{low:.4g}, {high:.4g}]")
        return False
    raise TypeError(f"images must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}")


class PixelTransform:
    """Resize images with ``image_processor`` and return pixels in [0, 1], un-normalized.

    Call with one image (returns [C, H, W]) or a sequence of images (returns [B, C, H, W]). PIL images and
    integer arrays are divided by 255; float arrays and tensors are taken as already in [0, 1] and are
    never rescaled a second time.
    """

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("`images` must hold at least one image")
        rescale = {_needs_rescale(image) for image in batch}
        if len(rescale) > 1:
            raise ValueError("`images` mixes 0-255 and [0, 1] images; pass one kind per call")
        pixels = self.image_processor(
            batch, do_normalize=False, do_rescale=rescale.pop(), return_tensors="pt"
        )["pixel_values"]
        pixels = pixels.float()
        return pixels[0] if single else pixels


def load_image_processor(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> Any:
    """The image processor of a folder or Hub repo (``AutoImageProcessor``), or None when it has none."""
    try:
        return AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
    except OSError:
        return None


def per_channel(values: float | Sequence[float], num_channels: int) -> list[float]:
    """A processor's mean or std as one value per channel (processors store a scalar, a 1-list or a 3-list)."""
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == num_channels:
        return values
    if len(set(values)) == 1:
        return values[:1] * num_channels
    raise ValueError(
        f"the image processor's normalization has {len(values)} values but the model takes {num_channels} "
        "channels; pass `image_mean` and `image_std` explicitly"
    )
