"""Train a small DDPM on clean images, for diffusion denoised smoothing when no pretrained DDPM can be downloaded.

With network access, take a Hub DDPM instead (``--diffusion_model google/ddpm-cifar10-32`` in
``examples/train_denoiser.py``). Offline, on the embedded default, this trains a small diffusers
``UNet2DModel`` with the standard DDPM loss on the clean training images, at the size and channels the base
model sees (its image processor), for a fixed number of steps (so the same command gives the same weights),
and saves a ``DDPMPipeline`` folder:

    python examples/train_ddpm.py --model_name_or_path runs/embedded/base-vit --dataset_name embedded:mnist \
        --max_steps 6000 --max_sigma 1.0 --output_dir runs/ddpm-mnist

``--max_sigma`` limits training to the timesteps up to t*(max_sigma), the only ones one-shot denoising uses.
``train_results.json`` records the steps, time and, per ``--eval_sigmas``, the MSE to the clean validation
images of the noisy, the clipped and the denoised images. The arguments may also come as one JSON file.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import DDPMPipeline, DDPMScheduler
from transformers import AutoConfig, AutoImageProcessor, HfArgumentParser, set_seed

from smoothing_hf import DiffusionDenoiser, ImageClassificationTransform, PixelTransform, load_image_dataset
from smoothing_hf.baselines import ddpm_unet_config, denoising_error, diffusion_timestep, train_ddpm
from smoothing_hf.files import write_json


@dataclass
class DDPMArguments:
    model_name_or_path: str = field(metadata={"help": "Base model whose image processor gives the size and channels."})
    output_dir: str = field(metadata={"help": "Where the DDPMPipeline folder (unet/, scheduler/) goes."})
    dataset_name: str = field(
        default="embedded:mnist", metadata={"help": "Hub dataset id or embedded:mnist / embedded:digits."}
    )
    width: int = field(default=16, metadata={"help": "Channels of the UNet's first block (then 2x, 2x)."})
    max_steps: int = field(default=6000, metadata={"help": "Training steps (about 8 minutes on 2 CPU cores)."})
    max_seconds: float | None = field(
        default=None,
        metadata={"help": "Optional time limit, seconds (the weights then depend on the machine's speed)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Images per step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate."})
    max_sigma: float | None = field(
        default=None, metadata={"help": "Train timesteps up to t*(max_sigma) only (default: all)."}
    )
    eval_sigmas: str = field(
        default="0.25,0.5", metadata={"help": "Pixel noise levels to report the denoising error at."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the initialization, batches and noise."})


def pixels(split, transform) -> torch.Tensor:
    return split.with_transform(transform)[:]["pixel_values"]


def main() -> None:
    parser = HfArgumentParser(DDPMArguments)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        (args,) = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        (args,) = parser.parse_args_into_dataclasses()
    set_seed(args.seed)  # first, though train_ddpm also seeds its own initialization, batches and noise

    dataset = load_image_dataset(args.dataset_name)
    channels = AutoConfig.from_pretrained(args.model_name_or_path).num_channels
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    transform = ImageClassificationTransform(PixelTransform(processor), channels)
    train, validation = pixels(dataset["train"], transform), pixels(dataset["validation"], transform)
    scheduler = DDPMScheduler()
    max_timestep = diffusion_timestep(scheduler.alphas_cumprod, args.max_sigma) if args.max_sigma else None
    unet, scheduler, stats = train_ddpm(
        train, unet_config=ddpm_unet_config(train.shape[-1], channels, args.width), scheduler_config=scheduler.config,
        max_steps=args.max_steps, max_seconds=args.max_seconds, batch_size=args.batch_size,
        learning_rate=args.learning_rate, max_timestep=max_timestep, seed=args.seed,
    )
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.output_dir)
    parameters = sum(p.numel() for p in unet.parameters())
    results = {**stats, "max_timestep": max_timestep, "parameters": parameters, "denoising_mse": {}}
    for sigma in map(float, args.eval_sigmas.split(",")):
        denoiser = DiffusionDenoiser.from_diffusers(unet, scheduler, sigma)
        errors = denoising_error(denoiser, validation, sigma)
        results["denoising_mse"][f"{sigma:g}"] = {"timestep": denoiser.timestep, **errors}
    write_json(results, os.path.join(args.output_dir, "train_results.json"))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
