"""The certification space: the image size at which noise is added and certified radii are measured.

A radius is an l2 distance between [0, 1] pixel images of one size. Resizing changes l2 distances (upsampling
a 32 x 32 image to 224 x 224 multiplies them by about 7), so a radius is only comparable with another one in
the same space. A smoothed model may certify at a size (``certify_size``, H x W) below its base model's input
size: the noise is added there, and the model's forward resizes the noisy pixels to the base model's size with
one fixed interpolation (``resize``), so the base classifier is a fixed function of the noisy image at
``certify_size`` and Cohen's guarantee holds in that space (as in Carlini et al., 2023, who add the noise at
CIFAR-10's 32 x 32 and upsample inside the classifier).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
"""Interpolations the forward can resize with (``torch.nn.functional.interpolate``, no antialiasing,
``align_corners=False``)."""


def check_size(value: Any, name: str) -> list[int] | None:
    """``value`` as [H, W] (an int is a square size); None stays None. Anything else is an error naming
    ``name``: sizes are positive ints."""
    if value is None:
        return None
    sizes = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(sizes, (list, tuple))
        or len(sizes) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes)
    ):
        raise TypeError(f"`{name}` must be [height, width] (positive ints) or one int, got {value!r}")
    if min(sizes) < 1:
        raise ValueError(f"`{name}` must be positive, got {value!r}")
    return [int(s) for s in sizes]


def parse_size(text: str, name: str) -> list[int]:
    """A size written ``"32x32"``, ``"32"`` or ``"28 x 28"`` as [H, W]; anything else is a ValueError."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if match is None:
        raise ValueError(f"`{name}` must be 'native', 'model' or a size such as '32x32' or '224', got {text!r}")
    height = int(match.group(1))
    return check_size([height, int(match.group(2) or height)], name)


def space_settings(certify_size: Any, input_size: list[int] | None, interpolation: str) -> dict[str, Any]:
    """The ``SmoothingConfig`` fields of a model that certifies at ``certify_size`` (checked) and takes
    ``input_size``: none at the model's input size (no resize)."""
    certify_size = check_size(certify_size, "certify_size")
    if certify_size is None or certify_size == input_size:
        return {}
    if input_size is None:
        raise ValueError("`certify_size` needs the base model's input size, which neither its image processor nor "
                         "its config (`image_size`) gives")
    return {"certify_size": certify_size, "model_input_size": input_size, "resize_interpolation": interpolation}


def describe(size: Sequence[int], num_channels: int) -> str:
    """The space of a radius in words, e.g. ``"l2 in [0, 1] pixels of 32 x 32 x 3"``."""
    return f"l2 in [0, 1] pixels of {size[0]} x {size[1]} x {num_channels}"


def resize(pixels: torch.Tensor, size: Sequence[int], interpolation: str) -> torch.Tensor:
    """[B, C, H, W] pixels (noisy ones may leave [0, 1]; they are not clipped) resized to ``size`` [H', W'] with
    ``interpolation``: one fixed, deterministic, linear map for bilinear and bicubic."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    corners = None if interpolation == "nearest" else False
    return F.interpolate(pixels, size=tuple(size), mode=interpolation, align_corners=corners, antialias=False)


def model_input_size(config: Any, image_processor: Any) -> list[int] | None:
    """[H, W] the base model takes: its image processor's crop or resize size, else its config's
    ``image_size``; None when neither says (a convolutional model without a processor)."""
    for attribute in ("crop_size", "size"):
        size = getattr(image_processor, attribute, None) if image_processor is not None else None
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return [int(size["height"]), int(size["width"])]
            if "shortest_edge" in size and attribute == "crop_size":
                return [int(size["shortest_edge"])] * 2
    image_size = getattr(config, "image_size", None)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return [image_size, image_size]
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        return [int(image_size[0]), int(image_size[1])]
    return None


def native_size(dataset: Any, image_column: str = "image", samples: int = 64) -> list[int] | None:
    """[H, W] shared by the images of ``dataset`` (a ``datasets.Dataset`` of PIL images), looking at up to
    ``samples`` of them spread over it; None when they differ (a dataset of mixed sizes) or there are none."""
    count = len(dataset)
    if count == 0:
        return None
    indices = sorted({round(i * (count - 1) / max(1, samples - 1)) for i in range(min(samples, count))})
    sizes = {tuple(dataset[i][image_column].size[::-1]) for i in indices}  # PIL gives (width, height)
    return list(sizes.pop()) if len(sizes) == 1 else None


def choose_certify_size(
    option: str, native: list[int] | None, model_size: list[int] | None
) -> tuple[list[int] | None, str]:
    """The ``certify_size`` that ``--certify_size option`` ("native", "model" or "HxW") gives, and a line
    saying what was chosen and why. "native" is the dataset's own size when all its images share one and it
    differs from the model's input size; the model's size otherwise."""
    if option == "model":
        return None, "certifying at the model's input size (--certify_size model)"
    if option != "native":
        size = parse_size(option, "certify_size")
        return size, f"certifying at {size[0]} x {size[1]} (--certify_size)"
    if native is None or model_size is None:
        if model_size is None:
            return None, "the model's input size is unknown: certifying at the size the data transform gives"
        return None, ("the dataset's images have no single size: certifying at the model's input size "
                      "(pass --certify_size HxW to choose a size)")
    if native == model_size:
        return None, f"the dataset's native size {native[0]} x {native[1]} is the model's input size"
    if any(n > m for n, m in zip(native, model_size)):
        return None, (f"the dataset's native size {native[0]} x {native[1]} is larger than the model's input size "
                      f"{model_size}: certifying at the model's input size")
    return native, (f"certifying at the dataset's native size {native[0]} x {native[1]}; the model's forward "
                    f"upsamples the noisy images to its input size {model_size} (--certify_size model to "
                    "certify there instead)")


def certify_size_for_base(
    option: str, dataset: Any, name_or_path: str, image_column: str = "image", **hub_kwargs: Any
) -> tuple[list[int] | None, str]:
    """``choose_certify_size`` for the base model ``name_or_path`` (Hub id or folder; ``hub_kwargs`` such as
    ``revision`` go to its config and processor) and the images of ``dataset``."""
    from transformers import AutoConfig

    from .transforms import load_image_processor

    base_size = model_input_size(
        AutoConfig.from_pretrained(name_or_path, **hub_kwargs), load_image_processor(name_or_path, **hub_kwargs)
    )
    return choose_certify_size(option, native_size(dataset, image_column), base_size)
