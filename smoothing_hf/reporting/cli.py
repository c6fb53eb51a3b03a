"""``python -m smoothing_hf.report`` (or ``python -m smoothing_hf.reporting``): one table of certified accuracy
at radii and ACR, one row per certification run, from our output folders and from raw TSVs of other tools
(Cohen et al.'s ``certify.py`` included) alike.

    python -m smoothing_hf.report runs/lora/certify runs/full/certify cohen/noise_0.25/test/sigma_0.25 \
        --labels lora full cohen --radii 0 0.25 0.5 0.75 1.0 --format markdown --plot curves.png

Each PATH is an output folder (its ``certify.tsv``; sigma and space from its ``summary.json``) or a TSV file
with Cohen's columns idx, label, predict, radius, correct, time (time in seconds, ``15.4``, or as
``0:02:30.437045``; other columns are kept). A row's label is the matching ``--labels`` entry, else the
folder's name or the file's name without its extension; labels must be unique.

Certified accuracy at r (%, Cohen's definition) is the share of rows with correct = 1 and radius >= r; ACR is
the mean of radius * correct; radii are l2 distances in [0, 1] pixel space, of the image size a run certified
at: a ``space`` column (where a ``summary.json`` records one; ``unknown`` for older folders and raw TSVs) says
which, and radii of different spaces are never ranked together. The best value per column among the runs of
one space is marked (``*`` in Markdown, bold in LaTeX); runs of several spaces get a note. A TSV holding a
header only is a run of 0 examples: its row shows n = 0 and dashes. A last line without a newline (a write cut
short by a crash) is ignored with a warning on stderr; any other malformed line, a missing column or a missing
path is an error (exit status 2), and so is a row that contradicts itself or another, naming file and line: a
repeated idx, correct = 1 where predict is not the label (or 0 where it is), an abstention (predict = -1) with
a radius, a value outside its column's range (``smoothing_hf.reporting.validation``). Nothing is printed or
plotted then.
``--plot FILE`` also writes every curve into one figure (its extension picks the format: .png, .pdf, .svg).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from .metrics import COMPARISON_RADII
from .plots import plot_runs
from .runs import read_runs, summarize_run
from .tables import comparison_latex, comparison_markdown

FORMATS = {"markdown": comparison_markdown, "latex": comparison_latex}


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser. argparse, not HfArgumentParser: it takes positional PATHs, dataclass flags do not."""
    parser = argparse.ArgumentParser(
        prog="python -m smoothing_hf.report",
        description=(
            "Certified accuracy (%) at l2 radii (pixels in [0, 1]) and ACR of certification runs, one row per PATH."
        ),
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="A certification output folder or a TSV file with Cohen's columns."
    )
    parser.add_argument(
        "--radii",
        nargs="+",
        type=float,
        default=list(COMPARISON_RADII),
        metavar="R",
        help="l2 radii (pixels in [0, 1]) of the table's columns (default: %(default)s).",
    )
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="markdown", help="Table printed to stdout (default: %(default)s)."
    )
    parser.add_argument(
        "--labels", nargs="+", metavar="LABEL", help="One unique label per PATH (default: folder or file name)."
    )
    parser.add_argument(
        "--plot", metavar="FILE", help="Also write every certified accuracy curve into one figure at FILE."
    )
    parser.add_argument(
        "--max-radius",
        type=float,
        metavar="R",
        help="End of the plot's radius axis (default: the first multiple of 0.25 past the largest radius).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of the runs at ``argv``'s PATHs (``sys.argv[1:]`` by default) and write the plot; returns
    the exit status: 0, or 2 after printing the error to stderr (a bad flag exits with 2 through argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    error = None
    with warnings.catch_warnings(record=True) as caught:  # torn last lines, runs with no curve: one line each
        warnings.simplefilter("always", UserWarning)
        try:
            runs = read_runs(args.paths, args.labels)
            table = FORMATS[args.format]([summarize_run(run, args.radii) for run in runs], args.radii)
            if args.plot is not None:
                os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
                plot_runs(runs, args.plot, max_radius=args.max_radius)
        except (ImportError, OSError, ValueError) as raised:
            error = raised
    for warning in caught:
        print(f"{parser.prog}: warning: {warning.message}", file=sys.stderr)
    if error is not None:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(table)
    return 0
