"""Train the stand-in base classifier on clean images: what a Hub checkpoint is when there is no network.

Builds a small ViT (or ResNet) from a config, trains it on clean (noise-free) images with the plain
``transformers.Trainer``, and saves it with its image processor as an ordinary model folder, which
``SmoothedImageClassifier.from_pretrained`` then loads exactly like ``google/vit-base-patch16-224``.

    python examples/train_base.py --dataset_name embedded:mnist --model_type vit --output_dir runs/base-vit

``--seed`` (``TrainingArguments``) is set before the model is built, so two runs with the same seed save the
same weights. The Trainer's metrics and state go to ``train_results.json``, ``eval_results.json``,
``all_results.json`` and ``trainer_state.json`` beside the model. ``--max_train_samples`` /
``--max_eval_samples`` truncate the splits (quick tests); the arguments may also come as one JSON file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tempfile

import torch
from transformers import (
    HfArgumentParser,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    default_data_collator,
    set_seed,
)

from smoothing_hf import ImageClassificationTransform, SmoothedImageClassifier, class_names, load_image_dataset
from smoothing_hf.checks import (
    check_choice,
    check_int,
    check_number,
    check_optional_positive_int,
    check_positive_int,
)
from smoothing_hf.trainer import noisy_accuracy_metric

ARCHITECTURES = {
    # ~0.5M parameters, 7-pixel patches: 16 tokens for 28x28 digits.
    "vit": lambda channels, size, labels: ViTForImageClassification(
        ViTConfig(image_size=size, patch_size=7, num_channels=channels, hidden_size=128, num_hidden_layers=4,
                  num_attention_heads=4, intermediate_size=256, **labels)
    ),
    # ~0.3M parameters.
    "resnet": lambda channels, size, labels: ResNetForImageClassification(
        ResNetConfig(num_channels=channels, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
                     layer_type="basic", downsample_in_first_stage=False, **labels)
    ),
}


@dataclass
class BaseArguments:
    dataset_name: str = field(
        default="embedded:mnist", metadata={"help": "Hub dataset id or embedded:mnist / embedded:digits."}
    )
    model_type: str = field(default="vit", metadata={"help": f"Architecture: {sorted(ARCHITECTURES)}."})
    image_size: int = field(default=28, metadata={"help": "Input height and width."})
    num_channels: int = field(default=1, metadata={"help": "Input channels (1 grayscale, 3 RGB)."})
    image_mean: float = field(default=0.1307, metadata={"help": "Normalization mean of the processor (all channels)."})
    image_std: float = field(default=0.3081, metadata={"help": "Normalization std of the processor (all channels)."})
    max_shift: int = field(default=1, metadata={"help": "Random translation augmentation, in pixels (0: none)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on this many examples only (a random choice at --seed): for tests."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first this many validation examples only: for tests."}
    )

    def __post_init__(self) -> None:
        check_choice(self.model_type, "model_type", ARCHITECTURES)
        check_positive_int(self.image_size, "image_size")
        check_positive_int(self.num_channels, "num_channels")
        check_int(self.max_shift, "max_shift", minimum=0)
        check_number(self.image_mean, "image_mean")
        check_number(self.image_std, "image_std", minimum=0, strict_minimum=True)
        check_optional_positive_int(self.max_train_samples, "max_train_samples")
        check_optional_positive_int(self.max_eval_samples, "max_eval_samples")


def random_shift_collator(max_shift: int) -> callable:
    """Stack examples and shift each image by up to ``max_shift`` pixels (zero fill): the usual translation
    augmentation, which a small ViT needs on a few thousand digits (no torchvision here)."""

    def collate(examples: list[dict]) -> dict:
        batch = default_data_collator(examples)
        pixels = torch.nn.functional.pad(batch["pixel_values"], [max_shift] * 4)
        height, width = pixels.shape[-2] - 2 * max_shift, pixels.shape[-1] - 2 * max_shift
        offsets = torch.randint(0, 2 * max_shift + 1, (len(pixels), 2))
        batch["pixel_values"] = torch.stack(
            [image[:, top : top + height, left : left + width] for image, (top, left) in zip(pixels, offsets.tolist())]
        )
        return batch

    return collate


def main() -> None:
    parser = HfArgumentParser((BaseArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        base_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        base_args, training_args = parser.parse_args_into_dataclasses()
    set_seed(training_args.seed)  # before the model is built: its initial weights are random

    dataset = load_image_dataset(base_args.dataset_name)
    if base_args.max_train_samples is not None:  # as transformers' run_image_classification.py does
        size = min(base_args.max_train_samples, len(dataset["train"]))
        dataset["train"] = dataset["train"].shuffle(seed=training_args.seed).select(range(size))
    if base_args.max_eval_samples is not None:
        size = min(base_args.max_eval_samples, len(dataset["validation"]))
        dataset["validation"] = dataset["validation"].select(range(size))
    names = class_names(dataset)
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
              "label2id": {name: i for i, name in enumerate(names)}}
    model = ARCHITECTURES[base_args.model_type](base_args.num_channels, base_args.image_size, labels)
    processor = ViTImageProcessorPil(
        size={"height": base_args.image_size, "width": base_args.image_size},
        image_mean=[base_args.image_mean] * base_args.num_channels,
        image_std=[base_args.image_std] * base_args.num_channels,
    )
    # Clean training through the smoothing wrapper only for its [0, 1]-pixels-in, normalize-inside forward.
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        wrapper = SmoothedImageClassifier.from_pretrained(folder, sigma=1.0, method="full")
    transform = ImageClassificationTransform.for_model(wrapper)
    training_args.remove_unused_columns = False
    trainer = Trainer(
        model=wrapper,
        args=training_args,
        train_dataset=dataset["train"].with_transform(transform),
        eval_dataset=dataset["validation"].with_transform(transform),
        data_collator=random_shift_collator(base_args.max_shift) if base_args.max_shift else default_data_collator,
        compute_metrics=noisy_accuracy_metric,
    )
    train_output = trainer.train()
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        wrapper.model.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
    trainer.log_metrics("train", train_output.metrics)  # log_metrics, save_metrics, save_state: main process only
    trainer.save_metrics("train", train_output.metrics)
    trainer.save_state()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    print(f"clean validation accuracy of the base: {metrics['eval_accuracy']:.4f}")


if __name__ == "__main__":
    main()
