"""Samples per second of the certify pipeline against the bare forward-pass rate, 1 and 2 processes.

Measures, on one smoothed model and in one run: the bare forward rate (forward + argmax on pre-drawn noisy
batches of ``--batch_size``, one process), then ``examples/certify.py`` in 1 process and in 2 processes
(``torchrun --standalone --nproc_per_node 2``), each rate taken from its ``summary.json``. Writes JSON.

    python benchmarks/pipeline_throughput.py --model runs/embedded/vit-lora-0.25
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from smoothing_hf import ImageClassificationTransform, SmoothedImageClassifier, load_image_dataset
from smoothing_hf.files import write_json

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def bare_forward_rate(model_dir: str, dataset_name: str, batch_size: int, batches: int) -> float:
    model = SmoothedImageClassifier.from_pretrained(model_dir).inference_model().eval()
    example = load_image_dataset(dataset_name)["validation"].with_transform(
        ImageClassificationTransform.for_model(model)
    )[0]
    image = example["pixel_values"]
    noisy = [image + model.sigma * torch.randn(batch_size, *image.shape) for _ in range(batches)]
    with torch.inference_mode():
        model(noisy[0])  # warm-up
        start = time.perf_counter()
        for batch in noisy:
            model(batch).logits.argmax(dim=1)
    return batch_size * batches / (time.perf_counter() - start)


def pipeline_rate(model_dir: str, processes: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as output:
        launcher = (
            [sys.executable]
            if processes == 1
            else [
                shutil.which("torchrun", path=os.path.dirname(sys.executable)),
                "--standalone",
                "--nproc_per_node",
                str(processes),
                "--",
            ]
        )
        command = [
            *launcher,
            "examples/certify.py",
            "--model_name_or_path",
            model_dir,
            "--dataset_name",
            args.dataset_name,
            "--n0",
            "100",
            "--n",
            str(args.n),
            "--batch_size",
            str(args.batch_size),
            "--max_examples",
            str(args.max_examples),
            "--output_dir",
            output,
        ]
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))}
        subprocess.run(command, cwd=ROOT, env=environment, check=True, capture_output=True)
        with open(os.path.join(output, "summary.json")) as handle:
            return json.load(handle)["samples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved smoothing model folder.")
    parser.add_argument("--dataset_name", default="embedded:mnist")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--max_examples", type=int, default=40)
    parser.add_argument("--output", default="benchmarks/results/pipeline_throughput.json")
    args = parser.parse_args()

    bare = bare_forward_rate(
        args.model,
        args.dataset_name,
        args.batch_size,
        batches=args.max_examples * (args.n + 100) // args.batch_size // 4,
    )
    one = pipeline_rate(args.model, 1, args)
    two = pipeline_rate(args.model, 2, args)
    result = {
        "settings": vars(args),
        "cpu_count": os.cpu_count(),
        "samples_per_second": {"bare_forward": bare, "pipeline_1_process": one, "pipeline_2_processes": two},
        "ratios": {"pipeline_1_process_over_bare": one / bare, "pipeline_2_processes_over_bare": two / bare},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json(result, args.output)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
