"""Fine-tuning methods side by side on the same base, noise level, data and training budget.

Answers the reviewers' question "why can LoRA beat full fine-tuning?" with numbers from one run: for each
method, trainable parameters, training time, accuracy under noise before and after, and certified
accuracy at radii with ACR on the same held-out images. Writes JSON and a Markdown table.

    python benchmarks/compare_methods.py --base runs/embedded/base-vit --output benchmarks/results/methods.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import TrainingArguments

from smoothing_hf.files import write_json
from smoothing_hf import SmoothedImageClassifier, SmoothingTrainer, certify, trainable_parameters
from smoothing_hf.data import ImageClassificationTransform, load_image_dataset

RADII = (0.0, 0.25, 0.5, 0.75)


def run_method(method: str, args: argparse.Namespace, dataset) -> dict:
    model = SmoothedImageClassifier.from_pretrained(args.base, sigma=args.sigma, method=method)
    transform = ImageClassificationTransform.for_model(model)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, num_train_epochs=args.epochs, per_device_train_batch_size=64,
            per_device_eval_batch_size=250, learning_rate=args.learning_rates.get(method, args.learning_rate),
            warmup_steps=20, lr_scheduler_type="cosine", report_to=[], save_strategy="no", logging_steps=10_000,
            disable_tqdm=True, seed=0,
        )
        trainer = SmoothingTrainer(
            model, training_args, train_dataset=dataset["train"].with_transform(transform),
            eval_dataset=dataset["validation"].with_transform(transform),
        )
        before = trainer.evaluate(metric_key_prefix="before")["before_accuracy"]
        started = time.perf_counter()
        trainer.train()
        training_seconds = time.perf_counter() - started
        after = trainer.evaluate()["eval_accuracy"]
        summary = certify(
            model, dataset["validation"].with_transform(transform), n0=args.n0, n=args.n, alpha=args.alpha,
            batch_size=1000, output_dir=os.path.join(scratch, "certify"), skip=args.skip, radii=RADII,
        )
    trainable, total = trainable_parameters(model)
    return {
        "method": method, "trainable_parameters": trainable, "trainable_share": trainable / total,
        "training_seconds": training_seconds, "noisy_accuracy_before": before, "noisy_accuracy_after": after,
        "certified_accuracy": summary["certified_accuracy"], "acr": summary["acr"],
        "abstain_rate": summary["abstain_rate"], "certify_samples_per_second": summary["samples_per_second"],
    }


def markdown(rows: list[dict]) -> str:
    best = {r: max(row["certified_accuracy"][f"{r:g}"] for row in rows) for r in RADII}
    best_acr = max(row["acr"] for row in rows)
    lines = [
        "| method | trainable | train s | noisy acc | " + " | ".join(f"r={r:g}" for r in RADII) + " | ACR |",
        "|---|---|---|---|" + "---|" * len(RADII) + "---|",
    ]
    for row in rows:
        cells = []
        for r in RADII:
            value = row["certified_accuracy"][f"{r:g}"]
            cells.append(f"{100 * value:.1f}" + ("*" if value == best[r] else ""))
        acr = f"{row['acr']:.3f}" + ("*" if row["acr"] == best_acr else "")
        lines.append(
            f"| {row['method']} | {row['trainable_parameters']:,} ({100 * row['trainable_share']:.1f}%) | "
            f"{row['training_seconds']:.0f} | {100 * row['noisy_accuracy_after']:.1f} | " + " | ".join(cells) + f" | {acr} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="Base model folder or Hub id.")
    parser.add_argument("--dataset_name", default="embedded:mnist")
    parser.add_argument("--methods", default="full,linear,lora,dora,adapter,vpt")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="For the PEFT methods and the head.")
    parser.add_argument("--full_learning_rate", type=float, default=5e-4, help="For full fine-tuning.")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--skip", type=int, default=20, help="Certify every skip-th held-out image.")
    parser.add_argument("--output", default="benchmarks/results/methods.json")
    args = parser.parse_args()
    args.learning_rates = {"full": args.full_learning_rate}

    dataset = load_image_dataset(args.dataset_name)
    rows = [run_method(method, args, dataset) for method in args.methods.split(",")]
    settings = {k: v for k, v in vars(args).items() if k != "learning_rates"}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json({"settings": settings, "methods": rows}, args.output)
    print(markdown(rows))


if __name__ == "__main__":
    main()
