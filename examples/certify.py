"""Certify held-out images of a dataset with a smoothed classifier (Cohen's CERTIFY), over processes.

    accelerate launch examples/certify.py --model_name_or_path runs/vit-lora-0.25 \
        --dataset_name embedded:mnist --n 10000 --output_dir runs/vit-lora-0.25/certify

Writes ``certify.tsv`` (idx, label, predict, radius, correct, time) and ``summary.json`` in ``--output_dir``
and prints certified accuracy at radii 0, 0.25, 0.5, 0.75 with the ACR and the abstain rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.data import ImageClassificationTransform, check_labels, load_image_dataset
from smoothing_hf.pipeline import certify
from smoothing_hf.reporting import format_summary


@dataclass
class CertifyArguments:
    model_name_or_path: str = field(metadata={"help": "A saved smoothing model (folder or Hub id), or a base model with --sigma."})
    output_dir: str = field(metadata={"help": "Where certify.tsv and summary.json go."})
    sigma: float | None = field(default=None, metadata={"help": "Noise std in [0, 1] pixels (a saved smoothing model brings its own)."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id or embedded:mnist / embedded:digits."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder to certify (one subfolder per class)."})
    split: str = field(default="validation", metadata={"help": "Split to certify."})
    n0: int = field(default=100, metadata={"help": "Selection samples per image."})
    n: int = field(default=100_000, metadata={"help": "Estimation samples per image."})
    alpha: float = field(default=0.001, metadata={"help": "Failure probability of each certificate."})
    batch_size: int = field(default=1000, metadata={"help": "Noisy samples per forward pass."})
    seed: int = field(default=0, metadata={"help": "Noise seed (example idx uses derive_seed(seed, idx))."})
    max_examples: int | None = field(default=None, metadata={"help": "Certify at most this many examples."})
    skip: int = field(default=1, metadata={"help": "Certify every skip-th example."})


def main() -> None:
    (args,) = HfArgumentParser(CertifyArguments).parse_args_into_dataclasses()
    dataset = load_image_dataset(
        args.dataset_name, dataset_config_name=args.dataset_config_name,
        train_dir=args.validation_dir, validation_dir=args.validation_dir,
    )[args.split]
    model = SmoothedImageClassifier.from_pretrained(args.model_name_or_path, sigma=args.sigma)
    check_labels(dataset, model.num_labels)
    summary = certify(
        model, dataset.with_transform(ImageClassificationTransform.for_model(model)),
        n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
        output_dir=args.output_dir, max_examples=args.max_examples, skip=args.skip,
    )
    print(f"sigma = {model.sigma}, n0 = {args.n0}, n = {args.n}, alpha = {args.alpha}, {summary['num_examples']} examples")
    print(format_summary(summary))


if __name__ == "__main__":
    main()
