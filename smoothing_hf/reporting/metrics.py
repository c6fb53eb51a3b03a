"""Certified accuracy at radii, ACR, abstain rate: the figures of a certification run, from its rows.

Rows have Cohen's columns (``smoothing_hf.files.read_rows``); radii are l2 distances in [0, 1] pixel space;
certified accuracies are fractions in [0, 1]. Needs numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..checks import is_number
from ..files import COHEN_COLUMNS

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
COMPARISON_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def certified_accuracy_curve(rows: Sequence[dict], name: str = "rows") -> tuple[np.ndarray, np.ndarray]:
    """The exact certified accuracy curve: radii (0 and every distinct radius in ``rows``, ascending, in
    [0, 1] pixel-space l2 units) and, at each radius r, the fraction of rows with correct == 1 and
    radius >= r. Between two consecutive radii r_k < r < r_(k+1) the accuracy is that at r_(k+1) (a step
    drawn with ``where="pre"``); beyond the last radius it is 0. ``name`` names ``rows`` in errors."""
    radius, correct, _ = certification_columns(rows, name)
    radii = np.unique(np.concatenate([[0.0], radius]))
    certified = np.sort(radius[correct])
    accuracy = (len(certified) - np.searchsorted(certified, radii, side="left")) / len(rows)
    return radii, accuracy


def summarize(rows: Sequence[dict], radii: Sequence[float] = DEFAULT_RADII) -> dict:
    """Certified accuracy at each radius (fraction of examples certified correctly with radius >= r, keyed
    by ``f"{r:g}"``), the average certified radius (ACR: mean of radius * correct, in the radii's [0, 1]
    pixel-space l2 units), the abstain rate (predict == -1), and the smoothed classifier's clean accuracy
    (certified accuracy at radius 0)."""
    radius, correct, abstained = certification_columns(rows, "rows")
    check_radii(radii, "radii")
    return {
        "num_examples": len(rows),
        "certified_accuracy": {f"{r:g}": float(np.mean(correct & (radius >= r))) for r in radii},
        "acr": float(np.mean(radius * correct)),
        "abstain_rate": float(np.mean(abstained)),
        "clean_accuracy": float(np.mean(correct)),
    }


def format_summary(summary: dict, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75)) -> str:
    """A short Markdown table of certified accuracy (%) at ``radii`` with ACR and abstain rate."""
    check_summarized(summary["certified_accuracy"], radii, "summary")
    header = "| " + " | ".join(f"r = {r:g}" for r in radii) + " | ACR | abstain |"
    rule = "|" + "---|" * (len(radii) + 2)
    values = [f"{100 * summary['certified_accuracy'][f'{r:g}']:.1f}%" for r in radii]
    line = "| " + " | ".join(values) + f" | {summary['acr']:.3f} | {100 * summary['abstain_rate']:.1f}% |"
    return "\n".join([header, rule, line])


def certified_accuracy_metric_path() -> str:
    """The folder of the ``evaluate`` metric that computes the same figures as ``summarize`` from
    predictions, radii and references: ``evaluate.load(certified_accuracy_metric_path())`` (offline)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "certified_accuracy")


def certification_columns(rows: Sequence[dict], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """radius (float), correct (bool) and abstained (predict == -1) of non-empty ``rows``."""
    if len(rows) == 0:
        raise ValueError(f"`{name}` holds no certification rows")
    missing = sorted({"radius", "correct", "predict"} - set(rows[0]))
    if missing:
        raise ValueError(f"`{name}` must be rows with Cohen's columns {list(COHEN_COLUMNS)}; missing {missing}")
    radius = np.array([r["radius"] for r in rows], dtype=float)
    correct = np.array([r["correct"] for r in rows], dtype=bool)
    abstained = np.array([r["predict"] == -1 for r in rows])
    return radius, correct, abstained


def check_radii(radii: Sequence[float], name: str) -> None:
    if len(radii) == 0 or not all(is_number(r) and r >= 0 for r in radii):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of finite radii >= 0 (l2, [0, 1] pixels), got {radii!r}"
        )


def check_summarized(certified_accuracy: dict, radii: Sequence[float], name: str) -> None:
    absent = [r for r in radii if f"{r:g}" not in certified_accuracy]
    if absent:
        raise ValueError(
            f"radii {absent} are not in `{name}`, which has certified accuracy at radii {list(certified_accuracy)}"
        )
