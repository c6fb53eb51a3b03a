"""The comparison of methods on one base as tables: one row per method (mean and spread over training seeds),
Markdown and LaTeX, and the folder that holds them. Reads run folders only (``certify/`` results and
``train_results.json``); ``smoothing_hf.comparison`` trains and certifies the runs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..certification.bounds import largest_certifiable_radius
from ..files import read_json, write_json, write_text
from .metrics import COMPARISON_RADII
from .plots import plot_certified_accuracy
from .runs import read_run, summarize_run
from .spaces import NOT_COMPARABLE, best_within_space, legend_labels, several_spaces, shown_space

TRAIN_RESULTS_NAME = "train_results.json"
CERTIFY_DIR = "certify"


def comparison_rows(
    runs: Mapping[str, Sequence[str | os.PathLike]], radii: Sequence[float] = COMPARISON_RADII
) -> list[dict]:
    """One row per label of ``runs`` (label -> its run folders, one per seed; each with ``certify/`` and,
    where known, ``train_results.json``): ``name``, ``seeds``, ``space`` (where the seeds' radii live, None
    where not recorded; seeds of different spaces are a ValueError), ``num_examples``, ``certified_accuracy`` and
    ``acr`` (means over the seeds) with ``certified_accuracy_std`` and ``acr_std`` (sample standard
    deviations, None for one seed), ``trainable_parameters``, ``training_seconds`` and
    ``samples_per_second`` (certification throughput; means over the seeds; None where unknown)."""
    rows = []
    for name, folders in runs.items():
        if not folders:
            raise ValueError(f"run {name!r} has no folders")
        summaries = [summarize_run(read_run(os.path.join(f, CERTIFY_DIR), name), radii) for f in folders]
        trained = [read_json(os.path.join(f, TRAIN_RESULTS_NAME), missing_ok=True) for f in folders]
        certified = [read_json(os.path.join(f, CERTIFY_DIR, "summary.json"), missing_ok=True) for f in folders]
        accuracy = {
            key: [s["certified_accuracy"][key] for s in summaries] for key in summaries[0]["certified_accuracy"]
        }
        acr = [s["acr"] for s in summaries]
        spaces = {s["space"] for s in summaries}
        if len(spaces) > 1:
            raise ValueError(
                f"run {name!r}: its seeds certified in different spaces "
                f"({', '.join(sorted(map(shown_space, spaces)))}), whose radii cannot be averaged"
            )
        rows.append(
            {
                "name": name,
                "seeds": len(folders),
                "space": spaces.pop(),
                "num_examples": summaries[0]["num_examples"],
                "certified_accuracy": {key: _mean(values) for key, values in accuracy.items()},
                "certified_accuracy_std": {key: _std(values) for key, values in accuracy.items()},
                "acr": _mean(acr),
                "acr_std": _std(acr),
                "trainable_parameters": _mean([t.get("trainable_parameters") for t in trained]),
                "training_seconds": _mean([t.get("training_seconds") for t in trained]),
                "samples_per_second": _mean([c.get("samples_per_second") for c in certified]),
                "noisy_accuracy": _mean([t.get("noisy_accuracy_after") for t in trained]),
            }
        )
    return rows


def comparison_table(rows: Sequence[dict], radii: Sequence[float] = COMPARISON_RADII, latex: bool = False) -> str:
    """``comparison_rows`` as a Markdown table (or a LaTeX ``tabular`` with booktabs rules): method, the space of
    the radii (where any row records one), trainable parameters, training seconds, certification samples per
    second, certified accuracy (%) at ``radii`` and ACR, ``mean ± std`` over seeds; the best mean of each
    accuracy and ACR column among the rows of one space is marked (``*``, bold). Rows of several spaces get a
    note under the table (a last row in LaTeX): their radii are not comparable."""
    keys = [f"{r:g}" for r in radii]
    columns: list[list[tuple[float | None, float | None]]] = [
        [
            (
                None if row["certified_accuracy"].get(k) is None else 100 * row["certified_accuracy"][k],
                None if row["certified_accuracy_std"].get(k) is None else 100 * row["certified_accuracy_std"][k],
            )
            for row in rows
        ]
        for k in keys
    ] + [[(row["acr"], row["acr_std"]) for row in rows]]
    digits = [1] * len(keys) + [3]
    spaces = [row.get("space") for row in rows]
    with_space = any(space is not None for space in spaces)
    cells = []
    for row, space in zip(rows, spaces):
        line = [
            row["name"] + (f" ({row['seeds']} seeds)" if row["seeds"] > 1 else ""),
            *([shown_space(space)] if with_space else []),
            _number(row["trainable_parameters"], "{:,.0f}"),
            _number(row["training_seconds"], "{:.0f}"),
            _number(row["samples_per_second"], "{:.0f}"),
        ]
        cells.append(line)
    for column, places in zip(columns, digits):
        means = [None if mean is None else round(mean, places) for mean, _ in column]
        for line, (mean, spread), marked in zip(cells, column, best_within_space(means, spaces)):
            text = "—" if mean is None else f"{mean:.{places}f}" + ("" if spread is None else f" ± {spread:.{places}f}")
            line.append((f"\\textbf{{{text}}}" if marked else text) if latex else text + ("*" if marked else ""))
    space_title = ["space"] if with_space else []
    header = ["method", *space_title, "trainable", "train s", "samples/s", *(f"r = {k}" for k in keys), "ACR"]
    several = several_spaces(spaces)
    if not latex:
        lines = [header, ["---"] * len(header), *cells]
        table = "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)
        return table + (f"\n\n{NOT_COMPARABLE}" if several else "")
    escape = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "±": r"$\pm$", "—": "---"}
    body = [" & ".join("".join(escape.get(ch, ch) for ch in cell) for cell in line) + " \\\\" for line in cells]
    return "\n".join(
        [
            "% certified accuracy (%) at l2 radius r (pixels in [0, 1]), mean ± std over seeds; "
            "needs \\usepackage{booktabs}",
            "\\begin{tabular}{l" + "l" * len(space_title) + "r" * 3 + "c" * (len(keys) + 1) + "}",
            "\\toprule",
            " & ".join(["Method", *(["Space"] if with_space else []), "Trainable", "Train (s)", "Samples/s",
                        *(f"$r = {k}$" for k in keys), "ACR"])
            + " \\\\",
            "\\midrule",
            *body,
            "\\bottomrule",
            *([f"\\multicolumn{{{len(header)}}}{{l}}{{\\footnotesize {NOT_COMPARABLE}}} \\\\"] if several else []),
            "\\end{tabular}",
        ]
    )


def write_comparison(
    runs: Mapping[str, Sequence[str | os.PathLike]],
    output_dir: str | os.PathLike,
    *,
    radii: Sequence[float] = COMPARISON_RADII,
    settings: dict | None = None,
    title: str | None = None,
) -> str:
    """Write ``comparison.md``, ``comparison.tex``, ``comparison.json`` (rows and settings) and
    ``certified_accuracy.png`` (one curve per label; seeds pooled, which is the mean curve when every seed
    certified the same images; labelled by space too where the rows' radii live in several) into
    ``output_dir``. Returns the Markdown table."""
    rows = comparison_rows(runs, radii)
    markdown = comparison_table(rows, radii)
    os.makedirs(output_dir, exist_ok=True)
    curves = {
        name: [row for f in folders for row in read_run(os.path.join(f, CERTIFY_DIR)).rows]
        for name, folders in runs.items()
    }
    plotted = [row for row in rows if curves[row["name"]]]
    labels = legend_labels([row["name"] for row in plotted], [row["space"] for row in plotted])
    plot_certified_accuracy(
        {label: curves[row["name"]] for label, row in zip(labels, plotted)},
        os.path.join(output_dir, "certified_accuracy.png"),
        title=title,
    )
    sigma = f" at sigma = {settings['sigma']:g}" if settings and settings.get("sigma") else ""
    write_text(
        f"# Methods compared{sigma}\n\nCertified accuracy (%) at l2 radius r (pixels in [0, 1]) and ACR, "
        "mean ± std over "
        "training seeds where there are several; `*` marks the best mean per column. Trainable parameters, training "
        "seconds and certification samples per second (forward passes of noisy images) as measured in this run."
        f"{_certification_note(settings, rows)}\n\n{markdown}\n\n"
        "![certified accuracy against radius](certified_accuracy.png)\n",
        os.path.join(output_dir, "comparison.md"),
    )
    write_text(comparison_table(rows, radii, latex=True) + "\n", os.path.join(output_dir, "comparison.tex"))
    write_json(
        {"settings": settings, "runs": {k: [os.fspath(f) for f in v] for k, v in runs.items()}, "rows": rows},
        os.path.join(output_dir, "comparison.json"),
    )
    return markdown


def _certification_note(settings: Mapping[str, Any] | None, rows: Sequence[dict]) -> str:
    """What was certified, and the largest radius its n can certify (columns past it read 0 by construction)."""
    if not settings or not all(settings.get(key) for key in ("sigma", "n", "alpha", "n0")):
        return ""
    images = " / ".join(str(count) for count in sorted({row["num_examples"] for row in rows}))
    ceiling = largest_certifiable_radius(settings["n"], settings["alpha"], settings["sigma"])
    return (
        f" Certified: {images} held-out images, n0 = {settings['n0']:,}, n = {settings['n']:,}, "
        f"alpha = {settings['alpha']:g}; "
        f"with this n no radius above sigma * Phi^-1(alpha^(1/n)) = {ceiling:.3f} can be certified."
    )


def _mean(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _std(values: Sequence[float | None]) -> float | None:
    return None if len(values) < 2 or any(v is None for v in values) else float(np.std(values, ddof=1))


def _number(value: float | None, text: str) -> str:
    return "—" if value is None else text.format(value)
