"""Figures from certification results: certified accuracy at radii, ACR, abstain rate.

Reads and writes plain rows (Cohen's TSV columns), imports no model code, so it also reads other tools'
``certify`` outputs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence

import numpy as np

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def write_tsv(rows: Iterable[dict], path: str | os.PathLike) -> None:
    """Write rows with Cohen's columns, tab-separated, atomically (temporary file renamed into place)."""
    temporary = f"{os.fspath(path)}.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [row["idx"], row["label"], row["predict"], repr(float(row["radius"])), int(row["correct"]), f"{row['time']:.4f}"]
            )
    os.replace(temporary, path)


def read_tsv(path: str | os.PathLike) -> list[dict]:
    """Rows of a certification TSV: idx, label, predict, correct as ints; radius, time as floats."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = set(TSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a certification TSV: missing columns {sorted(missing)}")
        return [
            {
                "idx": int(r["idx"]), "label": int(r["label"]), "predict": int(r["predict"]),
                "radius": float(r["radius"]), "correct": int(r["correct"]), "time": float(r["time"]),
            }
            for r in reader
        ]


def summarize(rows: Sequence[dict], radii: Sequence[float] = DEFAULT_RADII) -> dict:
    """Certified accuracy at each radius (fraction of examples certified correctly with radius >= r),
    the average certified radius (ACR: mean of radius * correct), the abstain rate, and the smoothed
    classifier's clean accuracy (certified accuracy at radius 0)."""
    if not rows:
        raise ValueError("no certification rows to summarize")
    radius = np.array([r["radius"] for r in rows])
    correct = np.array([r["correct"] for r in rows], dtype=bool)
    abstained = np.array([r["predict"] == -1 for r in rows])
    return {
        "num_examples": len(rows),
        "certified_accuracy": {f"{r:g}": float(np.mean(correct & (radius >= r))) for r in radii},
        "acr": float(np.mean(radius * correct)),
        "abstain_rate": float(np.mean(abstained)),
        "clean_accuracy": float(np.mean(correct)),
    }


def format_summary(summary: dict, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75)) -> str:
    """A short Markdown table of certified accuracy at ``radii`` with ACR and abstain rate."""
    header = "| " + " | ".join(f"r = {r:g}" for r in radii) + " | ACR | abstain |"
    rule = "|" + "---|" * (len(radii) + 2)
    values = [f"{100 * summary['certified_accuracy'][f'{r:g}']:.1f}%" for r in radii]
    line = "| " + " | ".join(values) + f" | {summary['acr']:.3f} | {100 * summary['abstain_rate']:.1f}% |"
    return "\n".join([header, rule, line])
