"""Certify held-out images of a dataset with a smoothed classifier (Cohen's CERTIFY), over processes.

    accelerate launch examples/certify.py --model_name_or_path runs/vit-lora-0.25 \
        --dataset_name embedded:mnist --n 10000 --output_dir runs/vit-lora-0.25/certify

Writes ``certify.tsv`` (idx, label, predict, radius, correct, time) and ``summary.json`` in ``--output_dir``
and prints certified accuracy at radii 0, 0.25, 0.5, 0.75 with the ACR and the abstain rate. Rerunning
with the same ``--output_dir`` resumes. ``--mode predict`` runs Cohen's PREDICT instead (``predict.tsv``).
Sample-efficient modes, with the same (1 - alpha) guarantee: ``--mode fixed_radius --radius 0.5 --max_n 100000``
decides "robust at radius 0.5?" per image, stopping as soon as that is settled; ``--mode radii --radii 0 0.25
0.5 0.75 --max_n 100000`` decides it at every one of those radii from one confidence sequence (the paper's
table, a 0/1 ``certified_<r>`` column per radius); ``--mode adaptive
--tolerance 0.02 --max_n 100000`` certifies radii, stopping once more samples would add less than the
tolerance. A ``samples`` column after Cohen's records the noisy forward passes each image took.
``--update_model_card true`` writes the results into the model folder's ``smoothing_config.json`` and card.
Several CPU processes: ``torchrun --nproc_per_node 2 -- examples/certify.py ...``; several GPUs:
``accelerate launch --multi_gpu --num_processes 8 examples/certify.py ...``. Job arrays:
``--num_shards K --shard_index i`` per job, then ``examples/merge_shards.py``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from accelerate import PartialState
from transformers import HfArgumentParser, set_seed

from smoothing_hf import (
    SMOOTHING_CONFIG_NAME,
    ImageClassificationTransform,
    SmoothedImageClassifier,
    certify,
    check_labels,
)
from smoothing_hf.certification import (
    ADAPTIVE_CONFIDENCES,
    CONFIDENCE_SEQUENCES,
    DEFAULT_ADAPTIVE_CONFIDENCE,
    DEFAULT_CONFIDENCE,
)
from smoothing_hf.data import EvaluationDatasetArguments
from smoothing_hf.hub import update_results
from smoothing_hf.reporting import DEFAULT_RADII, format_summary
from smoothing_hf.space import certify_size_for_base
from smoothing_hf.weights_files import optional_file


@dataclass
class CertifyArguments:
    model_name_or_path: str = field(
        metadata={"help": "A saved smoothing model (folder or Hub id), or a base model with --sigma."}
    )
    output_dir: str = field(metadata={"help": "Where certify.tsv and summary.json go."})
    sigma: float | None = field(
        default=None, metadata={"help": "Noise std in [0, 1] pixels (a saved smoothing model brings its own)."}
    )
    certify_size: str | None = field(
        default=None,
        metadata={"help": "A base model only (a saved smoothing model brings its own space): where noise is added and "
                  "radii are measured, 'native' (default: the dataset's own image size when it has one below the "
                  "model's input size), 'model' or HxW."},
    )
    n0: int = field(default=100, metadata={"help": "Selection samples per image."})
    n: int = field(default=100_000, metadata={"help": "Estimation samples per image."})
    alpha: float = field(default=0.001, metadata={"help": "Failure probability of each certificate."})
    batch_size: int = field(default=1000, metadata={"help": "Noisy samples per forward pass."})
    seed: int = field(default=0, metadata={"help": "Noise seed (example idx uses derive_seed(seed, idx))."})
    max_examples: int | None = field(default=None, metadata={"help": "Certify at most this many examples."})
    skip: int = field(default=1, metadata={"help": "Certify every skip-th example."})
    num_shards: int = field(default=1, metadata={"help": "Split the examples into this many shards (job arrays)."})
    shard_index: int = field(default=0, metadata={"help": "The shard this job certifies, in [0, num_shards)."})
    sample_parallel: bool = field(
        default=False, metadata={"help": "Split each image's noise samples over processes (few images, huge n)."}
    )
    mode: str = field(
        default="certify",
        metadata={"help": "certify (CERTIFY, radii), predict (PREDICT, abstentions), fixed_radius (is each image "
                  "robust at --radius?), radii (at each of --radii?) or adaptive (CERTIFY with adaptive sample "
                  "sizes, --tolerance)."},
    )
    radii: list[float] = field(
        default_factory=lambda: list(DEFAULT_RADII),
        metadata={"help": "l2 radii (pixels in [0, 1]) the summary reports; radii mode: the radii tested."},
    )
    radius: float | None = field(
        default=None, metadata={"help": "fixed_radius mode: the l2 radius to test (pixels in [0, 1])."}
    )
    max_n: int | None = field(
        default=None, metadata={"help": "fixed_radius / radii / adaptive modes: most estimation samples per image."}
    )
    tolerance: float | None = field(
        default=None,
        metadata={"help": "adaptive mode: stop when the next round would raise the radius by less than this."},
    )
    growth: float = field(
        default=4.0, metadata={"help": "Sequential modes: factor between round sizes (bonferroni) or look-ahead."}
    )
    precision: str = field(
        default="fp32",
        metadata={"help": "Forward-pass precision: fp32, bf16 or fp16 (autocast; noise stays float32). The "
                  "certificates are for the classifier evaluated so."},
    )
    channels_last: bool = field(default=False, metadata={"help": "Channels-last memory format (convolutional bases)."})
    compile: bool = field(
        default=False, metadata={"help": "torch.compile the forward pass (batches padded to one size)."}
    )
    confidence: str | None = field(
        default=None,
        metadata={"help": f"Sequential modes: the confidence sequence, one of {list(CONFIDENCE_SEQUENCES)} "
                  f"(adaptive: one of {list(ADAPTIVE_CONFIDENCES)}, two_stage the tightest; "
                  f"default {DEFAULT_ADAPTIVE_CONFIDENCE}; others: default {DEFAULT_CONFIDENCE})."},
    )
    futility: float | None = field(
        default=None,
        metadata={"help": "fixed_radius / radii modes: give up on a radius once certifying it by max_n is out of "
                  "reach at this level, in (0, 1), e.g. 0.05 (never certifies; the alpha guarantee is kept)."},
    )
    bound_seed: int | None = field(
        default=None,
        metadata={"help": "certify mode, and adaptive with two_stage: the randomized Clopper-Pearson bound (never "
                  "lower than the classical one), its uniforms drawn from this seed; recorded in settings.json."},
    )
    update_model_card: bool = field(
        default=False,
        metadata={"help": "Write the results into the smoothing_config.json and README.md of --model_name_or_path "
                  "(a saved folder)."},
    )

    def __post_init__(self) -> None:  # fail before certifying, not after
        is_folder = os.path.isfile(os.path.join(self.model_name_or_path, SMOOTHING_CONFIG_NAME))
        if self.update_model_card and (self.mode != "certify" or self.num_shards > 1 or not is_folder):
            raise ValueError(
                "--update_model_card needs --mode certify, a whole run (--num_shards 1; merge shards, then call "
                "smoothing_hf.hub.update_results) and a local smoothing folder as --model_name_or_path"
            )


def main() -> None:
    parser = HfArgumentParser((CertifyArguments, EvaluationDatasetArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        args, data_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        args, data_args = parser.parse_args_into_dataclasses()
    set_seed(args.seed)

    dataset = data_args.load_split()
    space = {}
    if optional_file(args.model_name_or_path, SMOOTHING_CONFIG_NAME, {}) is None:  # a base model smoothed here
        space["certify_size"], reason = certify_size_for_base(args.certify_size or "native", dataset,
                                                              args.model_name_or_path)
        print(f"certification space: {reason}", flush=True)
    elif args.certify_size is not None:
        raise ValueError("--certify_size is for a base model: a saved smoothing model certifies in the space it was "
                         "trained in; drop --certify_size")
    model = SmoothedImageClassifier.from_pretrained(args.model_name_or_path, sigma=args.sigma, **space)
    check_labels(dataset, model.num_labels)
    summary = certify(
        model, dataset.with_transform(ImageClassificationTransform.for_model(model)),
        n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
        output_dir=args.output_dir, max_examples=args.max_examples, skip=args.skip, num_shards=args.num_shards,
        shard_index=args.shard_index, sample_parallel=args.sample_parallel, mode=args.mode, radius=args.radius,
        max_n=args.max_n, tolerance=args.tolerance, growth=args.growth, confidence=args.confidence,
        futility=args.futility, bound_seed=args.bound_seed, radii=args.radii, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile,
        dataset_name=data_args.source, split=data_args.split,
    )
    if PartialState().is_main_process:
        samples = summary["samples_per_image"]
        budget = f"n = {args.n}" if args.max_n is None else f"max_n = {args.max_n}"
        print(f"sigma = {model.sigma}, n0 = {args.n0}, {budget}, alpha = {args.alpha}, "
              f"{summary['num_examples']} examples, samples per image: mean {samples['mean']:.0f}, "
              f"median {samples['median']:.0f}")
        if args.mode in ("certify", "adaptive"):
            print(format_summary(summary))
        elif args.mode == "radii":
            print(", ".join(f"r = {r}: {a:.4f}" for r, a in summary["certified_accuracy"].items()))
        elif args.mode == "fixed_radius":
            print(f"certified accuracy at r = {args.radius:g}: {summary['certified_accuracy'][f'{args.radius:g}']:.4f}")
        else:
            print(f"accuracy {summary['accuracy']:.4f}, abstain {summary['abstain_rate']:.4f}")
        if args.update_model_card:
            update_results(args.model_name_or_path, summary, dataset_name=data_args.source, split=data_args.split)


if __name__ == "__main__":
    main()
