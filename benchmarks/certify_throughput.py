"""Certification throughput against the bare forward-pass rate of the same model, side by side.

Measures, for a small ViT on this machine's device:
  - bare forward: the model's own forward + argmax on pre-drawn noisy batches (the floor of any sampler);
  - Smoother.sample_counts: our sampling loop (seeded noise chunks drawn on the device, bincount counts);
  - for a LoRA model: certification through the adapter merged into a copy of the weights, against a
    Cohen-style loop (``x.repeat``, ``randn_like``, CPU ``np.bincount``) on the unmerged PEFT model.
Rounds alternate between the variants so that machine load affects all alike; the best round counts.
Writes JSON (rates in noisy samples per second, and their ratios).

    python benchmarks/certify_throughput.py --output benchmarks/results/certify_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

from smoothing_hf import Phase, SmoothedImageClassifier, SmoothingConfig
from smoothing_hf.files import write_json


def build_model(image_size: int, device: torch.device) -> SmoothedImageClassifier:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=image_size,
        patch_size=4,
        num_channels=3,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=10,
    )
    smoothing = SmoothingConfig(sigma=0.25, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return SmoothedImageClassifier(ViTForImageClassification(config), smoothing).to(device).eval()


def bare_forward(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[], int]:
    def run() -> int:
        with torch.inference_mode():
            for batch in batches:
                model(batch).logits.argmax(dim=1)
        return sum(len(b) for b in batches)

    return run


def smoother_counts(
    model: SmoothedImageClassifier, image: torch.Tensor, num_samples: int, batch_size: int, merge: bool
) -> Callable[[], int]:
    smoother = model.smoother(merge_adapter=merge)

    def run() -> int:
        smoother.sample_counts(image, [0], Phase.ESTIMATION, num_samples, batch_size)
        return num_samples

    return run


def cohen_loop(
    model: torch.nn.Module, image: torch.Tensor, num_samples: int, batch_size: int, sigma: float
) -> Callable[[], int]:
    """Cohen et al.'s ``_sample_noise`` (locuslab/smoothing code/core.py), on the unmerged model."""

    def run() -> int:
        counts = np.zeros(10, dtype=int)
        remaining = num_samples
        with torch.inference_mode():
            while remaining > 0:
                this_batch = min(batch_size, remaining)
                remaining -= this_batch
                batch = image.repeat((this_batch, 1, 1, 1))
                noise = torch.randn_like(batch) * sigma
                predictions = model(batch + noise).logits.argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=10)
        return num_samples

    return run


def measure(variants: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
    best = {name: 0.0 for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            samples = run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = max(best[name], samples / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_samples", type=int, default=2048, help="noisy samples per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/certify_throughput.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(args.image_size, device)
    image = torch.rand(1, 3, args.image_size, args.image_size, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = [
        image
        + 0.25 * torch.randn((args.batch_size, 3, args.image_size, args.image_size), generator=generator, device=device)
        for _ in range(args.num_samples // args.batch_size)
    ]
    lora = (
        SmoothedImageClassifier(
            get_peft_model(
                build_model(args.image_size, device).model,
                LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]),
            ),
            model.config,
        )
        .to(device)
        .eval()
    )

    rates = measure(
        {
            "bare_forward": bare_forward(model, batches),
            "smoother": smoother_counts(model, image, len(batches) * args.batch_size, args.batch_size, merge=False),
            "lora_merged_smoother": smoother_counts(
                lora, image, len(batches) * args.batch_size, args.batch_size, merge=True
            ),
            "lora_cohen_loop_unmerged": cohen_loop(lora, image, len(batches) * args.batch_size, args.batch_size, 0.25),
        },
        args.rounds,
    )
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "settings": vars(args),
        "samples_per_second": rates,
        "ratios": {
            "smoother_over_bare_forward": rates["smoother"] / rates["bare_forward"],
            "lora_merged_over_bare_forward": rates["lora_merged_smoother"] / rates["bare_forward"],
            "lora_merged_over_cohen_loop_unmerged": rates["lora_merged_smoother"] / rates["lora_cohen_loop_unmerged"],
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json(result, args.output)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
