"""Baselines that leave the base classifier untouched and put a denoiser in front of it.

- Denoised smoothing (Salman et al., NeurIPS 2020): ``DnCNN``, a small residual convolutional denoiser,
  trained by ``DenoiserTrainer`` on noisy images with the MSE to the clean image (``objective="mse"``), or
  with the stability objective (``"stability"``): cross-entropy between the frozen classifier's prediction
  on the clean image and its logits on the denoised noisy image, gradients through the frozen classifier,
  which is the target model itself (full access) or a ``surrogate`` (query access to the target).
- Diffusion denoised smoothing (Carlini et al., ICLR 2023): ``DiffusionDenoiser``, one denoising step of a
  DDPM (diffusers' ``UNet2DModel`` + ``DDPMScheduler``) at the timestep t* whose noise level matches sigma.
  ``train_ddpm`` trains a small one on clean images (the embedded default has no Hub DDPM to download).

Either module goes in front of the frozen base with
``SmoothedImageClassifier.from_pretrained(base, sigma=..., input_module=module)``; the composite
``base(denoiser(x + e))`` is one fixed function of the noisy image, so it is certified, saved
(``input_module.safetensors``) and loaded like any smoothed model. Sigma lives in [0, 1] pixels here as
everywhere in this library; diffusers' images live in [-1, 1], where the same noise has std 2 * sigma.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from .checks import check_sigma
from .input_modules import InputModule
from .modeling import SmoothedImageClassifier
from .noise import NoiseCollator
from .trainer import EVAL_NOISE_SEED, SmoothingTrainer

OBJECTIVES = ("mse", "stability")
"""Training objectives of a denoiser: MSE to the clean image, or the stability cross-entropy."""


# ---------------------------------------------------------------------------------------------- DnCNN


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
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
        super().__init__(num_channels=num_channels, depth=depth, width=width)
        self.num_channels = num_channels
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(num_channels, width, 3, padding=1), torch.nn.ReLU()]
        for _ in range(depth - 2):
            layers += [torch.nn.Conv2d(width, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
        layers.append(torch.nn.Conv2d(width, num_channels, 3, padding=1, bias=False))
        self.layers = torch.nn.Sequential(*layers)
        for module in self.layers:
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.orthogonal_(module.weight)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
        torch.nn.init.zeros_(self.layers[-1].weight)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() != 4 or pixels.shape[1] != self.num_channels:
            raise ValueError(
                f"the DnCNN denoiser takes [B, {self.num_channels}, H, W] pixels (num_channels={self.num_channels}), "
                f"got {tuple(pixels.shape)}"
            )
        return pixels - self.layers(pixels)


# ---------------------------------------------------------------------------------------------- training


class DenoisingCollator(NoiseCollator):
    """``NoiseCollator`` that also passes the clean images along: ``"clean_pixel_values"`` [B * m, C, H, W],
    row i the clean image of the noisy row i of ``"pixel_values"``, which the MSE and stability objectives
    compare against."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        batch["clean_pixel_values"] = self._stack_pixels(examples).repeat_interleave(self.num_noise_samples, dim=0)
        return batch


