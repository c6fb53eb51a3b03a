"""``DnCNN``: the denoiser of denoised smoothing (Salman et al., NeurIPS 2020), an input module.

Trained by ``smoothing_hf.baselines.DenoiserTrainer``; this module holds the architecture only, so a saved
denoiser composite loads without the training code.
"""

from __future__ import annotations

import torch

from ..checks import check_int
from .base import InputModule


class DnCNN(InputModule):
    """A DnCNN-style denoiser (Zhang et al., 2017; the denoiser of Salman et al., 2020): conv + ReLU, then
    ``depth - 2`` blocks of conv + BatchNorm + ReLU at ``width`` channels, then a conv back to the image's
    channels that predicts the noise; the output is ``x - net(x)`` (pixels of the input's shape).

    The last convolution starts at zero, so an untrained denoiser is the identity and the composite starts
    as the unadapted base model. BatchNorm, as in DnCNN and Salman et al.'s code: in eval mode (always, when
    certifying) it is a fixed per-channel affine map from saved running statistics, so each noisy sample's
    output does not depend on the others in its batch; GroupNorm would be batch-independent in training
    too, but costs more per forward pass and is not the published architecture.

    Args:
        num_channels: image channels (1 grayscale, 3 RGB).
        depth: convolutions in all (>= 2).
        width: channels of the hidden convolutions.
    """

    module_type = "dncnn"
    description = "a DnCNN denoiser (denoised smoothing, Salman et al. 2020)"

    def __init__(self, num_channels: int = 3, depth: int = 6, width: int = 32) -> None:
        for name, value, low in (("num_channels", num_channels, 1), ("depth", depth, 2), ("width", width, 1)):
            check_int(value, name, minimum=low)
        super().__init__(num_channels=num_channels, depth=depth, width=width)
        self.num_channels = num_channels
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(num_channels, width, 3, padding=1), torch.nn.ReLU()]
        for _ in range(depth - 2):
            layers += [
                torch.nn.Conv2d(width, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU()
            ]
        layers.append(torch.nn.Conv2d(width, num_channels, 3, padding=1, bias=False))
        self.layers = torch.nn.Sequential(*layers)
        for module in self.layers:
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.orthogonal_(module.weight)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
        torch.nn.init.zeros_(self.layers[-1].weight)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The denoised pixels [B, C, H, W] of (noisy) pixels [B, C, H, W] on the [0, 1] scale."""
        if pixels.dim() != 4 or pixels.shape[1] != self.num_channels:
            raise ValueError(
                f"the DnCNN denoiser takes [B, {self.num_channels}, H, W] pixels (num_channels={self.num_channels}), "
                f"got {tuple(pixels.shape)}"
            )
        return pixels - self.layers(pixels)
