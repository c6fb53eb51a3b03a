"""Grad-CAM of the base model and the noise-adapted model, on clean and noisy images, as one PNG grid.

    python examples/gradcam.py --model_name_or_path runs/embedded/vit-lora-0.25 --dataset_name embedded:mnist \
        --num_images 8 --output runs/attack/gradcam.png

Takes ``--num_images`` examples of the split (every ``--skip``-th) and draws, per image, the image, each
model's Grad-CAM map for the true class, the image with N(0, sigma^2) noise (sigma: the adapted model's, or
``--sigma``) and each model's map of that. The base model is the one the adapted model was trained from
(``--base_model_name_or_path`` overrides it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed

from smoothing_hf import ImageClassificationTransform, SmoothedImageClassifier, check_labels
from smoothing_hf.analysis.attribution import gradcam_grid
from smoothing_hf.checks import check_positive_int, check_seed, check_sigma
from smoothing_hf.data import EvaluationDatasetArguments


@dataclass
class GradCamArguments:
    model_name_or_path: str = field(
        metadata={"help": "A saved smoothing model (folder or Hub id): the noise-adapted model."}
    )
    output: str = field(metadata={"help": "The PNG file to write."})
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The base model (default: the one the adapted model's smoothing_config.json names)."},
    )
    sigma: float | None = field(
        default=None, metadata={"help": "Noise std of the noisy images, [0, 1] pixels (default: the model's)."}
    )
    num_images: int = field(default=8, metadata={"help": "Images (rows of the grid)."})
    skip: int = field(default=1, metadata={"help": "Take every skip-th example."})
    seed: int = field(default=0, metadata={"help": "Seed of the noise draw."})

    def __post_init__(self) -> None:  # fail before the data and the models are loaded
        if self.sigma is not None:
            check_sigma(self.sigma)
        check_positive_int(self.num_images, "num_images")
        check_positive_int(self.skip, "skip")
        check_seed(self.seed)


def main() -> None:
    parser = HfArgumentParser((GradCamArguments, EvaluationDatasetArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        args, data_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        args, data_args = parser.parse_args_into_dataclasses()
    set_seed(args.seed)

    dataset = data_args.load_split()
    adapted = SmoothedImageClassifier.from_pretrained(args.model_name_or_path)
    base = SmoothedImageClassifier.from_pretrained(
        args.base_model_name_or_path or adapted.config.base_model_name_or_path, sigma=adapted.sigma,
        image_mean=adapted.config.image_mean, image_std=adapted.config.image_std,
    )
    check_labels(dataset, adapted.num_labels)
    chosen = range(0, len(dataset), args.skip)[: args.num_images]
    examples = dataset.select(chosen).with_transform(ImageClassificationTransform.for_model(adapted))[:]
    sigma = args.sigma if args.sigma is not None else adapted.sigma
    name = f"adapted ({adapted.config.peft_method})" if adapted.config.peft_method else "adapted"
    gradcam_grid(
        {"base": base, name: adapted}, examples["pixel_values"], examples["labels"], args.output, sigma=sigma,
        seed=args.seed,
    )
    print(f"wrote {args.output}: Grad-CAM of the base and the adapted model on {len(chosen)} images, "
          f"clean and at sigma = {sigma}")


if __name__ == "__main__":
    main()
