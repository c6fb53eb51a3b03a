"""Diffusion denoised smoothing (Carlini et al., ICLR 2023): one DDPM denoising step at the timestep t* whose
noise level matches sigma, as an input module (diffusers' ``UNet2DModel`` + ``DDPMScheduler``).

Sigma lives in [0, 1] pixels here as everywhere in this library; diffusers' images live in [-1, 1], where the
same noise has std 2 * sigma. diffusers is imported when a denoiser is built, not with this module. A small
DDPM is trained by ``smoothing_hf.baselines.train_ddpm``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from ..checks import check_choice, check_sigma
from .base import InputModule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What a DDPM's UNet may predict (its scheduler's ``prediction_type``); each is turned into x_0."""


def diffusion_timestep(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """t*: the timestep whose noise level matches pixel noise ``sigma`` (Carlini et al., 2023).

    In diffusers' [-1, 1] scale, pixel noise of std sigma has std 2 * sigma; x_t = sqrt(abar_t) x_0 +
    sqrt(1 - abar_t) eps is a scaled copy of x_0 + noise of variance (1 - abar_t) / abar_t, so t* is the t
    whose (1 - abar_t) / abar_t is closest to (2 * sigma)^2 (the first such t on a tie)."""
    sigma = check_sigma(sigma)
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return int(torch.argmin(((1 - abar) / abar - (2 * sigma) ** 2).abs()))


def _json_config(config: Any) -> dict[str, Any]:
    """A diffusers config as plain JSON values, without its bookkeeping keys (``_class_name``, ...)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


class DiffusionDenoiser(InputModule):
    """One-shot denoising with a DDPM at the timestep t* matching sigma (Carlini et al., 2023).

    The input already is the noisy image x + e (pixels, [0, 1] scale). In diffusers' scale it is
    2 (x + e) - 1 = (2x - 1) + 2e, and sqrt(abar) * (2 (x + e) - 1) has exactly the distribution of the
    diffusion's x_t* given x_0 = 2x - 1 when (1 - abar) / abar = (2 sigma)^2 (``diffusion_timestep``). The
    UNet predicts eps (the first C channels of a learned-variance model's 2C outputs; ``sample`` and
    ``v_prediction`` models are converted), x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) is clamped to
    [-1, 1] as Carlini et al. do, and returned as (x_0 + 1) / 2 in [0, 1]. The UNet is frozen.

    Build it with ``from_pretrained`` (a DDPM pipeline folder or Hub id, e.g. ``google/ddpm-cifar10-32``) or
    ``from_diffusers`` (a ``UNet2DModel`` and ``DDPMScheduler``); the options (UNet and scheduler configs,
    sigma) rebuild it offline before ``input_module.safetensors`` fills in the weights.

    Args:
        unet_config: the ``UNet2DModel`` config (JSON values).
        scheduler_config: the ``DDPMScheduler`` config (its beta schedule gives abar_t).
        sigma: pixel noise std ([0, 1] scale) of the smoothed classifier it serves.
        source: where the DDPM came from (Hub id or folder), for the record.
    """

    module_type = "diffusion"
    description = (
        "one-shot DDPM denoising at the timestep matching sigma (diffusion denoised smoothing, Carlini et al. 2023)"
    )

    def __init__(
        self, unet_config: dict[str, Any], scheduler_config: dict[str, Any], sigma: float, source: str | None = None
    ) -> None:
        from diffusers import DDPMScheduler, UNet2DModel

        sigma = check_sigma(sigma)
        unet_config, scheduler_config = _json_config(unet_config), _json_config(scheduler_config)
        super().__init__(unet_config=unet_config, scheduler_config=scheduler_config, sigma=sigma, source=source)
        self.unet = UNet2DModel.from_config(unet_config).requires_grad_(False).eval()
        scheduler = DDPMScheduler.from_config(scheduler_config)
        self.sigma = sigma
        self.timestep = diffusion_timestep(scheduler.alphas_cumprod, sigma)
        self.alpha_bar = float(scheduler.alphas_cumprod[self.timestep])
        self.prediction_type = scheduler.config.prediction_type
        check_choice(self.prediction_type, "scheduler_config['prediction_type']", PREDICTION_TYPES)
        self.num_channels = self.unet.config.in_channels
        size = self.unet.config.sample_size
        self.image_size = None if size is None else (size, size) if isinstance(size, int) else tuple(size)

    def train(self, mode: bool = True) -> DiffusionDenoiser:
        """The UNet stays in eval mode (no dropout): it is a fixed, pretrained denoiser."""
        super().train(mode)
        self.unet.eval()
        return self

    @classmethod
    def from_diffusers(
        cls, unet: Any, scheduler: Any, sigma: float, source: str | None = None
    ) -> DiffusionDenoiser:
        """The denoiser for a diffusers ``UNet2DModel`` and ``DDPMScheduler`` (their weights copied)."""
        module = cls(unet.config, scheduler.config, sigma, source=source)
        module.unet.load_state_dict(unet.state_dict())
        return module

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, sigma: float, **hub_kwargs: Any) -> DiffusionDenoiser:
        """The denoiser of a DDPM pipeline (Hub id or folder with ``unet/`` and ``scheduler/``, e.g.
        ``google/ddpm-cifar10-32``; or a folder holding the UNet and scheduler configs at its root).
        ``hub_kwargs`` (revision, token, cache_dir, local_files_only, ...) go to the downloads."""
        from diffusers import DDPMScheduler, UNet2DModel

        def load(loader: Any, subfolder: str, **kwargs: Any) -> Any:
            try:
                return loader.from_pretrained(name_or_path, subfolder=subfolder, **kwargs, **hub_kwargs)
            except (OSError, ValueError):
                try:
                    return loader.from_pretrained(name_or_path, **kwargs, **hub_kwargs)
                except (OSError, ValueError) as error:
                    raise OSError(
                        f"{os.fspath(name_or_path)!r} has no diffusers {loader.__name__} (in {subfolder}/ or at its "
                        "root); pass a DDPM pipeline such as 'google/ddpm-cifar10-32' or a train_ddpm.py folder: "
                        f"{error}"
                    ) from error

        unet = load(UNet2DModel, "unet", use_safetensors=True)  # safetensors only: never unpickles a checkpoint
        scheduler = load(DDPMScheduler, "scheduler")
        return cls.from_diffusers(unet, scheduler, sigma, source=os.fspath(name_or_path))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The denoised pixels [B, C, H, W] in [0, 1] of noisy pixels [B, C, H, W] (the [0, 1] scale)."""
        expected = (self.num_channels, *(self.image_size or pixels.shape[-2:]))
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"the diffusion model {self.options['source'] or ''} denoises {' x '.join(map(str, expected))} "
                f"images (channels x height x width), got pixels of shape {tuple(pixels.shape)}: resize the data to "
                "the DDPM's size (a base model whose image processor has that size) or use a DDPM trained at the "
                "data's size"
            )
        a = self.alpha_bar
        x_t = math.sqrt(a) * (2 * pixels - 1)
        t = torch.full((pixels.shape[0],), self.timestep, device=pixels.device, dtype=torch.long)
        dtype = next(self.unet.parameters()).dtype
        prediction = self.unet(x_t.to(dtype), t).sample.to(pixels.dtype)[:, : self.num_channels]
        if self.prediction_type == "epsilon":
            x_0 = (x_t - math.sqrt(1 - a) * prediction) / math.sqrt(a)
        elif self.prediction_type == "sample":
            x_0 = prediction
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x_0
            x_0 = math.sqrt(a) * x_t - math.sqrt(1 - a) * prediction
        return (x_0.clamp(-1, 1) + 1) / 2
