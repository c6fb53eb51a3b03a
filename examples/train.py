"""PEFTSmoothing, white-box: adapt a pretrained image classifier to Gaussian noise with a PEFT method.

    accelerate launch examples/train.py --model_name_or_path google/vit-base-patch16-224 \
        --dataset_name cifar10 --new_head --method lora --sigma 0.25 --output_dir runs/vit-lora-0.25
    accelerate launch examples/train.py ... --objective smoothadv --objective_options '{"epsilon": 0.5, "steps": 2}' \
        --num_noise_samples 2

Offline, on the embedded data (``embedded:mnist``, ``embedded:digits``) and a local base folder, see the
README. Saves the adapter, the image processor and ``smoothing_config.json`` in ``--output_dir``, and with
the Trainer's ``save_metrics`` / ``save_state``: ``train_results.json`` (the Trainer's training metrics, the
accuracy under noise before and after training, the trainable share), ``eval_results.json``, ``all_results.json``
and ``trainer_state.json``. The arguments may also come as one JSON file: ``python examples/train.py args.json``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments, set_seed

from smoothing_hf import (
    METHODS,
    DatasetArguments,
    ImageClassificationTransform,
    SmoothedImageClassifier,
    SmoothingTrainer,
    check_labels,
    class_names,
    trainable_parameters,
)
from smoothing_hf.checks import parse_json_object
from smoothing_hf.objectives import OBJECTIVES, get_objective
from smoothing_hf.space import certify_size_for_base


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Base AutoModelForImageClassification: Hub id or folder."})
    method: str = field(default="lora", metadata={"help": f"Fine-tuning method: {', '.join(METHODS)}."})
    method_options: str = field(default="{}", metadata={"help": 'JSON options of the method, e.g. \'{"r": 16}\'.'})
    sigma: float = field(default=0.25, metadata={"help": "Noise std in [0, 1] pixel units."})
    new_head: bool = field(
        default=False,
        metadata={"help": "Joint adaptation: a new head for the dataset's labels, trained with the adapter."},
    )
    model_revision: str | None = field(default=None, metadata={"help": "Revision of the base model on the Hub."})
    certify_size: str = field(
        default="native",
        metadata={"help": "Where noise is added and radii are measured: 'native' (the dataset's own image size when "
                  "all its images share one below the model's input size; the model upsamples inside), 'model' (the "
                  "model's input size) or HxW such as 224x224 (images resized and center-cropped to it)."},
    )


@dataclass
class SmoothingArguments:
    objective: str = field(
        default="gaussian", metadata={"help": f"Training objective: {', '.join(OBJECTIVES)}."}
    )
    objective_options: str = field(
        default="{}",
        metadata={"help": 'JSON options of the objective, e.g. \'{"epsilon": 0.5, "steps": 2}\' for smoothadv.'},
    )
    num_noise_samples: int = field(
        default=1, metadata={"help": "Noisy copies of each image per batch (m); consistency and macer need m >= 2."}
    )
    consistency_weight: float | None = field(
        default=None,
        metadata={"help": "Older shorthand for --objective consistency --objective_options "
                  "'{\"lbd\": weight, \"eta\": 0}'; not with --objective."},
    )


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DatasetArguments, SmoothingArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        arguments = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        arguments = parser.parse_args_into_dataclasses()
    model_args, data_args, smoothing_args, training_args = arguments
    method_options = parse_json_object(model_args.method_options, "method_options")  # before the data is loaded
    objective_options = parse_json_object(smoothing_args.objective_options, "objective_options")
    get_objective(smoothing_args.objective).parse_options(objective_options)  # checked before the data is loaded
    set_seed(training_args.seed)  # before the model is built: a new head and the adapter start from random weights

    dataset = data_args.load()
    certify_size, reason = certify_size_for_base(
        model_args.certify_size, dataset["train"], model_args.model_name_or_path, revision=model_args.model_revision
    )
    print(f"certification space: {reason}", flush=True)
    model = SmoothedImageClassifier.from_pretrained(
        model_args.model_name_or_path,
        sigma=model_args.sigma,
        method=model_args.method,
        method_options=method_options,
        new_labels=class_names(dataset) if model_args.new_head else None,
        revision=model_args.model_revision,
        certify_size=certify_size,
    )
    check_labels(dataset, model.num_labels)
    transform = ImageClassificationTransform.for_model(model)
    trainer = SmoothingTrainer(
        model,
        training_args,
        num_noise_samples=smoothing_args.num_noise_samples,
        objective=smoothing_args.objective,
        objective_options=objective_options or None,
        consistency_weight=smoothing_args.consistency_weight,
        train_dataset=dataset["train"].with_transform(transform),
        eval_dataset=dataset["validation"].with_transform(transform),
        processing_class=model.image_processor,
    )
    before = trainer.evaluate(metric_key_prefix="before")
    train_output = trainer.train()
    after = trainer.evaluate()
    trainable, total = trainable_parameters(model)
    metrics = {
        **train_output.metrics, "method": model_args.method, "sigma": model_args.sigma,
        "objective": trainer.training_objective.name,
        "num_noise_samples": trainer.num_noise_samples,  # the objective's options: in smoothing_config.json
        "noisy_accuracy_before": before["before_accuracy"], "noisy_accuracy_after": after["eval_accuracy"],
        "trainable_parameters": trainable, "total_parameters": total, "trainable_share": trainable / total,
        "training_seconds": train_output.metrics["train_runtime"],
    }
    model.record_training(
        dataset_name=data_args.source, steps=train_output.global_step,
        epochs=round(train_output.metrics["epoch"], 2), noisy_accuracy=after["eval_accuracy"],
    )  # the trainer recorded the objective, its options and num_noise_samples
    if trainer.is_world_process_zero():
        model.save_pretrained(training_args.output_dir)
    trainer.log_metrics("train", metrics)  # log_metrics, save_metrics and save_state act on the main process only
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.log_metrics("eval", {**before, **after})
    trainer.save_metrics("eval", {**before, **after})


if __name__ == "__main__":
    main()