class DenoiserTrainer(SmoothingTrainer):
    """Trains the denoiser (the input module) of a ``SmoothedImageClassifier`` whose base model is frozen.

    Objectives, for a noisy image x + e with clean image x and denoiser D:
        - ``"mse"``: mean over pixels of (D(x + e) - x)^2;
        - ``"stability"``: cross-entropy of F(D(x + e)) against argmax F(x), where F is the frozen base
          classifier (gradients flow through it into D), or ``surrogate`` when the target may only be queried
          (Salman et al.'s query-access setting: the surrogate stands in for the target while training; the
          composite then certifies with the target). The hard label argmax F(x) is what Salman et al.'s
          ``train_denoiser.py`` uses; the true label is not used, as in their paper.
    Evaluation reports this loss and the composite's accuracy on noisy images (``eval_accuracy``). The
    frozen classifiers run in eval mode (no dropout), as in Salman et al. After ``train()`` the objective is
    recorded in ``model.config.training["objective"]`` for the model card.

    Args:
        model: a ``SmoothedImageClassifier`` with a trainable input module (e.g. ``DnCNN``).
        args: ``TrainingArguments``.
        objective: ``"mse"`` or ``"stability"``.
        surrogate: for ``"stability"`` only: a ``SmoothedImageClassifier`` (no input module; any sigma, any
            label set) whose base model stands in for the target's in the loss.
        num_noise_samples: noisy copies of each image per batch.
        **kwargs: the other ``Trainer`` arguments (train_dataset, eval_dataset, callbacks, ...).
    """

    def __init__(
        self,
        model: SmoothedImageClassifier,
        args: Any = None,
        *,
        objective: str = "mse",
        surrogate: SmoothedImageClassifier | None = None,
        num_noise_samples: int = 1,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, SmoothedImageClassifier):
            raise TypeError(f"`model` must be a SmoothedImageClassifier, got {type(model).__name__}")
        if model.input_module is None or not any(p.requires_grad for p in model.input_module.parameters()):
            raise ValueError(
                "`model` must have a trainable input module: build it with "
                "SmoothedImageClassifier.from_pretrained(base, sigma=..., input_module=DnCNN(...))"
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}")
        if surrogate is not None:
            if objective != "stability":
                raise ValueError("`surrogate` is used by the 'stability' objective only")
            if not isinstance(surrogate, SmoothedImageClassifier) or surrogate.input_module is not None:
                raise TypeError("`surrogate` must be a SmoothedImageClassifier without an input module")
            if surrogate.num_channels != model.num_channels:
                raise ValueError(
                    f"`surrogate` takes {surrogate.num_channels}-channel images, the model {model.num_channels}-channel ones"
                )
            surrogate.requires_grad_(False).eval()
        if "consistency_weight" in kwargs:
            raise TypeError("`consistency_weight` is not an option of DenoiserTrainer (its loss is the denoiser objective)")
        self.objective = objective
        self.surrogate = surrogate
        if data_collator is None:
            seed = args.seed if args is not None else 42
            data_collator = DenoisingCollator(model.sigma, num_noise_samples, seed=seed)
        super().__init__(model, args, num_noise_samples=num_noise_samples, data_collator=data_collator, **kwargs)
        self.eval_data_collator = DenoisingCollator(model.sigma, 1, seed=EVAL_NOISE_SEED, deterministic=True)
        if self.surrogate is not None:
            self.surrogate.to(self.args.device)

    @property
    def objective_record(self) -> str:
        """The objective as ``config.training["objective"]`` records it."""
        if self.surrogate is None:
            return self.objective
        return f"stability (surrogate: {self.surrogate.config.base_model_name_or_path})"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective's mean over the micro-batch (the Trainer divides it for gradient accumulation)."""
        if "clean_pixel_values" not in inputs:
            raise KeyError("the batch has no 'clean_pixel_values': train a denoiser with DenoisingCollator")
        smoothed = self.model  # the SmoothedImageClassifier itself, also when ``model`` is a DDP wrapper
        smoothed.model.eval()  # frozen base: no dropout (the Trainer's model.train() switched it on)
        noisy, clean = inputs["pixel_values"], inputs["clean_pixel_values"]
        # The composite runs through ``model(...)``, the Trainer's model (DDP-wrapped with several processes, so
        # that gradients are synchronized); a forward hook keeps the denoised pixels for the MSE and surrogate losses.
        kept: list[torch.Tensor] = []
        hook = smoothed.input_module.register_forward_hook(lambda module, args, output: kept.append(output))
        try:
            outputs = model(pixel_values=noisy)  # base(denoiser(noisy))
        finally:
            hook.remove()
        denoised = kept[-1]
        if self.objective == "mse":
            loss = F.mse_loss(denoised.float(), clean.float())
        else:
            classifier = self.surrogate if self.surrogate is not None else smoothed
            with torch.no_grad():
                targets = base_logits(classifier, clean).argmax(-1)
            logits = outputs.logits if self.surrogate is None else base_logits(self.surrogate, denoised)
            loss = F.cross_entropy(logits.float(), targets)
        return (loss, outputs) if return_outputs else loss

    def train(self, *args: Any, **kwargs: Any):
        output = super().train(*args, **kwargs)
        self.model.record_training(objective=self.objective_record)
        return output


def base_logits(smoothed: SmoothedImageClassifier, pixels: torch.Tensor) -> torch.Tensor:
    """The logits of ``smoothed``'s base model alone (no input module) on [B, C, H, W] pixels in [0, 1]."""
    normalized = (pixels - smoothed.image_mean) / smoothed.image_std
    dtype = next(smoothed.model.parameters()).dtype
    return smoothed.model(pixel_values=normalized.to(dtype)).logits


# ---------------------------------------------------------------------------------------------- diffusion


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
    description = "one-shot DDPM denoising at the timestep matching sigma (diffusion denoised smoothing, Carlini et al. 2023)"

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
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"unsupported scheduler prediction_type {self.prediction_type!r}")
        self.num_channels = self.unet.config.in_channels
        size = self.unet.config.sample_size
        self.image_size = None if size is None else (size, size) if isinstance(size, int) else tuple(size)

    def train(self, mode: bool = True) -> DiffusionDenoiser:
        """The UNet stays in eval mode (no dropout): it is a fixed, pretrained denoiser."""
        super().train(mode)
        self.unet.eval()
        return self

    @classmethod
    def from_diffusers(cls, unet: Any, scheduler: Any, sigma: float, source: str | None = None) -> DiffusionDenoiser:
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

        def load(loader: Any, subfolder: str) -> Any:
            try:
                return loader.from_pretrained(name_or_path, subfolder=subfolder, **hub_kwargs)
            except (OSError, ValueError):
                try:
                    return loader.from_pretrained(name_or_path, **hub_kwargs)
                except (OSError, ValueError) as error:
                    raise OSError(
                        f"{os.fspath(name_or_path)!r} has no diffusers {loader.__name__} (in {subfolder}/ or at its root); "
                        f"pass a DDPM pipeline such as 'google/ddpm-cifar10-32' or a train_ddpm.py folder: {error}"
                    ) from error

        return cls.from_diffusers(load(UNet2DModel, "unet"), load(DDPMScheduler, "scheduler"), sigma, source=os.fspath(name_or_path))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        expected = (self.num_channels, *(self.image_size or pixels.shape[-2:]))
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"the diffusion model {self.options['source'] or ''} denoises {' x '.join(map(str, expected))} images "
                f"(channels x height x width), got pixels of shape {tuple(pixels.shape)}: resize the data to the DDPM's "
                "size (a base model whose image processor has that size) or use a DDPM trained at the data's size"
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


