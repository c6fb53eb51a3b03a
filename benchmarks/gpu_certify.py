"""Certification throughput on an accelerator: precision, channels-last and a compiled forward, side by side.

For ViT-B/16 at 224 px (``ViTConfig()`` defaults), ResNet-50 (``ResNetConfig()`` defaults) and the embedded
default's stand-in ViT (28 x 28 digits), all with random weights (throughput does not depend on them, so
nothing is downloaded), and for each variant (fp32; bf16; bf16 + channels-last for the CNN; bf16 + compile):

  - bare forward: the model's forward + argmax on one pre-drawn noisy batch, in the same precision;
  - certify: ``Smoother.certify`` (seeded noise chunks drawn on the device, bincount counts) on a few images;

in noisy samples per second, their ratio, and the seconds one image takes at n0 = 100, n = 100,000 at that
rate. Rounds alternate between the two, the best round counts. The sampling alone (the same ``certify`` with a
classifier that costs nothing: noise chunks, owner indices, bincount, host syncs) is timed too; its share of
certify's time is the overhead off the forward. Also the share of certificate rows (class, radius) identical
at two batch sizes (kernels may differ by batch size: reported, not hidden). JSON with the device name.
``--tiny`` runs tiny configurations with few samples, on CPU too (the test suite runs it).

    python benchmarks/gpu_certify.py --output benchmarks/results/gpu_certify.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

from smoothing_hf import SmoothedImageClassifier, Smoother, SmoothingConfig
from smoothing_hf.files import write_json

STANDARD_SAMPLES = 100 + 100_000  # n0 + n of a paper's CERTIFY


def models(tiny: bool) -> dict[str, tuple[torch.nn.Module, int, int, bool]]:
    """name -> (base model, image size, channels, is convolutional), random weights."""
    if tiny:
        return {
            "vit-tiny": (ViTForImageClassification(ViTConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, num_labels=10)), 32, 3, False),
            "resnet-tiny": (ResNetForImageClassification(ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10
            )), 32, 3, True),
        }
    return {
        "vit-b16-224": (ViTForImageClassification(ViTConfig(num_labels=1000)), 224, 3, False),
        "resnet50-224": (ResNetForImageClassification(ResNetConfig(num_labels=1000)), 224, 3, True),
        "embedded-vit-28": (ViTForImageClassification(ViTConfig(
            image_size=28, patch_size=7, num_channels=1, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, num_labels=10)), 28, 1, False),
    }


def variants(convolutional: bool) -> dict[str, dict]:
    chosen = {"fp32": {}, "bf16": {"precision": "bf16"}}
    if convolutional:
        chosen["bf16+channels_last"] = {"precision": "bf16", "channels_last": True}
    chosen["bf16+compile"] = {"precision": "bf16", "compile": True}
    return chosen


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(smoothed: SmoothedImageClassifier, options: dict, size: int, channels: int, args, device) -> dict:
    smoother = copy.deepcopy(smoothed).smoother(**options)  # a fresh copy: channels-last converts it in place
    images = torch.rand(args.images, channels, size, size, device=device)
    noisy = (images[:1] + 0.25 * torch.randn(args.batch_size, channels, size, size, device=device))
    kwargs = dict(n0=100, n=args.n, alpha=0.001, batch_size=args.batch_size, seed=0)
    smoother.certify(images[:1], **{**kwargs, "n": args.batch_size})  # warm-up (and compilation)
    with torch.inference_mode():
        smoother.forward(noisy, args.batch_size).argmax(dim=1)
    bare, certify = [], []
    for _ in range(args.rounds):
        synchronize(device)
        tic = time.perf_counter()
        with torch.inference_mode():
            for _ in range(args.forward_batches):
                smoother.forward(noisy, args.batch_size).argmax(dim=1).sum().item()  # a host sync, as certify has
        synchronize(device)
        bare.append(args.forward_batches * args.batch_size / (time.perf_counter() - tic))
        tic = time.perf_counter()
        first = smoother.certify(images, **kwargs)
        synchronize(device)
        certify.append(args.images * (100 + args.n) / (time.perf_counter() - tic))
    num_classes = smoother.num_classes
    sampling = Smoother(lambda x: torch.zeros(len(x), num_classes, device=x.device), num_classes, sigma=0.25)
    sampling.certify(images[:1], **{**kwargs, "n": args.batch_size})  # warm-up
    sampling_only = []
    for _ in range(args.rounds):
        synchronize(device)
        tic = time.perf_counter()
        sampling.certify(images, **kwargs)
        synchronize(device)
        sampling_only.append(args.images * (100 + args.n) / (time.perf_counter() - tic))
    other = smoother.certify(images, **{**kwargs, "batch_size": args.batch_size // 2})
    same = sum((a.prediction, a.radius) == (b.prediction, b.radius) for a, b in zip(first, other))
    return {
        "bare_forward_samples_per_second": max(bare), "certify_samples_per_second": max(certify),
        "certify_over_bare_forward": max(certify) / max(bare),
        "seconds_per_image_at_n_100000": STANDARD_SAMPLES / max(certify),
        "sampling_only_samples_per_second": max(sampling_only),
        "sampling_share_of_certify_time": max(certify) / max(sampling_only),
        "rows_identical_at_batch_sizes": [args.batch_size, args.batch_size // 2],
        "share_of_rows_identical": same / len(first),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny models and few samples (CPU, the test suite).")
    parser.add_argument("--batch_size", type=int, default=None, help="Default 1000 (--tiny: 64).")
    parser.add_argument("--n", type=int, default=None, help="Estimation samples per certified image (default 20,000; "
                        "--tiny: 256); seconds at n = 100,000 are extrapolated from the rate.")
    parser.add_argument("--images", type=int, default=2, help="Images per certify call.")
    parser.add_argument("--forward_batches", type=int, default=None, help="Bare forward batches per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=None, help="A subset of the model names.")
    parser.add_argument("--output", default="benchmarks/results/gpu_certify.json")
    args = parser.parse_args()
    args.batch_size = args.batch_size or (64 if args.tiny else 1000)
    args.n = args.n or (256 if args.tiny else 20_000)
    args.forward_batches = args.forward_batches or (2 if args.tiny else 20)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "settings": {k: v for k, v in vars(args).items() if k != "output"}, "models": {},
    }
    for name, (base, size, channels, convolutional) in models(args.tiny).items():
        if args.models and name not in args.models:
            continue
        smoothed = SmoothedImageClassifier(
            base, SmoothingConfig(sigma=0.25, image_mean=[0.5] * channels, image_std=[0.5] * channels)
        ).to(device).eval()
        results["models"][name] = {}
        for variant, options in variants(convolutional).items():
            results["models"][name][variant] = measure(smoothed, options, size, channels, args, device)
            print(name, variant, json.dumps(results["models"][name][variant]), flush=True)
            write_json(results, args.output)
        fp32, bf16 = (results["models"][name][v]["certify_samples_per_second"] for v in ("fp32", "bf16"))
        results["models"][name]["bf16_over_fp32"] = bf16 / fp32
    write_json(results, args.output)


if __name__ == "__main__":
    main()
