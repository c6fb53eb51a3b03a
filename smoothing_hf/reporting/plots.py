"""Plots of certified accuracy against l2 radius (pixels in [0, 1]): exact step curves, one figure per call.

matplotlib is imported inside ``plot_certified_accuracy`` only: it is optional (``pip install
smoothing_hf[examples]``), and the tables need none of it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..checks import is_number
from ..files import atomic_path
from .metrics import certified_accuracy_curve
from .runs import Run
from .spaces import legend_labels
from .validation import read_checked_rows


def plot_certified_accuracy(
    curves: Mapping[str, Sequence[dict] | str | os.PathLike],
    path: str | os.PathLike,
    *,
    max_radius: float | None = None,
    title: str | None = None,
) -> None:
    """Plot certified accuracy (y, 0 to 1) against l2 radius (x, [0, 1] pixel space) as exact step curves,
    one per entry of ``curves`` (legend label -> rows or the path of a ``certify.tsv``, read with
    ``read_checked_rows``), into one figure
    written atomically to ``path``; its extension picks the format (.png; .pdf and .svg work too).

    ``max_radius`` ends the x axis (default: the first multiple of 0.25 past the largest radius)."""
    try:  # matplotlib is an optional dependency; no pyplot: no global backend or figure state is touched
        from matplotlib.backend_bases import FigureCanvasBase
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plot_certified_accuracy needs matplotlib: pip install 'smoothing_hf[examples]'") from error

    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if extension not in FigureCanvasBase.get_supported_filetypes():
        raise ValueError(
            f"`path` must end with an image extension matplotlib writes, e.g. .png, got {os.fspath(path)!r} "
            f"(supported: {sorted(FigureCanvasBase.get_supported_filetypes())})"
        )
    if not curves:
        raise ValueError("`curves` must map at least one label to rows or a certify.tsv path")
    steps = {
        label: certified_accuracy_curve(
            read_checked_rows(rows) if isinstance(rows, (str, os.PathLike)) else rows, f"curves[{label!r}]"
        )
        for label, rows in curves.items()
    }
    if max_radius is None:
        max_radius = 0.25 * (math.floor(max(radii[-1] for radii, _ in steps.values()) / 0.25) + 1)
    elif not is_number(max_radius) or not max_radius > 0:
        raise ValueError(
            f"`max_radius` must be a positive finite number (l2, [0, 1] pixels) or None, got {max_radius!r}"
        )

    many = len(steps) > 6  # then the legend goes beside the axes, where it hides no curve
    figure = Figure(figsize=(7.5 if many else 6, 4), layout="constrained")
    axes = figure.subplots()
    for (label, (radii, accuracy)), style in zip(steps.items(), curve_styles(len(steps))):
        shown = radii <= max_radius  # then the step on to max_radius: f(max_radius), 0 past the last radius
        end = accuracy[np.searchsorted(radii, max_radius, side="left")] if max_radius <= radii[-1] else 0.0
        axes.step(
            np.append(radii[shown], max_radius),
            np.append(accuracy[shown], end),
            where="pre",
            label=label,
            clip_on=False,
            **style,
        )
    axes.set(xlim=(0, max_radius), ylim=(0, 1), xlabel="l2 radius (pixels in [0, 1])", ylabel="certified accuracy")
    axes.grid(alpha=0.3)
    axes.legend(**({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": "small"} if many else {}))
    if title is not None:
        axes.set_title(title)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=extension, dpi=150)


LINE_STYLES = ("-", "--", ":", "-.")


def curve_styles(count: int) -> list[dict]:
    """Matplotlib ``color`` and ``linestyle`` of ``count`` curves: the 10 colours of the default cycle, then
    the same colours dashed, dotted and dash-dotted, so up to 40 curves are told apart."""
    return [{"color": f"C{i % 10}", "linestyle": LINE_STYLES[(i // 10) % len(LINE_STYLES)]} for i in range(count)]


def plot_runs(
    runs: Sequence[Run], path: str | os.PathLike, *, max_radius: float | None = None, title: str | None = None
) -> None:
    """``plot_certified_accuracy`` of every run with examples, labelled by name (and by space, when the runs'
    radii live in several: ``spaces.legend_labels``), into one figure at ``path``; a run of 0 examples has no
    curve (a ``UserWarning`` says so); no run with examples is a ValueError."""
    for run in runs:
        if not run.rows:
            message = f"run {run.name!r} has no examples ({run.tsv}): it has no curve in {os.fspath(path)}"
            warnings.warn(message, UserWarning, stacklevel=2)
    shown = [run for run in runs if run.rows]
    labels = legend_labels([run.name for run in shown], [run.space for run in shown])
    curves = {label: run.rows for label, run in zip(labels, shown)}
    if not curves:
        raise ValueError(f"no run has examples to plot into {os.fspath(path)}: every TSV holds a header only")
    plot_certified_accuracy(curves, path, max_radius=max_radius, title=title)
