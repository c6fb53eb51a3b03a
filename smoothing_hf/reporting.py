"""Figures from certification results: certified accuracy at radii, ACR, abstain rate, curves, comparisons.

Reads and writes plain rows (Cohen's TSV columns), imports no model code, so it also reads other tools'
``certify`` outputs (Cohen et al.'s own ``certify.py`` files included). Radii are l2 distances in [0, 1]
pixel space; certified accuracies are fractions in [0, 1] (percentages in the comparison tables).
``python -m smoothing_hf.report`` (``report.py``) is the command line over ``read_runs`` and the tables.
Plots need matplotlib (``pip install smoothing_hf[examples]``); everything else needs numpy only.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .files import atomic_path, write_text

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
COMPARISON_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
CERTIFY_TSV = "certify.tsv"
SUMMARY_JSON = "summary.json"
REPORT_FILES = ("report.md", "report.tex", "certified_accuracy.png")


# ---------------------------------------------------------------------------------------------- rows


def write_tsv(rows: Iterable[dict], path: str | os.PathLike) -> None:
    """Write rows with Cohen's columns, then any other columns of the first row (``samples``, say), tab-separated,
    atomically (temporary file renamed into place).

    Radius in [0, 1] pixel-space l2 units, written exactly (``repr``); time in seconds."""
    rows = list(rows)
    extra = [column for column in (rows[0] if rows else ()) if column not in TSV_COLUMNS]
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow([*TSV_COLUMNS, *extra])
        for row in rows:
            radius, correct, seconds = repr(float(row["radius"])), int(row["correct"]), f"{row['time']:.4f}"
            extras = [_format(row[column]) for column in extra]
            writer.writerow([row["idx"], row["label"], row["predict"], radius, correct, seconds, *extras])


def read_tsv(path: str | os.PathLike) -> list[dict]:
    """Rows of a certification TSV with Cohen et al.'s columns (idx, label, predict, radius, correct, time),
    ours or another tool's: idx, label, predict, correct (0 or 1) as ints; radius (l2, [0, 1] pixels, >= 0)
    and time as floats. ``time`` is in seconds, ``15.4``, or Cohen's ``str(timedelta)`` form
    ``0:02:30.437045``. Other columns (``samples``, say) are kept: numbers as int or float, empty as None,
    anything else as text.

    A header with no rows is a run of 0 examples: ``[]``. A last line without a newline at its end is what a
    write cut short by a crash leaves (too few fields, or a number cut in two): it is dropped with a
    ``UserWarning`` naming file and line. Any other line that is not a row (too few or too many fields, a
    value that is not a number, a radius < 0, correct not 0 or 1) is a ValueError naming file and line;
    so are an empty file and a header missing one of Cohen's columns."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    if not lines:  # one line and no newline: the header alone (a torn header misses columns below)
        lines, torn = [torn], ""
    header = [name.strip() for name in lines[0].rstrip("\r").split("\t")]
    if header == [""]:
        raise ValueError(f"{path} is empty: a certification TSV starts with a header of columns {list(TSV_COLUMNS)}")
    missing = [column for column in TSV_COLUMNS if column not in header]
    if missing:
        raise ValueError(f"{path} is not a certification TSV: missing columns {missing}, needs {list(TSV_COLUMNS)}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ValueError(f"{path}: columns {repeated} appear more than once in the header")
    rows = [_parse_row(line, header, path, number) for number, line in enumerate(lines[1:], start=2) if line.strip()]
    if torn.strip():
        warnings.warn(
            f"{path}, line {len(lines) + 1}: no newline at its end, as a write cut short by a crash leaves it; "
            f"the line is ignored ({torn!r}). End the file with a newline if the line is complete.",
            UserWarning, stacklevel=2,
        )
    return rows


def certified_accuracy_curve(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The exact certified accuracy curve: radii (0 and every distinct radius in ``rows``, ascending, in
    [0, 1] pixel-space l2 units) and, at each radius r, the fraction of rows with correct == 1 and
    radius >= r. Between two consecutive radii r_k < r < r_(k+1) the accuracy is that at r_(k+1) (a step
    drawn with ``where="pre"``); beyond the last radius it is 0."""
    return _curve(rows, "rows")


def summarize(rows: Sequence[dict], radii: Sequence[float] = DEFAULT_RADII) -> dict:
    """Certified accuracy at each radius (fraction of examples certified correctly with radius >= r, keyed
    by ``f"{r:g}"``), the average certified radius (ACR: mean of radius * correct, in the radii's [0, 1]
    pixel-space l2 units), the abstain rate (predict == -1), and the smoothed classifier's clean accuracy
    (certified accuracy at radius 0)."""
    radius, correct, abstained = _columns(rows, "rows")
    _check_radii(radii, "radii")
    return {
        "num_examples": len(rows),
        "certified_accuracy": {f"{r:g}": float(np.mean(correct & (radius >= r))) for r in radii},
        "acr": float(np.mean(radius * correct)),
        "abstain_rate": float(np.mean(abstained)),
        "clean_accuracy": float(np.mean(correct)),
    }


def format_summary(summary: dict, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75)) -> str:
    """A short Markdown table of certified accuracy (%) at ``radii`` with ACR and abstain rate."""
    _check_summarized(summary["certified_accuracy"], radii, "summary")
    header = "| " + " | ".join(f"r = {r:g}" for r in radii) + " | ACR | abstain |"
    rule = "|" + "---|" * (len(radii) + 2)
    values = [f"{100 * summary['certified_accuracy'][f'{r:g}']:.1f}%" for r in radii]
    line = "| " + " | ".join(values) + f" | {summary['acr']:.3f} | {100 * summary['abstain_rate']:.1f}% |"
    return "\n".join([header, rule, line])


def certified_accuracy_metric_path() -> str:
    """The folder of the ``evaluate`` metric that computes the same figures as ``summarize`` from
    predictions, radii and references: ``evaluate.load(certified_accuracy_metric_path())`` (offline)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "certified_accuracy")


# ---------------------------------------------------------------------------------------------- plot


def plot_certified_accuracy(
    curves: Mapping[str, Sequence[dict] | str | os.PathLike],
    path: str | os.PathLike,
    *,
    max_radius: float | None = None,
    title: str | None = None,
) -> None:
    """Plot certified accuracy (y, 0 to 1) against l2 radius (x, [0, 1] pixel space) as exact step curves,
    one per entry of ``curves`` (legend label -> rows or the path of a ``certify.tsv``), into one figure
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
        label: _curve(read_tsv(rows) if isinstance(rows, (str, os.PathLike)) else rows, f"curves[{label!r}]")
        for label, rows in curves.items()
    }
    if max_radius is None:
        max_radius = 0.25 * (math.floor(max(radii[-1] for radii, _ in steps.values()) / 0.25) + 1)
    elif not _is_number(max_radius) or not max_radius > 0:
        raise ValueError(f"`max_radius` must be a positive finite number (l2, [0, 1] pixels) or None, got {max_radius!r}")

    many = len(steps) > 6  # then the legend goes beside the axes, where it hides no curve
    figure = Figure(figsize=(7.5 if many else 6, 4), layout="constrained")
    axes = figure.subplots()
    for (label, (radii, accuracy)), style in zip(steps.items(), curve_styles(len(steps))):
        shown = radii <= max_radius  # then the step on to max_radius: f(max_radius), 0 past the last radius
        end = accuracy[np.searchsorted(radii, max_radius, side="left")] if max_radius <= radii[-1] else 0.0
        axes.step(np.append(radii[shown], max_radius), np.append(accuracy[shown], end), where="pre", label=label,
                  clip_on=False, **style)
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


# ---------------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Run:
    """One certification run: its ``name`` (the table's label), the ``path`` it was given as, the ``tsv`` read,
    its noise level ``sigma`` (l2, [0, 1] pixels; None where unknown: raw TSVs carry none) and its ``rows``
    (``read_tsv``; empty for a run of 0 examples)."""

    name: str
    path: str
    tsv: str
    sigma: float | None
    rows: list[dict]


def read_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """The run at ``path``: a certification output folder (its ``certify.tsv``; sigma from its ``summary.json``)
    or a TSV file with Cohen's columns (``read_tsv``; sigma from a ``summary.json`` beside it only when the file
    is a ``certify.tsv``). ``name`` defaults to ``run_label(path)``."""
    name = run_label(path) if name is None else name
    if os.path.isdir(path):
        tsv = os.path.join(path, CERTIFY_TSV)
        if not os.path.isfile(tsv):
            raise ValueError(
                f"run {name!r}: {tsv} does not exist; a folder must be a certification output folder with a {CERTIFY_TSV}"
            )
    elif os.path.isfile(path):
        tsv = os.fspath(path)
    else:
        raise ValueError(
            f"run {name!r}: {os.fspath(path)} does not exist; each path must be a certification output folder or a TSV file"
        )
    sigma = None
    if os.path.basename(tsv) == CERTIFY_TSV:
        summary = _read_json(os.path.join(os.path.dirname(tsv), SUMMARY_JSON))
        settings = summary.get("settings") if isinstance(summary, dict) else None
        sigma = settings.get("sigma") if isinstance(settings, dict) and _is_number(settings.get("sigma")) else None
    return Run(name=str(name), path=os.fspath(path), tsv=tsv, sigma=sigma, rows=read_tsv(tsv))


def run_label(path: str | os.PathLike) -> str:
    """A run's default label: a folder's name, or a file's name without its extension (a numeric suffix is no
    extension: Cohen's ``noise_0.25/test/sigma_0.25`` is ``sigma_0.25``)."""
    base = os.path.basename(os.path.abspath(path))
    stem, extension = os.path.splitext(base)
    return stem if os.path.isfile(path) and re.search("[A-Za-z]", extension) else base


def read_runs(
    runs: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike], labels: Sequence[str] | None = None
) -> list[Run]:
    """The runs at several paths (``read_run``), in order: ``runs`` maps labels to paths, or lists paths, each
    labelled by the same place in ``labels`` or else by ``run_label``. Labels must be unique."""
    if isinstance(runs, (str, os.PathLike)) or not runs:
        raise ValueError(
            f"`runs` must map labels to paths or list paths (certification output folders or TSV files), got {runs!r}"
        )
    if isinstance(runs, Mapping):
        if labels is not None:
            raise ValueError("`labels` label the paths of a list of `runs`; a mapping's keys label them already")
        names, paths = [str(name) for name in runs], list(runs.values())
    else:
        paths = list(runs)
        if labels is None:
            names = [run_label(path) for path in paths]
        elif isinstance(labels, str) or len(labels) != len(paths):
            count = 1 if isinstance(labels, str) else len(labels)
            raise ValueError(f"`labels` must give one label per path: got {count} labels for {len(paths)} paths")
        else:
            names = [str(label) for label in labels]
    repeated = {name: [os.fspath(p) for n, p in zip(names, paths) if n == name] for name in names if names.count(name) > 1}
    if repeated:
        clash = "; ".join(f"{name!r} labels {', '.join(shared)}" for name, shared in repeated.items())
        defaulted = labels is None and not isinstance(runs, Mapping)
        hint = "label each run with `labels` (--labels on the command line)" if defaulted else "give each run its own label"
        raise ValueError(f"run labels must be unique: {clash}; {hint}")
    return [read_run(path, name) for name, path in zip(names, paths)]


