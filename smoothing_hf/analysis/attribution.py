"""What a classifier looks at: Grad-CAM maps (captum's ``LayerGradCam``) for CNNs and vision transformers.

Grad-CAM (Selvaraju et al., ICCV 2017) weights a layer's feature maps by the mean gradient of the target
class's logit and keeps the positive part. For a CNN the layer is its last stage's [B, C, h, w] output. For a
ViT-style model it is the input of the last transformer block (its ``layernorm_before`` output): the class
token reads the patch tokens only through that block's attention, so the patch tokens the last block outputs
have no gradient. Its [B, T, D] tokens are shown to captum as a [B, D, rows, cols] grid of patches (class and
distillation tokens left out). ``gradcam_grid`` draws the maps of several models (the base model and the
noise-adapted one) on clean and noisy images in one PNG, as PEFTSmoothing's figure does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
from captum.attr import LayerAttribution, LayerGradCam

from ..certification import eval_mode
from ..checks import check_sigma
from ..files import atomic_path

TOKEN_LAYER_NAME = "layernorm_before"
"""The name transformers gives the first norm of a transformer block (ViT, DeiT, BEiT, Swin, ...)."""


def grad_cam(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    *,
    layer: str | None = None,
) -> torch.Tensor:
    """Grad-CAM maps of ``model`` for the classes ``targets`` of ``images``, at the input's resolution.

    Args:
        model: a ``torch.nn.Module`` mapping [B, C, H, W] pixels in [0, 1] to [B, K] logits (or an output with
            ``logits``): a ``SmoothedImageClassifier`` or a bare ``AutoModelForImageClassification``.
        images: [B, C, H, W] pixels (clean in [0, 1], or noisy and unclipped).
        targets: the B classes whose evidence is mapped (e.g. the true labels).
        layer: the name (as in ``model.named_modules()``) of the layer to map; by default the input of the last
            transformer block for a ViT-style model, else the last layer with a [B, C, h, w] output (h * w > 1).

    Returns:
        [B, H, W] maps in [0, 1]: the positive part of Grad-CAM, upsampled bilinearly, divided by each map's
        maximum (an all-zero map stays zero).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module`` (Grad-CAM needs its layers and gradients).
        ValueError: a ``layer`` that is not a module of ``model``, no layer to default to, or ``targets``
            that do not match the images.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"`model` must be a torch.nn.Module (Grad-CAM needs its layers and gradients), got {type(model).__name__}"
        )
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a float tensor [B, C, H, W], got {got}")
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1)
    if len(targets) != len(images):
        raise ValueError(f"`targets` must hold one class per image ({len(images)}), got {len(targets)}")

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        output = model(pixels)
        return getattr(output, "logits", output)

    with eval_mode(model):
        module = _layer(model, images, layer)
        probe: list[torch.Tensor] = []
        hook = module.register_forward_hook(lambda _module, _input, output: probe.append(output))
        with torch.no_grad():
            forward(images[:1])
        hook.remove()
        if probe[0].dim() == 3:  # transformer tokens [B, T, D]: map the patch tokens as a grid
            grid = _PatchGrid(probe[0].shape[1], images.shape[2], images.shape[3])
            hook = module.register_forward_hook(lambda _module, _input, output: grid(output))
            try:
                maps = LayerGradCam(forward, grid.patches).attribute(images, target=targets, relu_attributions=True)
            finally:
                hook.remove()
        else:
            maps = LayerGradCam(forward, module).attribute(images, target=targets, relu_attributions=True)
    maps = LayerAttribution.interpolate(maps.detach(), tuple(images.shape[2:]), interpolate_mode="bilinear")[:, 0]
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)


