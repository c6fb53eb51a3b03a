"""Fine-tuning methods side by side on the same base, noise level, data and training budget.

Answers the reviewers' question "why can LoRA beat full fine-tuning?" with numbers from one run: for each
method, trainable parameters, training time, accuracy under noise, certified accuracy at radii with ACR on
the same held-out images, and certification throughput. The PEFT subset of ``examples/compare.py`` (which
adds the unadapted base, consistency regularization, the denoisers and several seeds), through the same
library code (``smoothing_hf.comparison``); writes the rows as JSON and prints the Markdown table.

    python benchmarks/compare_methods.py --base runs/embedded/base-vit --output benchmarks/results/methods.json
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from smoothing_hf.comparison import ComparisonSettings, comparison_rows, comparison_table, run_comparison
from smoothing_hf.data import load_image_dataset
from smoothing_hf.files import write_json

RADII = (0.0, 0.25, 0.5, 0.75)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="Base model folder or Hub id.")
    parser.add_argument("--dataset_name", default="embedded:mnist")
    parser.add_argument("--methods", default="full,linear,lora,dora,adapter,vpt")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="For the PEFT methods and the head.")
    parser.add_argument("--full_learning_rate", type=float, default=5e-4, help="For full fine-tuning.")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--skip", type=int, default=20, help="Certify every skip-th held-out image.")
    parser.add_argument("--runs_dir", default=None, help="Keep the trained runs here (default: a temporary folder).")
    parser.add_argument("--output", default="benchmarks/results/methods.json")
    args = parser.parse_args()

    settings = ComparisonSettings(
        sigma=args.sigma, epochs=args.epochs, learning_rate=args.learning_rate, full_learning_rate=args.full_learning_rate,
        n0=args.n0, n=args.n, alpha=args.alpha, skip=args.skip,
    )
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        runs_dir = args.runs_dir or scratch
        run_comparison(args.base, load_image_dataset(args.dataset_name), settings, runs_dir, methods=methods, seeded_methods=())
        rows = comparison_rows({method: [os.path.join(runs_dir, method)] for method in methods}, RADII)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json({"settings": vars(args), "methods": rows}, args.output)
    print(comparison_table(rows, RADII))


if __name__ == "__main__":
    main()
