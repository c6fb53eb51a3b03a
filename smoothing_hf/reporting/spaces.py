"""The space of a run's radii (``smoothing_hf.space``: l2 in [0, 1] pixels of one image size) as the report shows
it. Resizing changes l2 distances, so the tables rank runs only against runs of the same space, and a table or
plot whose runs live in several spaces says so."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

UNKNOWN_SPACE = "unknown"
"""The space shown for a run that records none (an older output folder, another tool's TSV); such runs count as
one space of their own."""

NOT_COMPARABLE = (
    "Radii of different spaces are not comparable (resizing changes l2 distances): the best value is marked "
    "among the runs of one space only."
)


def recorded_space(summary: Mapping) -> str | None:
    """The space a ``summary.json`` records (its ``space``, else its settings' ``space``); None where neither
    does, as in the summaries of older runs."""
    settings = summary.get("settings")
    space = summary.get("space") or (settings.get("space") if isinstance(settings, Mapping) else None)
    return space if isinstance(space, str) and space else None


def shown_space(space: str | None) -> str:
    return space or UNKNOWN_SPACE


def several_spaces(spaces: Sequence[str | None]) -> bool:
    """Whether runs of these spaces (None: not recorded) live in more than one space."""
    return len({shown_space(space) for space in spaces}) > 1


def best_within_space(values: Sequence[float | None], spaces: Sequence[str | None]) -> list[bool]:
    """For each value, whether it is the largest known value among those of its space, where they differ (a
    column of equal values, or a space of one run, marks none)."""
    groups: dict[str, set] = {}
    for value, space in zip(values, spaces):
        if value is not None:
            groups.setdefault(shown_space(space), set()).add(value)
    best = {space: max(known) for space, known in groups.items() if len(known) > 1}
    return [value is not None and value == best.get(shown_space(space)) for value, space in zip(values, spaces)]


def legend_labels(names: Sequence[str], spaces: Sequence[str | None]) -> list[str]:
    """Curve labels: the names, each followed by its space when the curves live in more than one."""
    if not several_spaces(spaces):
        return list(names)
    return [f"{name} ({shown_space(space)})" for name, space in zip(names, spaces)]
