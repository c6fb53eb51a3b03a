"""Training of the baselines that leave the base classifier untouched and put a denoiser in front of it.

- Denoised smoothing (Salman et al., NeurIPS 2020): a ``DnCNN`` trained by ``DenoiserTrainer`` on noisy
  images with the MSE to the clean image (``objective="mse"``), or with the stability objective
  (``"stability"``): cross-entropy between the frozen classifier's prediction on the clean image and its logits
  on the denoised noisy image, gradients through the frozen classifier, which is the target model itself (full
  access) or a ``surrogate`` (query access to the target).
- Diffusion denoised smoothing (Carlini et al., ICLR 2023): a ``DiffusionDenoiser`` needs no training of its
  own, but a DDPM; ``train_ddpm`` trains a small one on clean images (the embedded default has no Hub DDPM to
  download). ``denoising_error`` measures what a denoiser removes.

The modules themselves are input modules (``smoothing_hf.input_modules``; re-exported here): either goes in
front of the frozen base with ``SmoothedImageClassifier.from_pretrained(base, sigma=..., input_module=module)``;
the composite ``base(denoiser(x + e))`` is one fixed function of the noisy image, so it is certified, saved
(``input_module.safetensors``) and loaded like any smoothed model, without this module.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from .checks import check_choice, check_sigma
from .input_modules import DiffusionDenoiser, DnCNN, diffusion_timestep
from .modeling import SmoothedImageClassifier
from .noise import NoiseCollator
from .trainer import EVAL_NOISE_SEED, SmoothingTrainer

__all__ = [
    "OBJECTIVES", "DenoiserTrainer", "DenoisingCollator", "DiffusionDenoiser", "DnCNN", "base_logits",
    "ddpm_unet_config", "denoising_error", "diffusion_timestep", "train_ddpm",
]

OBJECTIVES = ("mse", "stability")
"""Training objectives of a denoiser: MSE to the clean image, or the stability cross-entropy."""


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
        check_choice(objective, "objective", OBJECTIVES)
        if surrogate is not None:
            if objective != "stability":
                raise ValueError("`surrogate` is used by the 'stability' objective only")
            if not isinstance(surrogate, SmoothedImageClassifier) or surrogate.input_module is not None:
                raise TypeError("`surrogate` must be a SmoothedImageClassifier without an input module")
            if surrogate.num_channels != model.num_channels:
                raise ValueError(
                    f"`surrogate` takes {surrogate.num_channels}-channel images, the model "
                    f"{model.num_channels}-channel ones"
                )
            surrogate.requires_grad_(False).eval()
        if "consistency_weight" in kwargs:
            raise TypeError(
                "`consistency_weight` is not an option of DenoiserTrainer (its loss is the denoiser objective)"
            )
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
        # that gradients are synchronized); a forward hook keeps the denoised pixels for the MSE and surrogate
        # losses.
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
    return smoothed.base_logits(pixels)


# ---------------------------------------------------------------------------------------------- diffusion


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
    AdamW (linear warm-up over min(100, max_steps / 5) steps). Training stops after ``max_steps`` or
    ``max_seconds``, whichever comes first. For one-shot denoising only the timesteps up to t*(largest sigma)
    are ever used, so a ``max_timestep`` there spends a short training budget where it matters
    (``diffusion_timestep``).

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
        raise ValueError(
            f"the UNet's sample_size {unet.config.sample_size} does not match the images' size {images.shape[-1]}"
        )
    scheduler = DDPMScheduler.from_config(scheduler_config or {})
    last = scheduler.config.num_train_timesteps - 1 if max_timestep is None else int(max_timestep)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup_steps = max(1, min(100, max_steps // 5))
    # Ours, not transformers' get_constant_schedule_with_warmup (which starts at 0, not 1 / warmup_steps): switching
    # would change the embedded DDPM and the published diffusion figures.
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
