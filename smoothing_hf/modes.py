"""The modes of dataset certification (``smoothing_hf.pipeline.certify``), as one table: ``MODES``.

Each row says which sample settings the mode takes, what its TSV holds, how it certifies a group of images
(and, where it can, how it decides from class counts summed over processes), and what its summary holds.
A new mode is one row here; the pipeline asks the row, never the mode's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .certification import ABSTAIN, Smoother, certificates_from_counts, predictions_from_counts
from .files import COHEN_COLUMNS
from .noise import Phase
from .reporting import summarize

MODE_OPTIONS = ("radius", "max_n", "tolerance")
"""Settings without a default: given only to the modes that take them."""


@dataclass(frozen=True)
class Mode:
    """One way of certifying a dataset.

    ``takes``: the sample settings it uses, among n0, n, radius, max_n, tolerance, growth (the others are
    recorded as None). ``decide(smoother, pixels, seeds, settings, batch_size)`` certifies a group of images;
    ``row(decision, settings)`` gives its row's predict, radius and samples. ``from_counts`` (sample-parallel
    modes only) makes the decisions from class counts summed over processes, one [B, K] array per
    ``(phase, setting)`` of ``phases``. ``summarize(rows, settings, radii)`` gives the summary's figures."""

    name: str
    tsv_name: str
    columns: tuple[str, ...]
    takes: tuple[str, ...]
    decide: Callable[[Smoother, torch.Tensor, list[int], dict, int], list]
    row: Callable[[Any, dict], dict]
    summarize: Callable[[list[dict], dict, Sequence[float]], dict]
    phases: tuple[tuple[Phase, str], ...] = ()
    from_counts: Callable[[list[np.ndarray], dict, float], list] | None = None
    plots: bool = False

    def fewest_samples(self, settings: dict) -> int:
        """The fewest noisy samples an image can take: images are packed into a forward batch below it."""
        return sum(settings[name] for name in ("n0", "n") if name in self.takes)


def _certificate_row(certificate: Any, settings: dict) -> dict:
    return {"predict": certificate.prediction, "radius": certificate.radius, "samples": certificate.samples}


def _radius_row(decision: Any, settings: dict) -> dict:
    """In fixed_radius mode ``radius`` is the radius tested where certified, else 0.0, so certified accuracy
    reads the same way as in certify mode."""
    return {"predict": decision.prediction, "radius": settings["radius"] if decision.certified else 0.0,
            "samples": decision.samples}


def _radii_summary(rows: list[dict], settings: dict, radii: Sequence[float]) -> dict:
    return summarize(rows, radii)


def _fixed_radius_summary(rows: list[dict], settings: dict, radii: Sequence[float]) -> dict:
    """Radii other than 0 and the one tested are not known; neither is the ACR."""
    figures = summarize(rows, sorted({0.0, settings["radius"]}))
    return {key: value for key, value in figures.items() if key != "acr"}


def _predict_summary(rows: list[dict], settings: dict, radii: Sequence[float]) -> dict:
    return {"num_examples": len(rows), "accuracy": float(np.mean([r["correct"] for r in rows])),
            "abstain_rate": float(np.mean([r["predict"] == ABSTAIN for r in rows]))}


OUR_COLUMNS = ("samples", "pixel_digest")  # noisy forward passes spent; the hash that ties the row to its image
MODES = {
    mode.name: mode
    for mode in [
        Mode(
            "certify", "certify.tsv", COHEN_COLUMNS + OUR_COLUMNS, ("n0", "n"),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.certify(
                pixels, n0=s["n0"], n=s["n"], alpha=s["alpha"], batch_size=batch, seed=seeds),
            row=_certificate_row, summarize=_radii_summary,
            phases=((Phase.SELECTION, "n0"), (Phase.ESTIMATION, "n")),
            from_counts=lambda counts, s, sigma: certificates_from_counts(counts[0], counts[1], s["alpha"], sigma),
            plots=True,
        ),
        Mode(
            "predict", "predict.tsv", ("idx", "label", "predict", "correct", "time") + OUR_COLUMNS, ("n",),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.predict(
                pixels, n=s["n"], alpha=s["alpha"], batch_size=batch, seed=seeds),
            row=lambda prediction, s: {"predict": prediction, "samples": s["n"]}, summarize=_predict_summary,
            phases=((Phase.PREDICTION, "n"),),
            from_counts=lambda counts, s, sigma: predictions_from_counts(counts[0], s["alpha"]),
        ),
        Mode(
            "fixed_radius", "certify.tsv", COHEN_COLUMNS + OUR_COLUMNS, ("n0", "radius", "max_n", "growth"),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.certify_at_radius(
                pixels, s["radius"], n0=s["n0"], max_n=s["max_n"], alpha=s["alpha"], batch_size=batch, seed=seeds,
                growth=s["growth"]),
            row=_radius_row, summarize=_fixed_radius_summary,
        ),
        Mode(
            "adaptive", "certify.tsv", COHEN_COLUMNS + OUR_COLUMNS, ("n0", "tolerance", "max_n", "growth"),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.certify(
                pixels, n0=s["n0"], n=s["max_n"], alpha=s["alpha"], batch_size=batch, seed=seeds,
                tolerance=s["tolerance"], growth=s["growth"]),
            row=_certificate_row, summarize=_radii_summary, plots=True,
        ),
    ]
}
"""The certification modes by name. Every TSV has Cohen's columns (predict mode: no radius), then the noisy
samples spent on the example and its ``pixel_digest`` (``smoothing_hf.run_folder.pixel_digest``). The
sequential modes (no ``phases``) decide after each round of samples, so they split images, not samples, over
processes."""
