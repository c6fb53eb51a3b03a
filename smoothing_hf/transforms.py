"""Dataset transforms that resize and rescale images to [0, 1] pixels without normalizing them: ``PixelTransform``
(images -> pixels) and ``ImageClassificationTransform`` (a ``datasets`` batch -> model inputs).

Noise is added in [0, 1] pixel space (DESIGN.md contract 1), so normalization is the model's job, not
the dataset's. We reuse the base model's own image processor for resizing so that images reach the model
at the size it was trained at.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor

if TYPE_CHECKING:  # for type hints only: the model wrapper imports this module
    from .modeling import SmoothedImageClassifier

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
    """Resize images and return pixels in [0, 1], un-normalized: with ``image_processor`` (the base model's own
    resizing), or, with ``size`` [H, W] (a certification space, ``smoothing_hf.space``), to that size: an image
    of that size is kept as it is, any other is resized (shortest edge to the size / 0.875, bilinear with
    antialiasing) and center-cropped, the usual evaluation protocol for datasets of mixed sizes.

    Call with one image (returns [C, H, W]) or a sequence of images (returns [B, C, H, W]). PIL images and
    integer arrays are divided by 255; float arrays and tensors are taken as already in [0, 1] and are
    never rescaled a second time. Arrays are [H, W] or [H, W, C], tensors [C, H, W].
    """

    def __init__(self, image_processor: Any = None, *, size: Sequence[int] | None = None) -> None:
        if (image_processor is None) == (size is None):
            raise ValueError("pass one of `image_processor` and `size`")
        self.image_processor = image_processor
        self.size = None if size is None else [int(s) for s in size]

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("`images` must hold at least one image")
        rescale = {_needs_rescale(image) for image in batch}
        if len(rescale) > 1:
            raise ValueError("`images` mixes 0-255 and [0, 1] images; pass one kind per call")
        if self.size is not None:
            pixels = torch.stack([_resize_and_crop(_as_tensor(image), self.size) for image in batch])
        else:
            pixels = self.image_processor(
                batch, do_normalize=False, do_rescale=rescale.pop(), return_tensors="pt"
            )["pixel_values"]
        pixels = pixels.float()
        return pixels[0] if single else pixels


def _as_tensor(image: ImageLike) -> torch.Tensor:
    """One image as float [C, H, W] pixels in [0, 1]."""
    if isinstance(image, torch.Tensor):
        tensor = image if image.dim() == 3 else image.unsqueeze(0)
        return tensor.float() / (1 if image.is_floating_point() else 255)
    array = np.asarray(image)
    scale = 1 if np.issubdtype(array.dtype, np.floating) else 255
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.tensor(array.transpose(2, 0, 1), dtype=torch.float32) / scale


def _resize_and_crop(pixels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[C, H, W] pixels at ``size`` [H', W']: as they are when they have it, else resized and center-cropped."""
    height, width = pixels.shape[-2:]
    if [height, width] == list(size):
        return pixels
    scale = min(size) / 0.875 / min(height, width)
    resized = [max(size[0], round(height * scale)), max(size[1], round(width * scale))]
    pixels = torch.nn.functional.interpolate(
        pixels[None], size=resized, mode="bilinear", align_corners=False, antialias=True
    )[0]
    top, left = (resized[0] - size[0]) // 2, (resized[1] - size[1]) // 2
    return pixels[:, top : top + size[0], left : left + size[1]].clamp(0, 1)


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


class ImageClassificationTransform:
    """A batch transform for ``Dataset.set_transform`` / ``with_transform`` that makes model inputs.

    Maps ``{"image": [PIL images], "label": [ints], ...}`` to ``{"pixel_values": float tensor [B, C, H, W]
    in [0, 1], "labels": long tensor [B]}``: each image is first converted to the model's channels ("L"
    for 1, "RGB" for 3: grayscale, RGBA and palette images alike), then resized and rescaled by
    ``pixel_transform``, not normalized (the smoothed model normalizes). Without a label column in the
    batch, only "pixel_values" is returned. Indexing one example gives [C, H, W] pixels and a 0-d label,
    which ``transformers.default_data_collator`` stacks back into a batch.

    Args:
        pixel_transform: maps a list of B PIL images to [B, C, H, W] pixels in [0, 1], such as
            ``smoothing_hf.PixelTransform(image_processor)``.
        num_channels: C, the model's input channels (1 or 3).
        image_column / label_column: the batch keys to read.
    """

    def __init__(
        self,
        pixel_transform: Callable[[list[Image.Image]], torch.Tensor],
        num_channels: int,
        *,
        image_column: str = "image",
        label_column: str = "label",
    ) -> None:
        if not callable(pixel_transform):
            raise TypeError(
                "`pixel_transform` must be callable (PIL images -> [B, C, H, W] pixels), got "
                f"{type(pixel_transform).__name__}"
            )
        if num_channels not in (1, 3):
            raise ValueError(f"`num_channels` must be 1 (grayscale) or 3 (RGB), got {num_channels!r}")
        self.pixel_transform = pixel_transform
        self.num_channels = num_channels
        self.mode = "L" if num_channels == 1 else "RGB"
        self.image_column = image_column
        self.label_column = label_column

    @classmethod
    def for_model(cls, model: SmoothedImageClassifier, **kwargs: Any) -> ImageClassificationTransform:
        """The transform for ``model``: its ``image_transform()`` (the base model's image processor, so it
        raises ``ValueError`` for a model without one) and its ``num_channels``."""
        return cls(model.image_transform(), model.num_channels, **kwargs)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        if self.image_column not in batch:
            raise KeyError(f"the batch has no {self.image_column!r} column (`image_column`), only {list(batch)}")
        images = [image if image.mode == self.mode else image.convert(self.mode) for image in batch[self.image_column]]
        pixels = self.pixel_transform(images)
        if pixels.dim() != 4 or pixels.shape[:2] != (len(images), self.num_channels):
            raise ValueError(
                f"`pixel_transform` must return [B, C, H, W] = [{len(images)}, {self.num_channels}, H, W] pixels, got "
                f"shape {tuple(pixels.shape)}"
            )
        output = {"pixel_values": pixels}
        if self.label_column in batch:
            output["labels"] = torch.as_tensor(batch[self.label_column], dtype=torch.long)
        return output