def summarize_run(run: Run, radii: Sequence[float] = COMPARISON_RADII) -> dict:
    """A comparison row for ``run``: ``name``, ``path``, ``tsv``, ``sigma``, the ``summarize`` figures at ``radii``
    (l2, [0, 1] pixels) and ``mean_samples``, the mean of a ``samples`` column (samples drawn per example)
    where every row has one, else None. A run of 0 examples has ``num_examples`` 0 and every figure None
    (undefined, shown as a dash in the tables), not a division by zero."""
    _check_radii(radii, "radii")
    figures = {"name": run.name, "path": run.path, "tsv": run.tsv, "sigma": run.sigma}
    if not run.rows:
        undefined = dict.fromkeys(("acr", "abstain_rate", "clean_accuracy", "mean_samples"))
        return {**figures, "num_examples": 0, "certified_accuracy": dict.fromkeys(f"{r:g}" for r in radii), **undefined}
    samples = [row.get("samples") for row in run.rows]
    mean_samples = float(np.mean(samples)) if all(_is_number(value) for value in samples) else None
    return {**figures, **summarize(run.rows, radii), "mean_samples": mean_samples}


def compare_runs(
    runs: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    radii: Sequence[float] = COMPARISON_RADII,
    *,
    labels: Sequence[str] | None = None,
) -> list[dict]:
    """One ``summarize_run`` row per run (several sigmas or methods, ours or other tools'), in order, at
    ``radii`` (l2, [0, 1] pixels); ``runs`` and ``labels`` as in ``read_runs``: paths of certification output
    folders or TSV files with Cohen's columns."""
    return [summarize_run(run, radii) for run in read_runs(runs, labels)]


