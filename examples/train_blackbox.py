"""PEFTSmoothing, black-box: make a classifier we may only query noise-robust with a BlackVIP coordinator.

    accelerate launch examples/train_blackbox.py --target_model_name_or_path runs/embedded/base-vit \
        --dataset_name embedded:mnist --sigma 0.25 --output_dir runs/blackbox/coordinator-0.25

The target is used only through ``BlackBoxClassifier`` (its outputs, counted as queries); the coordinator
(a frozen encoder + a small decoder making a visual prompt from the noisy image) is trained by SPSA-GC.
The encoder is ``--encoder_name_or_path`` (any pretrained backbone: Hub id or folder) or, without it, a
small ViT that this script first pretrains as an autoencoder on the clean training images, without labels
(saved in ``--output_dir/encoder``). Saves the coordinator with ``save_pretrained`` (``input_module.safetensors``
and ``smoothing_config.json``, which names the target, sigma and the queries spent), loadable with
``SmoothedImageClassifier.from_pretrained(output_dir)`` and certifiable with ``examples/certify.py``; and
``train_results.json`` with accuracy under noise before and after, queries and trainable parameters.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from transformers import HfArgumentParser, set_seed

from smoothing_hf import (
    SPSAGC,
    BlackBoxClassifier,
    Coordinator,
    DatasetArguments,
    ImageClassificationTransform,
    PixelTransform,
    SmoothedImageClassifier,
    check_labels,
    train_coordinator,
    trainable_parameters,
)
from smoothing_hf.blackbox import pretrain_autoencoder, query_accuracy
from smoothing_hf.files import write_json


@dataclass
class ModelArguments:
    target_model_name_or_path: str = field(
        metadata={"help": "The black-box AutoModelForImageClassification: Hub id or folder."}
    )
    sigma: float = field(default=0.25, metadata={"help": "Noise std in [0, 1] pixel units."})
    target_output: str = field(
        default="probabilities", metadata={"help": "What the black box returns: probabilities or logits."}
    )
    query_budget: int | None = field(
        default=None, metadata={"help": "Most images that training may send to the target."}
    )
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained encoder (AutoModel, Hub id or folder); default: pretrain an autoencoder here."},
    )
    prompt_size: int = field(default=7, metadata={"help": "Side of the low-resolution prompt, upsampled to the image."})
    hidden_size: int = field(default=32, metadata={"help": "Hidden units of the decoder."})
    trigger_size: int = field(default=16, metadata={"help": "Size of the learnable prompt trigger."})
    prompt_scale: float = field(default=1.0, metadata={"help": "Largest prompt value ([0, 1] pixel units)."})


@dataclass
class BlackBoxArguments:
    output_dir: str = field(metadata={"help": "Where the coordinator, its encoder and train_results.json go."})
    steps: int = field(default=400, metadata={"help": "SPSA-GC steps."})
    batch_size: int = field(default=64, metadata={"help": "Noisy training images per step."})
    num_directions: int = field(
        default=5, metadata={"help": "Perturbation directions per gradient estimate (2 queries of the batch each)."}
    )
    spsa_a: float = field(default=0.004, metadata={"help": "SPSA step size a: a_k = a / (k + 1 + A)^alpha."})
    spsa_c: float = field(default=0.01, metadata={"help": "SPSA perturbation size c: c_k = c / (k + 1)^gamma."})
    spsa_A: float = field(default=10.0, metadata={"help": "SPSA step size offset A."})
    spsa_alpha: float = field(default=0.4, metadata={"help": "Decay exponent of the step size."})
    spsa_gamma: float = field(default=0.1, metadata={"help": "Decay exponent of the perturbation size."})
    momentum: float = field(default=0.9, metadata={"help": "Look-ahead momentum beta (0: plain SPSA)."})
    autoencoder_steps: int = field(
        default=2000, metadata={"help": "Steps of encoder pretraining (without --encoder_name_or_path)."}
    )
    autoencoder_seconds: float | None = field(
        default=None,
        metadata={"help": "Time limit of encoder pretraining, seconds (the encoder then depends on the machine)."},
    )
    eval_batch_size: int = field(
        default=250, metadata={"help": "Images per query when measuring accuracy under noise."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialization, batches, noise and SPSA directions."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DatasetArguments, BlackBoxArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        model_args, data_args, args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, args = parser.parse_args_into_dataclasses()
    set_seed(args.seed)  # before the coordinator (or the encoder pretrained here) is built
    state = PartialState()
    if state.num_processes > 1:
        raise ValueError(
            "train_blackbox.py runs in one process: SPSA-GC steps are sequential (launch with --num_processes 1)"
        )

    dataset = data_args.load()
    black_box = BlackBoxClassifier.from_pretrained(
        model_args.target_model_name_or_path, output=model_args.target_output, query_budget=model_args.query_budget
    )
    black_box.target.to(state.device)
    check_labels(dataset, black_box.num_labels)
    if black_box.image_processor is None:
        raise ValueError(f"{model_args.target_model_name_or_path!r} has no image processor to size the images with")
    num_channels = black_box.target.config.num_channels
    transform = ImageClassificationTransform(PixelTransform(black_box.image_processor), num_channels)
    train, validation = dataset["train"].with_transform(transform), dataset["validation"].with_transform(transform)

    results: dict = {"target": model_args.target_model_name_or_path, "sigma": model_args.sigma}
    encoder = model_args.encoder_name_or_path
    if encoder is None:  # the embedded default: pretrain an encoder on the clean training images, no labels
        images = train[: len(train)]["pixel_values"]
        started = time.perf_counter()
        encoder_model = pretrain_autoencoder(
            images, steps=args.autoencoder_steps, max_seconds=args.autoencoder_seconds, seed=args.seed,
            progress=not args.disable_tqdm,
        )
        encoder = os.path.abspath(os.path.join(args.output_dir, "encoder"))
        encoder_model.save_pretrained(encoder)
        results["autoencoder_seconds"] = time.perf_counter() - started
    coordinator = Coordinator.from_encoder(
        encoder, num_channels, prompt_size=model_args.prompt_size, hidden_size=model_args.hidden_size,
        trigger_size=model_args.trigger_size, prompt_scale=model_args.prompt_scale,
    ).to(state.device)

    sigma, evaluate = model_args.sigma, {"batch_size": args.eval_batch_size, "device": state.device}
    used = black_box.queries
    results["noisy_accuracy_before"] = query_accuracy(black_box, validation, sigma=sigma, **evaluate)
    optimizer = SPSAGC(
        [p for p in coordinator.parameters() if p.requires_grad], a=args.spsa_a, c=args.spsa_c, A=args.spsa_A,
        alpha=args.spsa_alpha, gamma=args.spsa_gamma, momentum=args.momentum, num_directions=args.num_directions,
        generator=torch.Generator(device=state.device).manual_seed(args.seed),
    )
    training = train_coordinator(
        coordinator, black_box, train, sigma=sigma, steps=args.steps, batch_size=args.batch_size, optimizer=optimizer,
        seed=args.seed, progress=not args.disable_tqdm,
    )
    results["noisy_accuracy_after"] = query_accuracy(
        lambda x: black_box(coordinator(x)), validation, sigma=sigma, **evaluate
    )
    trainable, total = trainable_parameters(coordinator)
    losses = training["losses"]
    results.update(
        encoder=encoder, queries=training["queries"], evaluation_queries=black_box.queries - used - training["queries"],
        steps=training["steps"], trainable_parameters=trainable, coordinator_parameters=total,
        training_seconds=training["seconds"], initial_loss=sum(losses[:20]) / len(losses[:20]),
        final_loss=sum(losses[-20:]) / len(losses[-20:]),
        spsa={k: v for k, v in asdict(args).items() if k.startswith("spsa")}
        | {"momentum": args.momentum, "num_directions": args.num_directions, "batch_size": args.batch_size},
    )

    smoothed = SmoothedImageClassifier.from_pretrained(
        model_args.target_model_name_or_path, sigma=sigma, input_module=coordinator.cpu()
    )
    smoothed.record_training(
        dataset_name=data_args.source, steps=training["steps"], queries=training["queries"],
        objective="black-box cross-entropy (SPSA-GC)", noisy_accuracy=results["noisy_accuracy_after"],
    )
    smoothed.save_pretrained(args.output_dir)
    write_json(results, os.path.join(args.output_dir, "train_results.json"))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