def gradcam_grid(
    models: Mapping[str, torch.nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    path: str | os.PathLike,
    *,
    sigma: float,
    seed: int = 0,
) -> None:
    """Draw the Grad-CAM maps of several models on clean and noisy images as one PNG grid at ``path``.

    One row per image; the columns are the clean image, each model's map of it, the noisy image
    x + N(0, sigma^2 I) (one seeded draw, the same for every model, fed to the models unclipped and shown
    clipped to [0, 1]), and each model's map of that. Maps are for the true ``labels`` (``grad_cam``), laid
    over the image in the 'jet' colormap. Written atomically.

    Args:
        models: column titles -> models, e.g. {"base": base, "LoRA-adapted": adapted}.
        images: [B, C, H, W] clean pixels in [0, 1] (C = 1 or 3).
        labels: the B true classes.
        sigma: noise std in [0, 1] pixel units.
        seed: seed of the noise draw.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    if not models:
        raise ValueError("`models` must map at least one column title to a model")
    sigma = check_sigma(sigma)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
    noisy = images + sigma * noise
    columns = []
    for title, inputs in ((None, images), (f"noisy (sigma = {sigma:g})", noisy)):
        columns.append((title or "image", inputs, None))
        columns.extend(
            (f"{name}{', noisy' if title else ''}", inputs, grad_cam(model, inputs, labels))
            for name, model in models.items()
        )
    figure = Figure(figsize=(1.6 * len(columns), 1.6 * len(images) + 0.4), layout="constrained")
    axes = figure.subplots(len(images), len(columns), squeeze=False)
    for column, (title, inputs, maps) in enumerate(columns):
        axes[0, column].set_title(title, fontsize=8)
        for row in range(len(images)):
            picture = inputs[row].detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            axis = axes[row, column]
            axis.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            if maps is not None:
                axis.imshow(maps[row].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axis.set_axis_off()
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=extension, dpi=120)


# ---------------------------------------------------------------------------------------------- layers


class _PatchGrid(torch.nn.Module):
    """The identity on [B, T, D] tokens, through ``patches``: its last rows * cols tokens as a [B, D, rows,
    cols] grid of the image's aspect, the first T - rows * cols (class, distillation) tokens passed by."""

    def __init__(self, num_tokens: int, height: int, width: int) -> None:
        super().__init__()
        self.prefix, self.rows, self.cols = _token_grid(num_tokens, height, width)
        self.patches = torch.nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _, dim = tokens.shape
        grid = self.patches(tokens[:, self.prefix :].transpose(1, 2).reshape(batch, dim, self.rows, self.cols))
        return torch.cat([tokens[:, : self.prefix], grid.flatten(2).transpose(1, 2)], dim=1)


def _token_grid(num_tokens: int, height: int, width: int) -> tuple[int, int, int]:
    """(prefix, rows, cols): the fewest leading tokens to leave out so that the rest tile an image of
    ``height`` x ``width`` pixels as a rows x cols grid of square patches."""
    for prefix in range(min(num_tokens, 8)):
        patches = num_tokens - prefix
        rows = round(math.sqrt(patches * height / width))
        if rows > 0 and patches % rows == 0 and rows * width == (patches // rows) * height:
            return prefix, rows, patches // rows
    raise ValueError(
        f"the layer's {num_tokens} tokens do not tile a {height} x {width} image as a grid of patches; pass `layer`, "
        "the name of a layer with a [B, C, h, w] output or [B, tokens, D] patch tokens"
    )


def _layer(model: torch.nn.Module, images: torch.Tensor, name: str | None) -> torch.nn.Module:
    """The module named ``name``, or the default layer of ``grad_cam``."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(
                f"`layer`={name!r} is not a module of the model; its modules are named like {list(modules)[1:6]}..."
            )
        return modules[name]
    blocks = [module for module_name, module in modules.items() if module_name.rsplit(".", 1)[-1] == TOKEN_LAYER_NAME]
    if blocks:
        return blocks[-1]
    spatial: list[torch.nn.Module] = []  # modules in the order they finish; the last one with a [B, C, h, w] map wins

    def record(module: torch.nn.Module, _input: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
            spatial.append(module)

    hooks = [module.register_forward_hook(record) for module in modules.values()]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if not spatial:
        raise ValueError(
            "found no layer to map: the model has no transformer block (`*.layernorm_before`) and no layer with a "
            "[B, C, h, w] output; pass `layer`, the name of one"
        )
    return spatial[-1]
