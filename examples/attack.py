"""Empirical robustness beside the certificate: SmoothAdv at l2 radii, then PREDICT on the attacked images.

    python examples/attack.py --model_name_or_path runs/embedded/vit-lora-0.25 --dataset_name embedded:mnist \
        --skip 20 --certify_dir runs/embedded/vit-lora-0.25/certify --output_dir runs/attack/vit-lora-0.25

Attacks every ``--skip``-th example of the split (at most ``--max_examples``) at each of ``--radii`` (l2,
pixels in [0, 1]) with SmoothAdv (``--steps`` PGD steps, ``--num_noise`` noise draws per step), classifies
the attacked images with PREDICT (``--n``, ``--alpha``), and writes ``attack.tsv``, ``summary.json`` and
``robustness.png`` (empirical and certified accuracy against radius) into ``--output_dir``. The certified
accuracy of the same images comes from ``--certify_dir`` (an ``examples/certify.py`` output whose examples
include these), or else from a certification run here into ``<output_dir>/certify`` (``--n0``,
``--certify_n``). Prints the table: empirical robust accuracy, certified accuracy and the gap per radius.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.attacks import ATTACK_RADII, attack_dataset, robustness_markdown
from smoothing_hf.data import ImageClassificationTransform, check_labels, load_image_dataset
from smoothing_hf.pipeline import certify
from smoothing_hf.reporting import CERTIFY_TSV


@dataclass
class AttackArguments:
    model_name_or_path: str = field(metadata={"help": "A saved smoothing model (folder or Hub id), or a base model with --sigma."})
    output_dir: str = field(metadata={"help": "Where attack.tsv, summary.json and robustness.png go."})
    sigma: float | None = field(default=None, metadata={"help": "Noise std in [0, 1] pixels (a saved smoothing model brings its own)."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id or embedded:mnist / embedded:digits."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder to attack (one subfolder per class)."})
    split: str = field(default="validation", metadata={"help": "Split to attack: validation or train."})
    radii: list[float] = field(
        default_factory=lambda: list(ATTACK_RADII), metadata={"help": "Attack radii epsilon (l2, pixels in [0, 1]); 0 is no attack."}
    )
    steps: int = field(default=20, metadata={"help": "PGD steps of SmoothAdv."})
    num_noise: int = field(default=8, metadata={"help": "Noise draws per image per PGD step (m)."})
    step_size: float | None = field(default=None, metadata={"help": "l2 length of a PGD step (default 2 * epsilon / steps)."})
    n: int = field(default=1000, metadata={"help": "PREDICT's noise samples per attacked image."})
    alpha: float = field(default=0.001, metadata={"help": "PREDICT's (and the certification's) failure probability."})
    batch_size: int = field(default=256, metadata={"help": "Noisy samples per forward pass."})
    seed: int = field(default=0, metadata={"help": "Noise seed (example idx uses derive_seed(seed, idx))."})
    max_examples: int | None = field(default=None, metadata={"help": "Attack at most this many examples."})
    skip: int = field(default=1, metadata={"help": "Attack every skip-th example."})
    certify_dir: str | None = field(
        default=None, metadata={"help": "A certification output (certify.tsv) that covers these examples; else they are certified here."}
    )
    n0: int = field(default=100, metadata={"help": "Selection samples per image, when certifying here."})
    certify_n: int = field(default=10_000, metadata={"help": "Estimation samples per image, when certifying here."})


def main() -> None:
    (args,) = HfArgumentParser(AttackArguments).parse_args_into_dataclasses()
    dataset = load_image_dataset(  # a folder is read as both splits: its "validation" split is all of it
        args.dataset_name, dataset_config_name=args.dataset_config_name,
        train_dir=args.validation_dir, validation_dir=args.validation_dir,
    )[args.split]
    model = SmoothedImageClassifier.from_pretrained(args.model_name_or_path, sigma=args.sigma)
    check_labels(dataset, model.num_labels)
    dataset = dataset.with_transform(ImageClassificationTransform.for_model(model))
    certify_dir = args.certify_dir
    if certify_dir is None:
        certify_dir = os.path.join(args.output_dir, "certify")
        certify(model, dataset, n0=args.n0, n=args.certify_n, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
                output_dir=certify_dir, max_examples=args.max_examples, skip=args.skip)
    summary = attack_dataset(
        model, dataset, output_dir=args.output_dir, radii=args.radii, num_noise=args.num_noise, steps=args.steps,
        step_size=args.step_size, n=args.n, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
        max_examples=args.max_examples, skip=args.skip, certified=os.path.join(certify_dir, CERTIFY_TSV),
    )
    print(f"sigma = {model.sigma}, SmoothAdv: {args.steps} steps, m = {args.num_noise}; PREDICT: n = {args.n}, "
          f"alpha = {args.alpha}; {summary['num_examples']} examples")
    print(robustness_markdown(summary))
    violations = {r: count for r, count in summary["certificate_violations"].items() if count}
    if violations:
        print(f"certificate violations (certified beyond epsilon, attacked into another class) per radius: {violations}")


if __name__ == "__main__":
    main()
