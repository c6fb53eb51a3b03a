"""The figures of an attack run (``attack.tsv`` rows): empirical robust accuracy per radius beside the
certified accuracy of the same examples, as a summary, a Markdown table and a plot.

The empirical accuracy under SmoothAdv is an upper bound on the smoothed classifier's robust accuracy at a
radius, as the certified accuracy is a lower bound; ``certificate_violations`` counts where the two disagree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..certification import ABSTAIN
from ..files import atomic_path
from ..reporting import summarize

ROBUSTNESS_PLOT = "robustness.png"


def summarize_attack(rows: Sequence[dict], certified_rows: Sequence[dict] | None = None) -> dict:
    """Per attack radius epsilon (keys ``f"{r:g}"``): the fraction of ``rows`` (attack.tsv rows) still
    classified correctly (``empirical_accuracy``) and abstained on (``abstain_rate``); with the
    certification rows of the same examples, also their ``certified_accuracy`` (correct with radius >=
    epsilon), ``gap`` = empirical - certified, and ``certificate_violations``: examples certified correct with
    a radius > epsilon whose attacked image PREDICT assigned to another class (each has probability at most
    about alpha of happening when both the certificate and the attack are right)."""
    radii = sorted({row["epsilon"] for row in rows})
    by_radius = {r: [row for row in rows if row["epsilon"] == r] for r in radii}
    summary: dict[str, Any] = {
        "num_examples": len(by_radius[radii[0]]),
        "radii": radii,
        "empirical_accuracy": {f"{r:g}": float(np.mean([row["correct"] for row in by_radius[r]])) for r in radii},
        "abstain_rate": {f"{r:g}": float(np.mean([row["predict"] == ABSTAIN for row in by_radius[r]])) for r in radii},
    }
    if certified_rows is not None:
        certificates = {row["idx"]: row for row in certified_rows}
        summary["certified_accuracy"] = summarize(list(certificates.values()), radii)["certified_accuracy"]
        empirical, certified = summary["empirical_accuracy"], summary["certified_accuracy"]
        summary["gap"] = {k: empirical[k] - certified[k] for k in empirical}
        summary["certificate_violations"] = {
            f"{r:g}": sum(
                1 for row in by_radius[r]
                if certificates[row["idx"]]["correct"] and certificates[row["idx"]]["radius"] > r
                and row["predict"] not in (row["label"], ABSTAIN)
            )
            for r in radii
        }
    return summary


def robustness_markdown(summary: dict) -> str:
    """A Markdown table of ``summarize_attack``'s figures: per radius, empirical robust accuracy (%), and
    where known the certified accuracy (%) of the same examples and the gap (percentage points)."""
    certified = "certified_accuracy" in summary
    header = "| radius | empirical (SmoothAdv + PREDICT) | abstain |" + (" certified | gap |" if certified else "")
    lines = [header, "|---|---|---|" + ("---|---|" if certified else "")]
    for r in summary["radii"]:
        key = f"{r:g}"
        empirical, abstain = 100 * summary["empirical_accuracy"][key], 100 * summary["abstain_rate"][key]
        line = f"| {key} | {empirical:.1f}% | {abstain:.1f}% |"
        if certified:
            line += f" {100 * summary['certified_accuracy'][key]:.1f}% | {100 * summary['gap'][key]:+.1f} |"
        lines.append(line)
    return "\n".join(lines)


def plot_robustness(summary: dict, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Plot empirical robust accuracy (and, where the summary has it, certified accuracy) against the l2
    radius ([0, 1] pixels) from a ``summarize_attack`` summary, into one figure written atomically to
    ``path`` (.png, .pdf, .svg)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    radii = summary["radii"]
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    curves = [
        ("empirical_accuracy", "o-", "empirical (SmoothAdv + PREDICT)"),
        ("certified_accuracy", "s--", "certified (CERTIFY)"),
    ]
    for key, style, label in curves:
        if key in summary:
            axes.plot(radii, [summary[key][f"{r:g}"] for r in radii], style, label=label)
    axes.set(xlim=(0, max(radii) or 1.0), ylim=(0, 1.02), xlabel="l2 radius (pixels in [0, 1])", ylabel="accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    if title is not None:
        axes.set_title(title)
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=extension, dpi=150)
