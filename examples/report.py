"""Compare certification runs (several sigmas or methods): certified accuracy (%) at radii and ACR.

    python examples/report.py --runs lora-0.25=runs/lora-0.25/certify lora-0.5=runs/lora-0.5/certify \
        --output_dir runs/report

Each run is ``name=path`` (or just ``path``): a folder written by ``examples/certify.py`` (its
``certify.tsv``, and ``summary.json`` for sigma) or a TSV file with Cohen's columns from any tool. Writes
``report.md``, ``report.tex`` (booktabs) and ``certified_accuracy.png`` (all curves) into ``--output_dir``
and prints the Markdown table; the best value per column is marked (``*`` in Markdown, bold in LaTeX).
Radii are l2 distances in [0, 1] pixel space. To print one table without writing files:
``python -m smoothing_hf.report PATH [PATH ...]``. The arguments may also come as one JSON file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from smoothing_hf.reporting import COMPARISON_RADII, write_report


@dataclass
class ReportArguments:
    runs: list[str] = field(
        metadata={"help": "Runs to compare, each name=path (or path): a certify output folder or a TSV file."}
    )
    output_dir: str = field(metadata={"help": "Where report.md, report.tex and certified_accuracy.png go."})
    radii: list[float] = field(
        default_factory=lambda: list(COMPARISON_RADII),
        metadata={"help": "l2 radii (pixels in [0, 1]) of the table's columns."},
    )
    max_radius: float | None = field(
        default=None,
        metadata={"help": "End of the plot's radius axis (default: the first multiple of 0.25 past the largest "
                  "radius)."},
    )


def parse_runs(runs: list[str]) -> dict[str, str]:
    """``name=path`` (or ``path``, named by itself) entries as {name: path}; names must be unique."""
    named = [run.split("=", 1) if "=" in run else [run, run] for run in runs]
    names = [name for name, _ in named]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"`--runs` names must be unique, got {repeated} more than once")
    return dict(named)


def main() -> None:
    parser = HfArgumentParser(ReportArguments)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # the arguments as one JSON file
        (args,) = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        (args,) = parser.parse_args_into_dataclasses()
    print(write_report(parse_runs(args.runs), args.output_dir, radii=args.radii, max_radius=args.max_radius))


if __name__ == "__main__":
    main()
