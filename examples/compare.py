"""Every method on the same base model, sigma and data: train, certify, one table (issue 8, part 3).

    accelerate launch examples/compare.py --base runs/embedded/base-vit --dataset_name embedded:mnist --sigma 0.25 \
        --diffusion_model runs/baselines/ddpm-mnist --seeds 0,1,2 --output_dir runs/compare/vit-0.25

Trains each of ``--methods`` (default: the unadapted base, full fine-tuning, linear, LoRA, DoRA, adapter, VPT,
LoRA and full fine-tuning with each training objective (``consistency`` = LoRA with consistency regularization,
``full-consistency``, ``lora-smoothadv``, ``full-smoothadv``, ``lora-macer``, ``full-macer``; options and m from
``--objective_options`` and ``--noise_samples``), DnCNN with the MSE and the stability objective, given
``--surrogate_model`` DnCNN with the stability objective through that surrogate, and given
``--diffusion_model`` diffusion denoised smoothing) with the same epochs, batch size and noise,
``--seeded_methods`` once per seed; certifies the same validation images with the same noise seed; adds
``--pretrained label=folder`` runs trained elsewhere (e.g. ``blackbox=runs/blackbox/coordinator-0.25`` from
``examples/train_blackbox.py``). Writes in ``--output_dir``: one folder per run (the saved model,
``train_results.json``, ``certify/``; a rerun reuses them and resumes), ``comparison.md``, ``comparison.tex``,
``comparison.json`` and ``certified_accuracy.png``.
The arguments may also come as one JSON file: ``python examples/compare.py args.json``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from accelerate import PartialState
from transformers import HfArgumentParser

from smoothing_hf import load_image_dataset
from smoothing_hf.comparison import COMPARISON_METHODS, ComparisonSettings, run_comparison


@dataclass
class CompareArguments:
    base: str = field(
        metadata={"help": "The base AutoModelForImageClassification every method starts from: Hub id or folder."}
    )
    output_dir: str = field(metadata={"help": "Where the runs and the comparison go."})
    dataset_name: str = field(
        default="embedded:mnist", metadata={"help": "Hub dataset id or embedded:mnist / embedded:digits."}
    )
    methods: str = field(
        default=",".join(name for name, row in COMPARISON_METHODS.items() if row.second_model is None),
        metadata={"help": f"Comma-separated methods: {', '.join(COMPARISON_METHODS)} (or any METHODS name)."},
    )
    seeds: str = field(default="0", metadata={"help": "Comma-separated training seeds of the seeded methods."})
    seeded_methods: str = field(default="lora,full", metadata={"help": "Methods trained once per seed."})
    pretrained: str = field(
        default="", metadata={"help": "Comma-separated label=folder runs trained elsewhere, to certify."}
    )


def main() -> None:
    parser = HfArgumentParser((CompareArguments, ComparisonSettings))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        args, settings = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        args, settings = parser.parse_args_into_dataclasses()
    methods = [m for m in args.methods.split(",") if m]
    for option, method in ((settings.surrogate_model, "dncnn-surrogate"), (settings.diffusion_model, "diffusion")):
        if option and method not in methods:
            methods.append(method)
    pretrained = [item.split("=", 1) for item in args.pretrained.split(",") if item]
    if any(len(pair) != 2 or not all(pair) for pair in pretrained):
        raise ValueError(f"`pretrained` must be comma-separated label=folder pairs, got {args.pretrained!r}")
    if not all(s.strip().isdecimal() for s in args.seeds.split(",")):
        raise ValueError(f"`seeds` must be comma-separated non-negative ints such as 0,1,2, got {args.seeds!r}")
    markdown = run_comparison(
        args.base, load_image_dataset(args.dataset_name), settings, args.output_dir, methods=methods,
        seeds=[int(s) for s in args.seeds.split(",")], seeded_methods=args.seeded_methods.split(","),
        pretrained=dict(pretrained),
    )
    if PartialState().is_main_process:
        print(markdown)
        print(f"\nwritten: {os.path.join(args.output_dir, 'comparison.md')} (and .tex, .json, certified_accuracy.png)")


if __name__ == "__main__":
    main()
