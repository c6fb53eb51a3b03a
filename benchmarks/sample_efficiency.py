"""Sample efficiency: fixed-radius decisions and adaptive certification against Cohen's fixed-n CERTIFY.

On the same held-out images, the same seeds and the same alpha:
  - standard: ``Smoother.certify`` with n0 = 100, n = 100,000 (what papers run);
  - fixed radius: ``Smoother.certify_at_radius`` at r = 0.25 and r = 0.5 with up to max_n = 100,000;
    compared with the standard run's certified accuracy at the same r;
  - adaptive: ``Smoother.certify(..., tolerance=t)`` with the budget n = 100,000; compared with the
    standard run's certified accuracy at each radius and ACR.
Each image's noise stream is the same in all runs (``derive_seed(seed, idx)``), so the sequential modes
draw a prefix of the standard run's samples. Writes JSON: mean/median samples per image, the ratio of
the standard's samples to each, certified accuracies (%) and their differences (percentage points).

    python benchmarks/sample_efficiency.py --model runs/embedded/vit-lora-0.25 \
        --output benchmarks/results/sample_efficiency.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from smoothing_hf import ABSTAIN, ImageClassificationTransform, SmoothedImageClassifier, derive_seed, load_image_dataset
from smoothing_hf.files import write_json

RADII = (0.0, 0.25, 0.5, 0.75)


def certified_accuracy(correct: np.ndarray, radii: np.ndarray, radius: float) -> float:
    """Percentage of images certified correctly with radius >= ``radius``."""
    return float(100 * np.mean(correct & (radii >= radius)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/embedded/vit-lora-0.25", help="A saved smoothing model folder.")
    parser.add_argument("--dataset_name", default="embedded:mnist")
    parser.add_argument("--num_images", type=int, default=50, help="Held-out images, spread evenly over the split.")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=100_000, help="Standard n, and max_n of the sequential modes.")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument(
        "--radii", type=float, nargs="+", default=[0.25, 0.5], help="Radii tested in fixed-radius mode."
    )
    parser.add_argument(
        "--tolerances", type=float, nargs="+", default=[0.02, 0.05], help="Tolerances of adaptive mode."
    )
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/sample_efficiency.json")
    args = parser.parse_args()

    model = SmoothedImageClassifier.from_pretrained(args.model)
    split = load_image_dataset(args.dataset_name)["validation"].with_transform(
        ImageClassificationTransform.for_model(model)
    )
    indices = list(range(0, len(split), len(split) // args.num_images))[: args.num_images]
    items = [split[i] for i in indices]
    images = torch.stack([item["pixel_values"] for item in items])
    labels = np.array([item["labels"] for item in items])
    seeds = [derive_seed(args.seed, idx) for idx in indices]
    smoother = model.smoother()
    common = dict(n0=args.n0, alpha=args.alpha, batch_size=args.batch_size, seed=seeds)

    tic = time.perf_counter()
    standard = smoother.certify(images, n=args.n, **common)
    standard_seconds = time.perf_counter() - tic
    standard_samples = np.array([c.samples for c in standard])
    standard_correct = np.array([c.prediction == y and c.prediction != ABSTAIN for c, y in zip(standard, labels)])
    standard_radii = np.array([c.radius for c in standard])
    results = {
        "standard": {
            "n0": args.n0,
            "n": args.n,
            "mean_samples": float(standard_samples.mean()),
            "seconds": standard_seconds,
            "certified_accuracy": {f"{r:g}": certified_accuracy(standard_correct, standard_radii, r) for r in RADII},
            "acr": float(np.mean(standard_radii * standard_correct)),
        },
        "fixed_radius": {},
        "adaptive": {},
    }

    for radius in args.radii:
        tic = time.perf_counter()
        decisions = smoother.certify_at_radius(images, radius, max_n=args.n, **common)
        seconds = time.perf_counter() - tic
        samples = np.array([d.samples for d in decisions])
        certified = np.array([d.certified and d.prediction == y for d, y in zip(decisions, labels)])
        accuracy = float(100 * certified.mean())
        reference = certified_accuracy(standard_correct, standard_radii, radius)
        results["fixed_radius"][f"{radius:g}"] = {
            "certified_accuracy": accuracy,
            "standard_certified_accuracy": reference,
            "difference_pp": accuracy - reference,
            "mean_samples": float(samples.mean()),
            "median_samples": float(np.median(samples)),
            "samples_ratio": float(standard_samples.mean() / samples.mean()),
            "images_decided_differently": int(np.sum(certified != (standard_correct & (standard_radii >= radius)))),
            "seconds": seconds,
        }

    for tolerance in args.tolerances:
        tic = time.perf_counter()
        certificates = smoother.certify(images, n=args.n, tolerance=tolerance, **common)
        seconds = time.perf_counter() - tic
        samples = np.array([c.samples for c in certificates])
        correct = np.array([c.prediction == y and c.prediction != ABSTAIN for c, y in zip(certificates, labels)])
        radii = np.array([c.radius for c in certificates])
        accuracy = {f"{r:g}": certified_accuracy(correct, radii, r) for r in RADII}
        results["adaptive"][f"{tolerance:g}"] = {
            "certified_accuracy": accuracy,
            "difference_pp": {r: accuracy[r] - results["standard"]["certified_accuracy"][r] for r in accuracy},
            "acr": float(np.mean(radii * correct)),
            "acr_difference": float(np.mean(radii * correct) - results["standard"]["acr"]),
            "mean_samples": float(samples.mean()),
            "median_samples": float(np.median(samples)),
            "samples_ratio": float(standard_samples.mean() / samples.mean()),
            "seconds": seconds,
        }

    report = {
        "model": os.path.abspath(args.model),
        "dataset": args.dataset_name,
        "split": "validation",
        "indices": indices,
        "num_images": len(indices),
        "sigma": model.sigma,
        "alpha": args.alpha,
        "batch_size": args.batch_size,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        **results,
    }
    write_json(report, args.output)
    print(
        f"standard: n0 = {args.n0}, n = {args.n}: {standard_samples.mean():.0f} samples per image, "
        f"certified {results['standard']['certified_accuracy']}, ACR {results['standard']['acr']:.3f}"
    )
    for radius, row in results["fixed_radius"].items():
        print(
            f"fixed radius {radius}: {row['certified_accuracy']:.1f}% "
            f"(standard {row['standard_certified_accuracy']:.1f}%), "
            f"{row['mean_samples']:.0f} samples per image = {row['samples_ratio']:.1f}x fewer"
        )
    for tolerance, row in results["adaptive"].items():
        print(
            f"adaptive, tolerance {tolerance}: certified {row['certified_accuracy']}, ACR {row['acr']:.3f}, "
            f"{row['mean_samples']:.0f} samples per image = {row['samples_ratio']:.1f}x fewer"
        )


if __name__ == "__main__":
    main()
