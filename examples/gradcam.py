"""Grad-CAM of the base model and the noise-adapted model, on clean and noisy images, as one PNG grid.

    python examples/gradcam.py --model_name_or_path runs/embedded/vit-lora-0.25 --dataset_name embedded:mnist \
        --num_images 8 --output runs/attack/gradcam.png

Takes ``--num_images`` examples of the split (every ``--skip``-th) and draws, per image, the image, each
model's Grad-CAM map for the true class, the image with N(0, sigma^2) noise (sigma: the adapted model's, or
``--sigma``) and each model's map of that. The base model is the one the adapted model was trained from
(``--base_model_name_or_path`` overrides it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.attribution import gradcam_grid
from smoothing_hf.data import ImageClassificationTransform, check_labels, load_image_dataset


@dataclass
class GradCamArguments:
    model_name_or_path: str = field(metadata={"help": "A saved smoothing model (folder or Hub id): the noise-adapted model."})
    output: str = field(metadata={"help": "The PNG file to write."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The base model (default: the one the adapted model's smoothing_config.json names)."}
    )
    sigma: float | None = field(default=None, metadata={"help": "Noise std of the noisy images, [0, 1] pixels (default: the model's)."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id or embedded:mnist / embedded:digits."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder to take images from (one subfolder per class)."})
    split: str = field(default="validation", metadata={"help": "Split to take images from: validation or train."})
    num_images: int = field(default=8, metadata={"help": "Images (rows of the grid)."})
    skip: int = field(default=1, metadata={"help": "Take every skip-th example."})
    seed: int = field(default=0, metadata={"help": "Seed of the noise draw."})


def main() -> None:
    (args,) = HfArgumentParser(GradCamArguments).parse_args_into_dataclasses()
    dataset = load_image_dataset(
        args.dataset_name, dataset_config_name=args.dataset_config_name,
        train_dir=args.validation_dir, validation_dir=args.validation_dir,
    )[args.split]
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
    gradcam_grid({"base": base, name: adapted}, examples["pixel_values"], examples["labels"], args.output, sigma=sigma, seed=args.seed)
    print(f"wrote {args.output}: Grad-CAM of the base and the adapted model on {len(chosen)} images, clean and at sigma = {sigma}")


if __name__ == "__main__":
    main()
