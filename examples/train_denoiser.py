"""Denoised smoothing: a denoiser in front of a frozen base classifier (the baselines PEFTSmoothing is compared with).

DnCNN (Salman et al., 2020), trained with the MSE to the clean image or the stability objective (through the
frozen base, or through a surrogate model when the target may only be queried):

    accelerate launch examples/train_denoiser.py --model_name_or_path runs/embedded/base-vit \
        --dataset_name embedded:mnist --denoiser dncnn --objective stability --sigma 0.25 --output_dir runs/dncnn-stab

Diffusion denoised smoothing (Carlini et al., 2023): one-shot denoising by a DDPM at the timestep matching sigma
(a Hub DDPM such as google/ddpm-cifar10-32, or a folder from examples/train_ddpm.py); nothing is trained:

    python examples/train_denoiser.py --model_name_or_path BASE --dataset_name cifar10 --denoiser diffusion \
        --diffusion_model google/ddpm-cifar10-32 --sigma 0.25 --output_dir runs/diffusion-0.25

Saves the composite (``input_module.safetensors`` + ``smoothing_config.json``; the base model is referenced, not
copied), which ``examples/certify.py`` certifies like any smoothed model, and with the Trainer's ``save_metrics``
/ ``save_state``: ``train_results.json`` (the accuracy under noise before and after training, the trainable
parameters, the training time, and the Trainer's training metrics when it trains), ``eval_results.json``,
``all_results.json`` and ``trainer_state.json``. The arguments may also come as one JSON file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import AutoConfig, HfArgumentParser, TrainingArguments, set_seed

from smoothing_hf import (
    DatasetArguments,
    DenoiserTrainer,
    DiffusionDenoiser,
    DnCNN,
    ImageClassificationTransform,
    SmoothedImageClassifier,
    SmoothingTrainer,
    check_labels,
    trainable_parameters,
)
from smoothing_hf.baselines import OBJECTIVES
from smoothing_hf.checks import parse_json_object


@dataclass
class DenoiserArguments:
    model_name_or_path: str = field(metadata={"help": "Frozen base AutoModelForImageClassification: Hub id or folder."})
    denoiser: str = field(default="dncnn", metadata={"help": "dncnn (trained here) or diffusion (a pretrained DDPM)."})
    sigma: float = field(default=0.25, metadata={"help": "Noise std in [0, 1] pixel units."})
    objective: str = field(default="mse", metadata={"help": f"DnCNN training objective: {', '.join(OBJECTIVES)}."})
    surrogate: str | None = field(
        default=None,
        metadata={"help": "Stability objective through this classifier instead of the base (query access)."},
    )
    denoiser_options: str = field(
        default="{}", metadata={"help": 'JSON options of DnCNN, e.g. \'{"depth": 6, "width": 32}\'.'}
    )
    diffusion_model: str | None = field(
        default=None, metadata={"help": "DDPM pipeline (Hub id or folder) for --denoiser diffusion."}
    )
    num_noise_samples: int = field(default=1, metadata={"help": "Noisy copies of each image per batch."})
    model_revision: str | None = field(default=None, metadata={"help": "Revision of the base model on the Hub."})

    def __post_init__(self) -> None:
        if self.denoiser not in ("dncnn", "diffusion"):
            raise ValueError(f"`--denoiser` must be dncnn or diffusion, got {self.denoiser!r}")
        if (self.denoiser == "diffusion") != (self.diffusion_model is not None):
            raise ValueError("`--diffusion_model` is required with `--denoiser diffusion`, and only then")


def main() -> None:
    parser = HfArgumentParser((DenoiserArguments, DatasetArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        args, data_args, training_args = parser.parse_args_into_dataclasses()
    denoiser_options = parse_json_object(args.denoiser_options, "denoiser_options")  # before the data is loaded
    if denoiser_options and args.denoiser != "dncnn":
        raise ValueError(f"`--denoiser_options` are DnCNN's, for --denoiser dncnn only; got {denoiser_options} "
                         f"with --denoiser {args.denoiser}")
    set_seed(training_args.seed)  # before the denoiser is built: DnCNN starts from random weights

    dataset = data_args.load()
    if args.denoiser == "dncnn":
        channels = AutoConfig.from_pretrained(args.model_name_or_path, revision=args.model_revision).num_channels
        module = DnCNN(num_channels=channels, **denoiser_options)
    else:
        module = DiffusionDenoiser.from_pretrained(args.diffusion_model, sigma=args.sigma)
    model = SmoothedImageClassifier.from_pretrained(
        args.model_name_or_path, sigma=args.sigma, input_module=module, revision=args.model_revision
    )
    check_labels(dataset, model.num_labels)
    transform = ImageClassificationTransform.for_model(model)
    data = {"train_dataset": dataset["train"].with_transform(transform),
            "eval_dataset": dataset["validation"].with_transform(transform)}
    trains = args.denoiser == "dncnn"
    if trains:
        surrogate = None
        if args.surrogate:
            surrogate = SmoothedImageClassifier.from_pretrained(args.surrogate, sigma=args.sigma)
        trainer = DenoiserTrainer(
            model, training_args, objective=args.objective, surrogate=surrogate,
            num_noise_samples=args.num_noise_samples, processing_class=model.image_processor, **data,
        )
    else:  # diffusion: nothing to train, the trainer only evaluates
        trainer = SmoothingTrainer(model, training_args, processing_class=model.image_processor, **data)
    before = trainer.evaluate(metric_key_prefix="before")
    train_output = trainer.train() if trains else None
    after = trainer.evaluate() if trains else {}
    noisy_accuracy = after["eval_accuracy"] if trains else before["before_accuracy"]
    trainable, total = trainable_parameters(model)
    metrics = {
        **(train_output.metrics if trains else {}), "denoiser": args.denoiser, "sigma": args.sigma,
        **({"objective": model.config.training["objective"]} if trains else {}),  # None is no metric to log
        "noisy_accuracy_before": before["before_accuracy"], "noisy_accuracy_after": noisy_accuracy,
        "trainable_parameters": trainable, "total_parameters": total, "trainable_share": trainable / total,
        "denoiser_parameters": sum(p.numel() for p in module.parameters()),
        "training_seconds": train_output.metrics["train_runtime"] if trains else 0.0,
    }
    details = {"steps": train_output.global_step, "epochs": round(train_output.metrics["epoch"], 2)} if trains else {}
    model.record_training(dataset_name=data_args.source, noisy_accuracy=noisy_accuracy, **details)
    if trainer.is_world_process_zero():
        model.save_pretrained(training_args.output_dir)
    trainer.log_metrics("train", metrics)  # log_metrics, save_metrics and save_state act on the main process only
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.log_metrics("eval", {**before, **after})
    trainer.save_metrics("eval", {**before, **after})


if __name__ == "__main__":
    main()