def comparison_markdown(rows: Sequence[dict], radii: Sequence[float] = COMPARISON_RADII) -> str:
    """A Markdown table of ``compare_runs`` rows: sigma (where any run has one), examples n, certified accuracy
    (%) at each of ``radii``, ACR, and mean samples per image (where any run has them); ``*`` follows the best
    value of each accuracy and ACR column (all tied ones; none where every run has the same value); ``—``
    stands for a value unknown (sigma of a raw TSV) or undefined (a run of 0 examples)."""
    columns = _comparison_columns(rows, radii, "comparison_markdown")
    header = ["run", *(markdown for markdown, _, _ in columns)]
    cells = [[row["name"].replace("|", "\\|")] for row in rows]
    for _, _, column in columns:
        for line, (text, best) in zip(cells, column):
            line.append("—" if text is None else text + ("*" if best else ""))
    lines = [header, ["---"] * len(header), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def comparison_latex(rows: Sequence[dict], radii: Sequence[float] = COMPARISON_RADII) -> str:
    """A LaTeX ``tabular`` (booktabs rules) of ``compare_runs`` rows, the columns of ``comparison_markdown``;
    the best value of each accuracy and ACR column is set in ``\\textbf{}``, unknown or undefined ones are ``---``."""
    columns = _comparison_columns(rows, radii, "comparison_latex")
    cells = [[_latex_escape(row["name"])] for row in rows]
    for _, _, column in columns:
        for line, (text, best) in zip(cells, column):
            line.append("---" if text is None else f"\\textbf{{{text}}}" if best else text)
    header = ["Run", *(latex for _, latex, _ in columns)]
    return "\n".join([
        "% certified accuracy (%) at l2 radius r (pixels in [0, 1]); needs \\usepackage{booktabs}",
        "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
        *(" & ".join(line) + " \\\\" for line in cells),
        "\\bottomrule",
        "\\end{tabular}",
    ])


def plot_runs(
    runs: Sequence[Run], path: str | os.PathLike, *, max_radius: float | None = None, title: str | None = None
) -> None:
    """``plot_certified_accuracy`` of every run with examples, labelled by name, into one figure at ``path``;
    a run of 0 examples has no curve (a ``UserWarning`` says so); no run with examples is a ValueError."""
    for run in runs:
        if not run.rows:
            message = f"run {run.name!r} has no examples ({run.tsv}): it has no curve in {os.fspath(path)}"
            warnings.warn(message, UserWarning, stacklevel=2)
    curves = {run.name: run.rows for run in runs if run.rows}
    if not curves:
        raise ValueError(f"no run has examples to plot into {os.fspath(path)}: every TSV holds a header only")
    plot_certified_accuracy(curves, path, max_radius=max_radius, title=title)


def write_report(
    runs: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    radii: Sequence[float] = COMPARISON_RADII,
    max_radius: float | None = None,
) -> str:
    """Compare certification runs (``runs`` as in ``read_runs``: output folders or TSV files) and write
    ``report.md``, ``report.tex`` and ``certified_accuracy.png`` (all curves) into ``output_dir``, each
    atomically. Returns the Markdown table."""
    loaded = read_runs(runs)
    rows = [summarize_run(run, radii) for run in loaded]
    markdown = comparison_markdown(rows, radii)
    os.makedirs(output_dir, exist_ok=True)
    plot_runs(loaded, os.path.join(output_dir, REPORT_FILES[2]), max_radius=max_radius)
    write_text(
        "# Certified accuracy\n\n"
        "Certified accuracy (%) at l2 radius r (pixels in [0, 1]) and average certified radius (ACR) of each run; "
        "`*` marks the best value per column.\n\n"
        f"{markdown}\n\n![certified accuracy against radius]({REPORT_FILES[2]})\n",
        os.path.join(output_dir, REPORT_FILES[0]),
    )
    write_text(comparison_latex(rows, radii) + "\n", os.path.join(output_dir, REPORT_FILES[1]))
    return markdown


# ---------------------------------------------------------------------------------------------- helpers


def _columns(rows: Sequence[dict], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """radius (float), correct (bool) and abstained (predict == -1) of non-empty ``rows``."""
    if len(rows) == 0:
        raise ValueError(f"`{name}` holds no certification rows")
    missing = sorted({"radius", "correct", "predict"} - set(rows[0]))
    if missing:
        raise ValueError(f"`{name}` must be rows with Cohen's columns {list(TSV_COLUMNS)}; missing {missing}")
    radius = np.array([r["radius"] for r in rows], dtype=float)
    correct = np.array([r["correct"] for r in rows], dtype=bool)
    abstained = np.array([r["predict"] == -1 for r in rows])
    return radius, correct, abstained


def _curve(rows: Sequence[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    radius, correct, _ = _columns(rows, name)
    radii = np.unique(np.concatenate([[0.0], radius]))
    certified = np.sort(radius[correct])
    accuracy = (len(certified) - np.searchsorted(certified, radii, side="left")) / len(rows)
    return radii, accuracy


def _check_radii(radii: Sequence[float], name: str) -> None:
    if len(radii) == 0 or not all(_is_number(r) and r >= 0 for r in radii):
        raise ValueError(f"`{name}` must be a non-empty sequence of finite radii >= 0 (l2, [0, 1] pixels), got {radii!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_summarized(certified_accuracy: dict, radii: Sequence[float], name: str) -> None:
    absent = [r for r in radii if f"{r:g}" not in certified_accuracy]
    if absent:
        raise ValueError(f"radii {absent} are not in `{name}`, which has certified accuracy at radii {list(certified_accuracy)}")


def _comparison_columns(
    rows: Sequence[dict], radii: Sequence[float], name: str
) -> list[tuple[str, str, list[tuple[str | None, bool]]]]:
    """The columns after the run's name, each (Markdown title, LaTeX title, cells); a cell is (text, best),
    text None where the value is unknown or undefined. Best: the largest rounded value of an accuracy or ACR
    column where the runs' values differ."""
    if not rows:
        raise ValueError(f"`rows` of {name} must hold at least one compare_runs row")
    for row in rows:
        _check_summarized(row["certified_accuracy"], radii, f"rows ({row['name']!r})")

    def cells(values: list, text: str, ranked: bool = False) -> list[tuple[str | None, bool]]:
        known = {value for value in values if value is not None}
        best = max(known) if ranked and len(known) > 1 else None
        return [(None if value is None else text.format(value), value is not None and value == best) for value in values]

    def rounded(values: list, scale: float, digits: int) -> list:
        return [None if value is None else round(scale * value, digits) for value in values]

    columns = []
    if any(row.get("sigma") is not None for row in rows):
        columns.append(("sigma", "$\\sigma$", cells([row.get("sigma") for row in rows], "{:g}")))
    columns.append(("n", "$n$", cells([row["num_examples"] for row in rows], "{}")))
    for r in radii:
        accuracy = rounded([row["certified_accuracy"][f"{r:g}"] for row in rows], 100, 1)
        columns.append((f"r = {r:g}", f"$r = {r:g}$", cells(accuracy, "{:.1f}", ranked=True)))
    columns.append(("ACR", "ACR", cells(rounded([row["acr"] for row in rows], 1, 3), "{:.3f}", ranked=True)))
    if any(row.get("mean_samples") is not None for row in rows):
        samples = cells([row.get("mean_samples") for row in rows], "{:.0f}")
        columns.append(("samples / image", "samples / image", samples))
    return columns


def _latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(character, character) for character in text)


_TIMEDELTA = re.compile(r"(?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d*)?)")


def _seconds(text: str) -> float:
    """Seconds from ``"15.4"`` or Cohen et al.'s ``str(timedelta)`` form ``"0:02:30.437045"`` (``"1 day, 0:00:01"``)."""
    match = _TIMEDELTA.fullmatch(text.strip())
    if match is None:
        return float(text)
    days, hours, minutes, seconds = match.groups()
    return 86400 * int(days or 0) + 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def _parse_row(line: str, header: list[str], path: str | os.PathLike, number: int) -> dict:
    """One complete line of a certification TSV as a row (``read_tsv``); ValueError naming file and line."""
    fields = line.rstrip("\r").split("\t")
    if len(fields) != len(header):
        raise ValueError(f"{path}, line {number}: {len(fields)} tab-separated fields, the header has {len(header)}: {line!r}")
    values = dict(zip(header, fields))
    try:
        row = {
            "idx": int(values["idx"]), "label": int(values["label"]), "predict": int(values["predict"]),
            "radius": float(values["radius"]), "correct": int(values["correct"]), "time": _seconds(values["time"]),
        }
    except ValueError as error:
        raise ValueError(f"{path}, line {number}: not a certification row ({error})") from None
    if not (math.isfinite(row["radius"]) and row["radius"] >= 0):
        raise ValueError(f"{path}, line {number}: radius must be a finite l2 distance >= 0, got {values['radius']!r}")
    if row["correct"] not in (0, 1):
        raise ValueError(f"{path}, line {number}: correct must be 0 or 1, got {values['correct']!r}")
    row.update((column, _value(values[column])) for column in header if column not in TSV_COLUMNS)
    return row


def _format(value: object) -> str:
    """An extra column's value as written: floats exactly (``repr``), None as empty."""
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _value(text: str) -> int | float | str | None:
    """An extra column's value: an int or float where it is a number, None where empty, else the text."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text or None


def _read_json(path: str) -> dict:
    """The JSON object at ``path``, or {} where there is none."""
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
