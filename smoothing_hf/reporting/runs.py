"""Certification runs read from disk: our output folders (``certify.tsv`` + ``summary.json``) and other tools'
TSVs with Cohen's columns, each summarized into one comparison row."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..checks import is_number
from ..files import read_json
from .metrics import COMPARISON_RADII, check_radii, summarize
from .spaces import recorded_space
from .validation import read_checked_rows

CERTIFY_TSV = "certify.tsv"
SUMMARY_JSON = "summary.json"


@dataclass(frozen=True)
class Run:
    """One certification run: its ``name`` (the table's label), the ``path`` it was given as, the ``tsv`` read,
    its noise level ``sigma`` (l2, [0, 1] pixels; None where unknown: raw TSVs carry none), its ``rows``
    (``smoothing_hf.reporting.validation.read_checked_rows``; empty for a run of 0 examples) and the ``space``
    its radii live in (``"l2 in [0, 1] pixels of 32 x 32 x 3"``; None where unknown: older folders and raw
    TSVs record none)."""

    name: str
    path: str
    tsv: str
    sigma: float | None
    rows: list[dict]
    space: str | None = None
    tested_radii: tuple[float, ...] | None = None
    """The only radii a fixed_radius or radii run knows about (0 among them); None where every radius is known."""


def read_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """The run at ``path``: a certification output folder (its ``certify.tsv``; sigma and space from its
    ``summary.json``) or a TSV file with Cohen's columns (sigma and space from a ``summary.json`` beside it only
    when the file is a ``certify.tsv``). ``name`` defaults to ``run_label(path)``.

    The rows are ``read_checked_rows``': a malformed line, a value no certification writes (a negative idx, say)
    or a row that contradicts itself or another (a repeated idx; correct = 1 with predict != label; an
    abstention with a radius) is a ValueError naming the file and line. Where the ``summary.json`` records a
    fixed_radius or radii run, every radius must be one it tested or 0.0, and certified accuracy is known at
    those radii (and 0) only."""
    name = run_label(path) if name is None else name
    if os.path.isdir(path):
        tsv = os.path.join(path, CERTIFY_TSV)
        if not os.path.isfile(tsv):
            raise ValueError(
                f"run {name!r}: {tsv} does not exist; a folder must be a certification output folder "
                f"with a {CERTIFY_TSV}"
            )
    elif os.path.isfile(path):
        tsv = os.fspath(path)
    else:
        raise ValueError(
            f"run {name!r}: {os.fspath(path)} does not exist; each path must be a certification output folder "
            "or a TSV file"
        )
    summary: dict = {}
    if os.path.basename(tsv) == CERTIFY_TSV:
        summary = read_json(os.path.join(os.path.dirname(tsv), SUMMARY_JSON), missing_ok=True)
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    sigma = settings.get("sigma") if is_number(settings.get("sigma")) else None
    mode, tested = settings.get("mode"), None
    if mode == "fixed_radius" and is_number(settings.get("radius")):
        tested = (settings["radius"],)
    elif mode == "radii" and isinstance(settings.get("radii"), list) and all(map(is_number, settings["radii"])):
        tested = tuple(settings["radii"])
    rows = read_checked_rows(tsv, tested_radii=tested, mode=mode)
    return Run(name=str(name), path=os.fspath(path), tsv=tsv, sigma=sigma, rows=rows, space=recorded_space(summary),
               tested_radii=None if tested is None else tuple(sorted({0.0, *tested})))


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
    repeated = {
        name: [os.fspath(p) for n, p in zip(names, paths) if n == name] for name in names if names.count(name) > 1
    }
    if repeated:
        clash = "; ".join(f"{name!r} labels {', '.join(shared)}" for name, shared in repeated.items())
        defaulted = labels is None and not isinstance(runs, Mapping)
        hint = (
            "label each run with `labels` (--labels on the command line)"
            if defaulted
            else "give each run its own label"
        )
        raise ValueError(f"run labels must be unique: {clash}; {hint}")
    return [read_run(path, name) for name, path in zip(names, paths)]


def summarize_run(run: Run, radii: Sequence[float] = COMPARISON_RADII) -> dict:
    """A comparison row for ``run``: ``name``, ``path``, ``tsv``, ``sigma``, ``space``, the ``summarize`` figures
    at ``radii`` (l2, [0, 1] pixels) and ``mean_samples``, the mean of a ``samples`` column (samples drawn per
    example) where every row has one, else None. A run of 0 examples has ``num_examples`` 0 and every figure None
    (undefined, shown as a dash in the tables), not a division by zero. A fixed_radius or radii run knows its
    certified accuracy at the radii it tested only: the others, and the ACR, are None."""
    check_radii(radii, "radii")
    figures = {"name": run.name, "path": run.path, "tsv": run.tsv, "sigma": run.sigma, "space": run.space}
    if not run.rows:
        undefined = dict.fromkeys(("acr", "abstain_rate", "clean_accuracy", "mean_samples"))
        return {**figures, "num_examples": 0, "certified_accuracy": dict.fromkeys(f"{r:g}" for r in radii), **undefined}
    samples = [row.get("samples") for row in run.rows]
    mean_samples = float(np.mean(samples)) if all(is_number(value) for value in samples) else None
    summary = summarize(run.rows, radii)
    if run.tested_radii is not None:
        summary["acr"] = None
        known = summary["certified_accuracy"].items()
        summary["certified_accuracy"] = {key: value if float(key) in run.tested_radii else None for key, value in known}
    return {**figures, **summary, "mean_samples": mean_samples}


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
