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
Every argument is checked before anything runs: a bad one writes nothing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed

from smoothing_hf import ImageClassificationTransform, SmoothedImageClassifier, attack_dataset, certify, check_labels
from smoothing_hf.analysis.attacks import ATTACK_RADII
from smoothing_hf.analysis.robustness import robustness_markdown
from smoothing_hf.checks import (
    check_alpha,
    check_number,
    check_optional_positive_int,
    check_positive_int,
    check_seed,
    check_sigma,
)
from smoothing_hf.data import EvaluationDatasetArguments
from smoothing_hf.reporting import CERTIFY_TSV


@dataclass
class AttackArguments:
    model_name_or_path: str = field(
        metadata={"help": "A saved smoothing model (folder or Hub id), or a base model with --sigma."}
    )
    output_dir: str = field(metadata={"help": "Where attack.tsv, summary.json and robustness.png go."})
    sigma: float | None = field(
        default=None, metadata={"help": "Noise std in [0, 1] pixels (a saved smoothing model brings its own)."}
    )
    radii: list[float] = field(
        default_factory=lambda: list(ATTACK_RADII),
        metadata={"help": "Attack radii epsilon (l2, pixels in [0, 1]); 0 is no attack."},
    )
    steps: int = field(default=20, metadata={"help": "PGD steps of SmoothAdv."})
    num_noise: int = field(default=8, metadata={"help": "Noise draws per image per PGD step (m)."})
    step_size: float | None = field(
        default=None, metadata={"help": "l2 length of a PGD step (default 2 * epsilon / steps)."}
    )
    n: int = field(default=1000, metadata={"help": "PREDICT's noise samples per attacked image."})
    alpha: float = field(default=0.001, metadata={"help": "PREDICT's (and the certification's) failure probability."})
    batch_size: int = field(default=256, metadata={"help": "Noisy samples per forward pass."})
    precision: str = field(
        default="fp32", metadata={"help": "PREDICT's (and the certification's) forward precision: fp32, bf16, fp16."}
    )
    seed: int = field(default=0, metadata={"help": "Noise seed (example idx uses derive_seed(seed, idx))."})
    max_examples: int | None = field(default=None, metadata={"help": "Attack at most this many examples."})
    skip: int = field(default=1, metadata={"help": "Attack every skip-th example."})
    certify_dir: str | None = field(
        default=None,
        metadata={"help": "A certification output (certify.tsv) covering these examples; else certified here."},
    )
    n0: int = field(default=100, metadata={"help": "Selection samples per image, when certifying here."})
    certify_n: int = field(default=10_000, metadata={"help": "Estimation samples per image, when certifying here."})

    def __post_init__(self) -> None:  # fail before certifying and attacking, not after
        if self.sigma is not None:
            check_sigma(self.sigma)
        if not self.radii:
            raise ValueError("`radii` must be one or more l2 radii >= 0 (pixels in [0, 1]), got none")
        for radius in self.radii:
            check_number(radius, "radii", minimum=0, unit="l2, pixels in [0, 1]")
        if self.step_size is not None:
            check_number(self.step_size, "step_size", minimum=0, strict_minimum=True, unit="l2, pixels in [0, 1]")
        for name in ("steps", "num_noise", "n", "batch_size", "skip", "n0", "certify_n"):
            check_positive_int(getattr(self, name), name)
        check_optional_positive_int(self.max_examples, "max_examples")
        check_alpha(self.alpha)
        check_seed(self.seed)
        if self.certify_dir is not None and not os.path.isfile(os.path.join(self.certify_dir, CERTIFY_TSV)):
            raise ValueError(
                f"`certify_dir` must be an examples/certify.py output folder (with a {CERTIFY_TSV}), "
                f"got {self.certify_dir!r}"
            )


def main() -> None:
    parser = HfArgumentParser((AttackArguments, EvaluationDatasetArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        args, data_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        args, data_args = parser.parse_args_into_dataclasses()
    set_seed(args.seed)

    dataset = data_args.load_split()
    model = SmoothedImageClassifier.from_pretrained(args.model_name_or_path, sigma=args.sigma)
    check_labels(dataset, model.num_labels)
    dataset = dataset.with_transform(ImageClassificationTransform.for_model(model))
    certify_dir = args.certify_dir
    if certify_dir is None:
        certify_dir = os.path.join(args.output_dir, "certify")
        certify(model, dataset, n0=args.n0, n=args.certify_n, alpha=args.alpha, batch_size=args.batch_size,
                seed=args.seed, output_dir=certify_dir, max_examples=args.max_examples, skip=args.skip,
                precision=args.precision)
    summary = attack_dataset(
        model, dataset, output_dir=args.output_dir, radii=args.radii, num_noise=args.num_noise, steps=args.steps,
        step_size=args.step_size, n=args.n, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
        max_examples=args.max_examples, skip=args.skip, certified=os.path.join(certify_dir, CERTIFY_TSV),
        precision=args.precision,
    )
    print(f"sigma = {model.sigma}, SmoothAdv: {args.steps} steps, m = {args.num_noise}; PREDICT: n = {args.n}, "
          f"alpha = {args.alpha}; {summary['num_examples']} examples")
    print(robustness_markdown(summary))
    violations = {r: count for r, count in summary["certificate_violations"].items() if count}
    if violations:
        print(f"certificate violations (certified beyond epsilon, attacked into another class) per radius: "
              f"{violations}")


if __name__ == "__main__":
    main()
