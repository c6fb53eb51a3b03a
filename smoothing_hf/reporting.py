"""Figures from certification results: certified accuracy at radii, ACR, abstain rate, curves, comparisons.

Reads and writes plain rows (Cohen's TSV columns), imports no model code, so it also reads other tools'
``certify`` outputs (Cohen et al.'s own ``certify.py`` files included). Radii are l2 distances in [0, 1]
pixel space; certified accuracies are fractions in [0, 1] (percentages in the comparison tables).
Plots need matplotlib (``pip install smoothing_hf[examples]``); everything else needs numpy only.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence

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
    """Write rows with Cohen's columns, tab-separated, atomically (temporary file renamed into place).

    Radius in [0, 1] pixel-space l2 units, written exactly (``repr``); time in seconds."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [row["idx"], row["label"], row["predict"], repr(float(row["radius"])), int(row["correct"]), f"{row['time']:.4f}"]
            )


def read_tsv(path: str | os.PathLike) -> list[dict]:
    """Rows of a certification TSV: idx, label, predict, correct as ints; radius, time as floats.

    ``time`` is in seconds; Cohen et al.'s ``H:MM:SS.ffffff`` form is read too. Extra columns are ignored."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = set(TSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a certification TSV: missing columns {sorted(missing)}, needs {list(TSV_COLUMNS)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append({
                    "idx": int(r["idx"]), "label": int(r["label"]), "predict": int(r["predict"]),
                    "radius": float(r["radius"]), "correct": int(r["correct"]), "time": _seconds(r["time"]),
                })
            except (TypeError, ValueError) as error:  # TypeError: a short line leaves a column None
                raise ValueError(f"{path}, line {line}: not a certification row ({error})") from None
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

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for label, (radii, accuracy) in steps.items():
        shown = radii <= max_radius  # then the step on to max_radius: f(max_radius), 0 past the last radius
        end = accuracy[np.searchsorted(radii, max_radius, side="left")] if max_radius <= radii[-1] else 0.0
        axes.step(np.append(radii[shown], max_radius), np.append(accuracy[shown], end), where="pre", label=label, clip_on=False)
    axes.set(xlim=(0, max_radius), ylim=(0, 1), xlabel="l2 radius (pixels in [0, 1])", ylabel="certified accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    if title is not None:
        axes.set_title(title)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=extension, dpi=150)


# ---------------------------------------------------------------------------------------------- comparison


def compare_runs(
    folders: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike], radii: Sequence[float] = COMPARISON_RADII
) -> list[dict]:
    """One row per certification output folder (several sigmas or methods): the ``summarize`` figures of
    its ``certify.tsv`` at ``radii`` (l2, [0, 1] pixels), with ``name``, ``folder`` and the ``sigma`` from
    its ``summary.json`` settings (None where absent).

    ``folders`` maps run names to folders, or lists folders (each then named by its path)."""
    if isinstance(folders, (str, os.PathLike)) or not folders:
        raise ValueError(f"`folders` must map run names to certification output folders or list them, got {folders!r}")
    named = folders.items() if isinstance(folders, Mapping) else [(os.fspath(folder), folder) for folder in folders]
    rows = []
    for name, folder in named:
        tsv = os.path.join(folder, CERTIFY_TSV)
        if not os.path.isfile(tsv):
            raise ValueError(
                f"run {name!r}: {tsv} does not exist; `folders` must hold certification output folders with a {CERTIFY_TSV}"
            )
        settings = _read_json(os.path.join(folder, SUMMARY_JSON)).get("settings") or {}
        summary = summarize(read_tsv(tsv), radii)
        rows.append({"name": str(name), "folder": os.fspath(folder), "sigma": settings.get("sigma"), **summary})
    return rows


def comparison_markdown(rows: Sequence[dict], radii: Sequence[float] = COMPARISON_RADII) -> str:
    """A Markdown table of ``compare_runs`` rows: sigma, certified accuracy (%) at each of ``radii`` and ACR;
    ``*`` follows the best value of each column (all tied ones; none where every run has the same value)."""
    names, columns = _comparison_columns(rows, radii, "comparison_markdown")
    header = ["run", "sigma", *(f"r = {r:g}" for r in radii), "ACR"]
    cells = [[name.replace("|", "\\|"), sigma] for name, sigma in names]
    for column in columns:
        for line, (text, best) in zip(cells, column):
            line.append(text + ("*" if best else ""))
    lines = [header, ["---"] * len(header), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def comparison_latex(rows: Sequence[dict], radii: Sequence[float] = COMPARISON_RADII) -> str:
    """A LaTeX ``tabular`` (booktabs rules) of ``compare_runs`` rows: sigma, certified accuracy (%) at each
    of ``radii`` and ACR; the best value of each column is set in ``\\textbf{}`` (as in ``comparison_markdown``)."""
    names, columns = _comparison_columns(rows, radii, "comparison_latex")
    cells = [[_latex_escape(name), sigma.replace("-", "--")] for name, sigma in names]
    for column in columns:
        for line, (text, best) in zip(cells, column):
            line.append(f"\\textbf{{{text}}}" if best else text)
    header = ["Run", "$\\sigma$", *(f"$r = {r:g}$" for r in radii), "ACR"]
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


def write_report(
    runs: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    radii: Sequence[float] = COMPARISON_RADII,
    max_radius: float | None = None,
) -> str:
    """Compare certification output folders (``runs`` as in ``compare_runs``) and write ``report.md``,
    ``report.tex`` and ``certified_accuracy.png`` (all curves) into ``output_dir``, each atomically.
    Returns the Markdown table."""
    rows = compare_runs(runs, radii)
    markdown = comparison_markdown(rows, radii)
    os.makedirs(output_dir, exist_ok=True)
    plot_certified_accuracy(
        {row["name"]: os.path.join(row["folder"], CERTIFY_TSV) for row in rows},
        os.path.join(output_dir, REPORT_FILES[2]), max_radius=max_radius,
    )
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
) -> tuple[list[tuple[str, str]], list[list[tuple[str, bool]]]]:
    """(name, sigma text) per row, and per column (each radius, then ACR) the cell texts with best flags."""
    if not rows:
        raise ValueError(f"`rows` of {name} must hold at least one compare_runs row")
    for row in rows:
        _check_summarized(row["certified_accuracy"], radii, f"rows ({row['name']!r})")
    names = [(row["name"], "-" if row.get("sigma") is None else f"{row['sigma']:g}") for row in rows]
    columns = [[round(100 * row["certified_accuracy"][f"{r:g}"], 1) for row in rows] for r in radii]
    columns.append([round(row["acr"], 3) for row in rows])
    formats = ["{:.1f}"] * len(radii) + ["{:.3f}"]
    return names, [
        [(fmt.format(value), len(set(values)) > 1 and value == max(values)) for value in values]
        for fmt, values in zip(formats, columns)
    ]


def _latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(character, character) for character in text)


def _seconds(text: str) -> float:
    """Seconds from ``"1.5"`` or Cohen et al.'s ``str(timedelta)`` form ``"0:00:01.500000"``."""
    hours, _, rest = text.rpartition(":")
    if not hours:
        return float(text)
    hours, _, minutes = hours.rpartition(":")
    return 3600 * float(hours or 0) + 60 * float(minutes) + float(rest)


def _read_json(path: str) -> dict:
    """The JSON object at ``path``, or {} where there is none."""
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