def ddpm_unet_config(image_size: int, num_channels: int, width: int = 32) -> dict[str, Any]:
    """A small ``UNet2DModel`` config for ``image_size`` x ``image_size`` images: blocks of ``width``,
    2 * ``width``, 2 * ``width`` channels, one ResNet layer each, no attention but in the middle block; as
    many 2x downsamplings (up to 2) as the size allows (28 -> 14 -> 7; an odd size gets none)."""
    downsamplings = 2 if image_size % 4 == 0 else 1 if image_size % 2 == 0 else 0
    blocks = downsamplings + 1
    return {
        "sample_size": image_size, "in_channels": num_channels, "out_channels": num_channels, "layers_per_block": 1,
        "block_out_channels": [width] + [2 * width] * downsamplings, "down_block_types": ["DownBlock2D"] * blocks,
        "up_block_types": ["UpBlock2D"] * blocks, "norm_num_groups": min(8, width), "attention_head_dim": 8,
    }


def train_ddpm(
    images: torch.Tensor,
    *,
    unet_config: dict[str, Any] | None = None,
    scheduler_config: dict[str, Any] | None = None,
    max_steps: int = 10_000,
    max_seconds: float | None = None,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    max_timestep: int | None = None,
    seed: int = 0,
) -> tuple[Any, Any, dict[str, float]]:
    """Train a DDPM (epsilon prediction, Ho et al.'s simple loss) on clean ``images`` [N, C, H, W] in [0, 1].

    Each step draws ``batch_size`` images, timesteps t uniform in [0, ``max_timestep``] (default: all of the
    scheduler's), noise eps, and minimizes ||eps - UNet(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 with
    AdamW (linear warm-up over min(100, max_steps / 5) steps). Training stops after ``max_steps`` or ``max_seconds``, whichever
    comes first. For one-shot denoising only the timesteps up to t*(largest sigma) are ever used, so a
    ``max_timestep`` there spends a short training budget where it matters (``diffusion_timestep``).

    Returns the UNet (eval mode), the scheduler, and ``{"steps", "seconds", "loss"}`` (the mean loss of the
    last 50 steps).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"`images` must be square [N, C, H, W] pixels, got shape {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("`images` must be clean pixels in [0, 1]")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the UNet's initialization
    unet = UNet2DModel.from_config(unet_config or ddpm_unet_config(images.shape[-1], images.shape[1]))
    if unet.config.sample_size not in (images.shape[-1], [images.shape[-1]] * 2):
        raise ValueError(f"the UNet's sample_size {unet.config.sample_size} does not match the images' size {images.shape[-1]}")
    scheduler = DDPMScheduler.from_config(scheduler_config or {})
    last = scheduler.config.num_train_timesteps - 1 if max_timestep is None else int(max_timestep)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup_steps = max(1, min(100, max_steps // 5))
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    data = 2 * images.float() - 1
    unet.train()
    losses: list[float] = []
    started = time.perf_counter()
    step = 0
    while step < max_steps and (max_seconds is None or time.perf_counter() - started < max_seconds):
        x_0 = data[torch.randint(len(data), (batch_size,), generator=generator)]
        t = torch.randint(0, last + 1, (batch_size,), generator=generator)
        noise = torch.randn(x_0.shape, generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(x_0, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
        losses.append(loss.item())
        step += 1
    seconds = time.perf_counter() - started
    tail = losses[-50:]
    return unet.eval(), scheduler, {"steps": step, "seconds": seconds, "loss": sum(tail) / max(len(tail), 1)}


def denoising_error(
    denoiser: torch.nn.Module, images: torch.Tensor, sigma: float, seed: int = 0, batch_size: int = 256
) -> dict[str, float]:
    """Mean squared error to the clean ``images`` [N, C, H, W] (in [0, 1]) of the noisy images x + e, of the
    noisy images clipped to [0, 1], and of ``denoiser(x + e)``, one noisy copy per image (noise seeded by
    ``seed``): how much a denoiser removes, next to what clipping alone does."""
    sigma = check_sigma(sigma)
    generator = torch.Generator().manual_seed(seed)
    totals = {"noisy": 0.0, "clipped": 0.0, "denoised": 0.0}
    denoiser.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            clean = images[start : start + batch_size].float()
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
            device = next(iter(denoiser.parameters()), clean).device
            denoised = denoiser(noisy.to(device)).float().cpu()
            for name, value in (("noisy", noisy), ("clipped", noisy.clamp(0, 1)), ("denoised", denoised)):
                totals[name] += (value - clean).pow(2).sum().item()
    return {name: total / images.numel() for name, total in totals.items()}
