"""Result rows that contradict themselves or hold values no certification writes are refused before the report
counts them.

``smoothing_hf.files.read_rows`` already refuses a line that is not a row (a wrong number of fields, a value
that is not a number, a radius that is not a finite number >= 0, correct other than 0 or 1). On the rows it
returns, ``read_checked_rows`` checks every column the file has, of any mode's TSV (certify, adaptive, fixed_radius
and radii write Cohen's columns and ``samples``; radii adds one ``certified_<r>`` column per radius; predict
writes no radius):

- idx: an int >= 0, on one row only;
- label: an int >= 0 (a class index);
- predict: an int >= -1 (a class index, or -1 for an abstention);
- correct: Cohen's ``int(predict == label)``: 1 where predict is the label, else 0, so 0 for an abstention;
- radius: 0.0 for an abstention (DESIGN.md contract 2); in a fixed_radius or radii run, the largest radius it
  tested that is certified, else 0.0;
- certified_<r> (radii runs): 1 where r is certified, else 0: for r > 0, exactly where r <= radius; for r = 0,
  exactly where the row predicts a class;
- time: seconds, a finite number >= 0;
- samples: noisy forward passes, an int >= 1 (or empty).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..files import COHEN_COLUMNS, read_rows

ABSTAIN = -1
"""The prediction of an abstention, as ``smoothing_hf.certification.ABSTAIN`` (not imported: reporting needs
no torch)."""

ALLOWED = {  # column: (what it allows, in words; whether a value read by read_rows is allowed)
    "idx": ("an int >= 0 (the example's index)", lambda value: value >= 0),
    "label": ("an int >= 0 (a class index)", lambda value: value >= 0),
    "predict": ("an int >= -1 (a class index, or -1 for an abstention)", lambda value: value >= ABSTAIN),
    "time": ("a finite number of seconds >= 0", lambda value: math.isfinite(value) and value >= 0),
    "samples": (
        "an int >= 1 (noisy forward passes) or empty",
        lambda value: value is None or (type(value) is int and value >= 1),
    ),
}


def read_checked_rows(
    path: str | os.PathLike,
    required: Sequence[str] = COHEN_COLUMNS,
    *,
    tested_radii: Sequence[float] | None = None,
    mode: str = "fixed_radius",
) -> list[dict]:
    """The rows of the result TSV at ``path`` (``read_rows(path, required)``, which drops a torn last line with a
    ``UserWarning``), once each holds allowed values that agree with each other (the module's list) and no idx
    repeats. ``tested_radii``: the radii a ``mode`` run (fixed_radius or radii) tested (l2, [0, 1] pixels); every
    radius must then be one of them or 0.0, and a radii run must have its ``certified_<r>`` columns. Else a
    ValueError naming the file, the line (the header is line 1) and what is wrong."""
    if tested_radii is not None and mode == "radii":
        required = (*required, *(radius_column(r) for r in tested_radii))
    rows = read_rows(path, required)
    first_row: dict[int, int] = {}  # idx -> index of the row that has it first
    for index, row in enumerate(rows):
        problem = _row_problem(row, tested_radii, mode)
        if problem is None and "idx" in row:
            first = first_row.setdefault(row["idx"], index)
            if first != index:
                problem = f"idx {row['idx']} repeats the example of line {_line_numbers(path)[first]}"
        if problem is not None:
            raise ValueError(f"{os.fspath(path)}, line {_line_numbers(path)[index]}: {problem}")
    return rows


def radius_column(radius: float) -> str:
    """The 0/1 column of a radii run for ``radius``: ``certified_0.25`` (as ``smoothing_hf.modes`` writes it)."""
    return f"certified_{radius:g}"


def _row_problem(row: dict, tested_radii: Sequence[float] | None, mode: str) -> str | None:
    """What is wrong with one row on its own, or None."""
    for column, (allowed, fits) in ALLOWED.items():
        if column in row and not fits(row[column]):
            return f"{column} must be {allowed}, got {row[column]!r}"
    predict, label, correct, radius = (row.get(column) for column in ("predict", "label", "correct", "radius"))
    if predict == ABSTAIN and correct == 1:
        return "an abstention (predict = -1) is never correct, got correct = 1"
    if predict == ABSTAIN and radius:
        return f"an abstention (predict = -1) has radius 0.0, got radius {radius!r}"
    if None not in (predict, label, correct) and correct != int(predict == label):
        if correct == 1:
            return f"correct = 1 but predict = {predict} is not label = {label}"
        return f"correct = 0 but predict = label = {label}"
    if tested_radii is None:
        return None
    if radius not in (0.0, *tested_radii):
        tested = f"radius {tested_radii[0]!r}" if len(tested_radii) == 1 else f"radii {list(tested_radii)}"
        return (
            f"a {mode} run at {tested} (its summary.json) has the largest radius tested that is certified, "
            f"else 0.0; got radius {radius!r}"
        )
    for tested in tested_radii:
        column = radius_column(tested)
        if column not in row:
            continue
        expected = int(predict != ABSTAIN) if tested == 0 else int(tested <= radius)
        if row[column] != expected:
            return (
                f"{column} must be {expected} where radius = {radius!r} and predict = {predict} "
                f"(1 exactly where {tested:g} is certified), got {row[column]!r}"
            )
    return None


def _line_numbers(path: str | os.PathLike) -> list[int]:
    """The line (1-based; the header is line 1) of each row ``read_rows(path)`` returns: it skips blank lines and
    drops a last line without a newline, so row i is on line i + 2 only where no blank line comes before it."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().split("\n")
    return [number for number, line in enumerate(lines[1:-1], start=2) if line.strip()]
