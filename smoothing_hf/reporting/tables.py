"""Comparison tables of certification runs, Markdown and LaTeX, and the report folder that holds both."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..files import write_text
from .metrics import COMPARISON_RADII, check_summarized
from .plots import plot_runs
from .runs import read_runs, summarize_run
from .spaces import NOT_COMPARABLE, best_within_space, several_spaces, shown_space

REPORT_FILES = ("report.md", "report.tex", "certified_accuracy.png")


def comparison_markdown(rows: Sequence[dict], radii: Sequence[float] = COMPARISON_RADII) -> str:
    """A Markdown table of ``compare_runs`` rows: the space of the radii (where any run records one; ``unknown``
    where a run does not), sigma (where any run has one), examples n, certified accuracy (%) at each of
    ``radii``, ACR, and mean samples per image (where any run has them); ``*`` follows the best value of each
    accuracy and ACR column among the runs of one space (all tied ones; none where they all have the same
    value); ``—`` stands for a value unknown (sigma of a raw TSV) or undefined (a run of 0 examples). Runs of
    several spaces get a note under the table: their radii are not comparable."""
    columns = _comparison_columns(rows, radii, "comparison_markdown")
    header = ["run", *(markdown for markdown, _, _ in columns)]
    cells = [[row["name"].replace("|", "\\|")] for row in rows]
    for _, _, column in columns:
        for line, (text, best) in zip(cells, column):
            line.append("—" if text is None else text.replace("|", "\\|") + ("*" if best else ""))
    lines = [header, ["---"] * len(header), *cells]
    table = "\n".join("| " + " | ".join(line) + " |" for line in lines)
    return table + (f"\n\n{NOT_COMPARABLE}" if several_spaces([row.get("space") for row in rows]) else "")


def comparison_latex(rows: Sequence[dict], radii: Sequence[float] = COMPARISON_RADII) -> str:
    """A LaTeX ``tabular`` (booktabs rules) of ``compare_runs`` rows, the columns of ``comparison_markdown``;
    the best value of each accuracy and ACR column among the runs of one space is set in ``\\textbf{}``, unknown
    or undefined ones are ``---``; runs of several spaces get ``comparison_markdown``'s note as a last row."""
    columns = _comparison_columns(rows, radii, "comparison_latex")
    cells = [[_latex_escape(row["name"])] for row in rows]
    for _, _, column in columns:
        for line, (text, best) in zip(cells, column):
            escaped = None if text is None else _latex_escape(text)
            line.append("---" if escaped is None else f"\\textbf{{{escaped}}}" if best else escaped)
    header = ["Run", *(latex for _, latex, _ in columns)]
    note = [f"\\multicolumn{{{len(header)}}}{{l}}{{\\footnotesize {NOT_COMPARABLE}}} \\\\"]
    return "\n".join(
        [
            "% certified accuracy (%) at l2 radius r (pixels in [0, 1]); needs \\usepackage{booktabs}",
            "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
            "\\toprule",
            " & ".join(header) + " \\\\",
            "\\midrule",
            *(" & ".join(line) + " \\\\" for line in cells),
            "\\bottomrule",
            *(note if several_spaces([row.get("space") for row in rows]) else []),
            "\\end{tabular}",
        ]
    )


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


def _comparison_columns(
    rows: Sequence[dict], radii: Sequence[float], name: str
) -> list[tuple[str, str, list[tuple[str | None, bool]]]]:
    """The columns after the run's name, each (Markdown title, LaTeX title, cells); a cell is (text, best),
    text None where the value is unknown or undefined. Best: the largest rounded value of an accuracy or ACR
    column among the runs of one space, where their values differ."""
    if not rows:
        raise ValueError(f"`rows` of {name} must hold at least one compare_runs row")
    for row in rows:
        check_summarized(row["certified_accuracy"], radii, f"rows ({row['name']!r})")
    spaces = [row.get("space") for row in rows]

    def cells(values: list, text: str, ranked: bool = False) -> list[tuple[str | None, bool]]:
        best = best_within_space(values, spaces) if ranked else [False] * len(values)
        return [(None if value is None else text.format(value), marked) for value, marked in zip(values, best)]

    def rounded(values: list, scale: float, digits: int) -> list:
        return [None if value is None else round(scale * value, digits) for value in values]

    columns = []
    if any(space is not None for space in spaces):
        columns.append(("space", "Space", [(shown_space(space), False) for space in spaces]))
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
    special = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(special.get(character, character) for character in text)
