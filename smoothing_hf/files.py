"""Files (DESIGN.md contracts 4 and 5): atomic writes, JSON objects, and result rows in TSV form.

Everything is written to a temporary name beside the target, then renamed, so a crash never leaves half a
file. Result TSVs carry Cohen et al.'s columns (idx, label, predict, radius, correct, time) and then ours
(``samples``, ...); the same reader serves our certify and attack outputs and other tools' files. A
leaf: imports nothing of the package and nothing heavier than the standard library.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
"""The columns of Cohen et al.'s ``certify.py`` output, in their order."""
INTEGER_COLUMNS = ("idx", "label", "predict", "correct")
TEXT_COLUMNS = ("pixel_digest",)
"""Columns read as text even when they look like numbers (a hex digest can be all digits)."""


# ---------------------------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside ``path`` with the same extension (writers that infer the format
    from it keep working); rename it to ``path`` when the block succeeds, remove it when it fails."""
    root, extension = os.path.splitext(os.fspath(path))
    temporary = f"{root}.tmp-{os.getpid()}{extension}"
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(value: object, path: str | os.PathLike) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    write_text(json.dumps(value, indent=2) + "\n", path)


def read_json(path: str | os.PathLike, *, missing_ok: bool = False) -> dict:
    """The JSON object in ``path``; ``{}`` for a missing file with ``missing_ok``. A missing file otherwise,
    invalid JSON or another JSON type is a ValueError naming the file."""
    if not os.path.isfile(path):
        if missing_ok:
            return {}
        raise ValueError(f"{os.fspath(path)} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{os.fspath(path)} is not valid JSON ({error}); write it again") from None
    if not isinstance(values, dict):
        raise ValueError(f"{os.fspath(path)} must hold a JSON object, got {type(values).__name__}")
    return values


# ---------------------------------------------------------------------------------------------- result rows


def write_rows(rows: Iterable[dict], path: str | os.PathLike, columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts with at least ``columns``) as a tab-separated file with a header, atomically.

    Floats are written exactly (``repr``: a radius reads back bit for bit), None as an empty field."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([format_value(row[column]) for column in columns] for row in rows)


@contextlib.contextmanager
def appending_rows(path: str | os.PathLike, columns: Sequence[str]) -> Iterator[Callable[[dict], None]]:
    """Open a progress file of rows for appending and yield ``append(row)``, which writes and flushes one
    line. A new file gets the header first. A last line cut short by a kill (no newline at its end) is cut
    off before anything is appended, so a new row never joins it; its row counts as not done."""
    if os.path.exists(path):
        _cut_torn_line(path)
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        if handle.tell() == 0:
            writer.writerow(columns)

        def append(row: dict) -> None:
            writer.writerow([format_value(row[column]) for column in columns])
            handle.flush()

        yield append


def read_rows(path: str | os.PathLike, required: Sequence[str] = COHEN_COLUMNS) -> list[dict]:
    """Rows of a result TSV whose header holds the ``required`` columns (Cohen's by default), ours or
    another tool's: idx, label, predict, correct (0 or 1) as ints; radius (l2, [0, 1] pixels, >= 0) and
    time as floats, ``time`` in seconds (``15.4``) or Cohen's ``str(timedelta)`` form ``0:02:30.437045``.
    Other columns (``samples``, say) are kept: numbers as int or float, empty as None, else the text.

    A header with no rows is a run of 0 examples: ``[]``. A last line without a newline at its end is what a
    write cut short by a crash leaves: it is dropped with a ``UserWarning`` naming file and line. Any other
    line that is not a row (too few or too many fields, a value that is not a number, a radius < 0, correct
    not 0 or 1) is a ValueError naming file and line; so are an empty file and a header missing a column."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    if not lines:  # one line and no newline: the header alone (a torn header misses columns below)
        lines, torn = [torn], ""
    header = [name.strip() for name in lines[0].rstrip("\r").split("\t")]
    if header == [""]:
        raise ValueError(f"{path} is empty: a certification TSV starts with a header of columns {list(required)}")
    missing = [column for column in required if column not in header]
    if missing:
        raise ValueError(f"{path} is not a certification TSV: missing columns {missing}, needs {list(required)}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ValueError(f"{path}: columns {repeated} appear more than once in the header")
    rows = [_parse_row(line, header, path, number) for number, line in enumerate(lines[1:], start=2) if line.strip()]
    if torn.strip():
        warnings.warn(
            f"{path}, line {len(lines) + 1}: no newline at its end, as a write cut short by a crash leaves it; "
            f"the line is ignored ({torn!r}). End the file with a newline if the line is complete.",
            UserWarning,
            stacklevel=2,
        )
    return rows


def format_value(value: object) -> str:
    """A field as written: floats exactly (``repr``), None as empty, anything else as ``str``."""
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _cut_torn_line(path: str | os.PathLike) -> None:
    """Truncate ``path`` after its last newline (nothing to do when it ends with one)."""
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


_TIMEDELTA = re.compile(r"(?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d*)?)")


def _seconds(text: str) -> float:
    """Seconds from ``"15.4"`` or Cohen et al.'s ``str(timedelta)`` form ``"0:02:30.437045"`` (``"1 day, 0:00:01"``)."""
    match = _TIMEDELTA.fullmatch(text.strip())
    if match is None:
        return float(text)
    days, hours, minutes, seconds = match.groups()
    return 86400 * int(days or 0) + 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def _parse_row(line: str, header: list[str], path: str | os.PathLike, number: int) -> dict:
    """One complete line of a result TSV as a row (``read_rows``); ValueError naming file and line."""
    fields = line.rstrip("\r").split("\t")
    if len(fields) != len(header):
        raise ValueError(
            f"{path}, line {number}: {len(fields)} tab-separated fields, the header has {len(header)}: {line!r}"
        )
    values = dict(zip(header, fields))
    row: dict = {}
    try:
        for column, text in values.items():
            if column in INTEGER_COLUMNS:
                row[column] = int(text)
            elif column == "radius":
                row[column] = float(text)
            elif column == "time":
                row[column] = _seconds(text)
            elif column in TEXT_COLUMNS:
                row[column] = text
            else:
                row[column] = _value(text)
    except ValueError as error:
        raise ValueError(f"{path}, line {number}: not a certification row ({error})") from None
    if "radius" in row and not (math.isfinite(row["radius"]) and row["radius"] >= 0):
        raise ValueError(f"{path}, line {number}: radius must be a finite l2 distance >= 0, got {values['radius']!r}")
    if "correct" in row and row["correct"] not in (0, 1):
        raise ValueError(f"{path}, line {number}: correct must be 0 or 1, got {values['correct']!r}")
    return row


def _value(text: str) -> int | float | str | None:
    """An extra column's value: an int or float where it is a number, None where empty, else the text."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text or None
