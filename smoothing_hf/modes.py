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

from .certification import (
    ABSTAIN,
    DEFAULT_ADAPTIVE_CONFIDENCE,
    DEFAULT_CONFIDENCE,
    TWO_STAGE,
    Smoother,
    certificates_from_counts,
    check_confidence,
    check_futility,
    check_radii_to_test,
    predictions_from_counts,
)
from .certification.two_stage import check_two_stage_budget
from .checks import check_choice, check_number, check_positive_int, check_seed, is_number
from .files import COHEN_COLUMNS
from .noise import Phase, bound_uniforms
from .reporting import summarize
from .reporting.metrics import check_radii
from .reporting.validation import radius_column

MODE_OPTIONS = ("radius", "max_n", "tolerance", "confidence", "futility", "bound_seed")
"""Settings without a default in ``certify()``: given only to the modes that take them."""



@dataclass(frozen=True)
class Mode:
    """One way of certifying a dataset.

    ``takes``: the sample settings it uses, among n0, n, radius, radii, max_n, tolerance, growth, confidence,
    futility, bound_seed (the others are recorded as None); a mode that takes radii has one 0/1 column per radius
    tested.
    ``decide(smoother, pixels, seeds, settings, batch_size)`` certifies a group of images;
    ``row(decision, settings)`` gives its row's predict, radius and samples. ``from_counts(counts, settings,
    sigma, seeds)`` (sample-parallel modes only) makes the decisions from class counts summed over processes, one
    [B, K] array per ``(phase, setting)`` of ``phases``. ``summarize(rows, settings, radii)`` gives the summary's
    figures."""

    name: str
    tsv_name: str
    columns: tuple[str, ...]
    takes: tuple[str, ...]
    decide: Callable[[Smoother, torch.Tensor, list[int], dict, int], list]
    row: Callable[[Any, dict], dict]
    summarize: Callable[[list[dict], dict, Sequence[float]], dict]
    phases: tuple[tuple[Phase, str], ...] = ()
    from_counts: Callable[[list[np.ndarray], dict, float, list[int]], list] | None = None
    plots: bool = False

    def columns_for(self, settings: dict) -> tuple[str, ...]:
        """The TSV's columns in a run with ``settings``: ``columns``, then one per radius in radii mode."""
        if "radii" not in self.takes:
            return self.columns
        return self.columns[: len(COHEN_COLUMNS)] + tuple(map(radius_column, settings["radii"])) + OUR_COLUMNS

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


def _tested_radii_row(decision: Any, settings: dict) -> dict:
    """In radii mode ``radius`` is the largest radius tested that is certified (0.0 if none), so certified
    accuracy at the tested radii reads the same way as in certify mode; one 0/1 column per radius says it."""
    certified = dict(zip(settings["radii"], decision.certified))
    return {"predict": decision.prediction, "radius": max([r for r, c in certified.items() if c], default=0.0),
            "samples": decision.samples, **{radius_column(r): int(c) for r, c in certified.items()}}


def _tested_radii_summary(rows: list[dict], settings: dict, radii: Sequence[float]) -> dict:
    """Certified accuracy at the radii tested only (other radii, and the ACR, are not known)."""
    figures = summarize(rows, sorted(settings["radii"]))
    return {key: value for key, value in figures.items() if key != "acr"}


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
            "certify", "certify.tsv", COHEN_COLUMNS + OUR_COLUMNS, ("n0", "n", "bound_seed"),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.certify(
                pixels, n0=s["n0"], n=s["n"], alpha=s["alpha"], batch_size=batch, seed=seeds,
                bound_seed=s["bound_seed"]),
            row=_certificate_row, summarize=_radii_summary,
            phases=((Phase.SELECTION, "n0"), (Phase.ESTIMATION, "n")),
            from_counts=lambda counts, s, sigma, seeds: certificates_from_counts(
                counts[0], counts[1], s["alpha"], sigma, bound_uniforms(s["bound_seed"], seeds)),
            plots=True,
        ),
        Mode(
            "predict", "predict.tsv", ("idx", "label", "predict", "correct", "time") + OUR_COLUMNS, ("n",),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.predict(
                pixels, n=s["n"], alpha=s["alpha"], batch_size=batch, seed=seeds),
            row=lambda prediction, s: {"predict": prediction, "samples": s["n"]}, summarize=_predict_summary,
            phases=((Phase.PREDICTION, "n"),),
            from_counts=lambda counts, s, sigma, seeds: predictions_from_counts(counts[0], s["alpha"]),
        ),
        Mode(
            "fixed_radius", "certify.tsv", COHEN_COLUMNS + OUR_COLUMNS,
            ("n0", "radius", "max_n", "growth", "confidence", "futility"),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.certify_at_radius(
                pixels, s["radius"], n0=s["n0"], max_n=s["max_n"], alpha=s["alpha"], batch_size=batch, seed=seeds,
                growth=s["growth"], confidence=s["confidence"], futility=s["futility"]),
            row=_radius_row, summarize=_fixed_radius_summary,
        ),
        Mode(
            "adaptive", "certify.tsv", COHEN_COLUMNS + OUR_COLUMNS,
            ("n0", "tolerance", "max_n", "growth", "confidence", "bound_seed"),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.certify(
                pixels, n0=s["n0"], n=s["max_n"], alpha=s["alpha"], batch_size=batch, seed=seeds,
                tolerance=s["tolerance"], growth=s["growth"], confidence=s["confidence"], bound_seed=s["bound_seed"]),
            row=_certificate_row, summarize=_radii_summary, plots=True,
        ),
        Mode(
            "radii", "certify.tsv", COHEN_COLUMNS + OUR_COLUMNS, ("n0", "radii", "max_n", "growth", "confidence",
                                                               "futility"),
            decide=lambda smoother, pixels, seeds, s, batch: smoother.certify_at_radii(
                pixels, s["radii"], n0=s["n0"], max_n=s["max_n"], alpha=s["alpha"], batch_size=batch, seed=seeds,
                growth=s["growth"], confidence=s["confidence"], futility=s["futility"]),
            row=_tested_radii_row, summarize=_tested_radii_summary,
        ),
    ]
}
"""The certification modes by name. Every TSV has Cohen's columns (predict mode: no radius), then (radii mode)
one 0/1 ``certified_<r>`` column per radius tested, then the noisy samples spent on the example and its
``pixel_digest`` (``smoothing_hf.run_folder.pixel_digest``). The
sequential modes (no ``phases``) decide after each round of samples, so they split images, not samples, over
processes."""


def default_confidence(mode: Mode) -> str:
    """The bound a sequential ``mode`` uses where none is given: the two-stage rule for the adaptive radius, a
    confidence sequence for the modes that test radii."""
    return DEFAULT_ADAPTIVE_CONFIDENCE if "tolerance" in mode.takes else DEFAULT_CONFIDENCE


def check_mode(
    mode: str,
    n0: int,
    n: int,
    radius: float | None,
    max_n: int | None,
    tolerance: float | None,
    growth: float,
    confidence: str | None,
    radii: Sequence[float],
    sample_parallel: bool,
    futility: float | None = None,
    bound_seed: int | None = None,
) -> Mode:
    """The ``MODES`` row of ``mode``, after checking the settings it takes (``smoothing_hf.pipeline.certify``'s
    arguments); a setting without a default (``MODE_OPTIONS``) given to a mode that does not take it is an error."""
    chosen = MODES[check_choice(mode, "mode", MODES)]
    given = {"radius": radius, "max_n": max_n, "tolerance": tolerance, "confidence": confidence, "futility": futility,
             "bound_seed": bound_seed}
    unused = [name for name in MODE_OPTIONS if given[name] is not None and name not in chosen.takes]
    if unused:
        takers = sorted(m.name for m in MODES.values() if set(unused) & set(m.takes))
        raise ValueError(f"{unused} apply to mode {' or '.join(repr(t) for t in takers)} only, got mode={mode!r}")
    if sample_parallel and chosen.from_counts is None:
        raise ValueError(
            f"mode={mode!r} decides after each round of samples: it splits images over processes, not samples"
        )
    if "n0" in chosen.takes:
        check_positive_int(n0, "n0")
    if "n" in chosen.takes:
        check_positive_int(n, "n")
    if "max_n" in chosen.takes and (max_n is None or check_positive_int(max_n, "max_n") < n0):
        raise ValueError(
            f"mode={mode!r} needs `max_n`, the most estimation samples per image, an int >= n0 = {n0}; got {max_n!r}"
        )
    if "radius" in chosen.takes and not (is_number(radius) and radius >= 0):
        raise ValueError(
            f"mode={mode!r} needs `radius`, the l2 radius to test (>= 0, pixels in [0, 1]); got {radius!r}"
        )
    if "tolerance" in chosen.takes and not (is_number(tolerance) and tolerance > 0):
        raise ValueError(f"mode={mode!r} needs `tolerance`, a radius > 0 (l2, pixels in [0, 1]); got {tolerance!r}")
    if "growth" in chosen.takes:
        check_number(growth, "growth", minimum=1, strict_minimum=True)
    if "confidence" in chosen.takes:
        confidence = default_confidence(chosen) if confidence is None else confidence
        if check_confidence(confidence, needs_bounds="tolerance" in chosen.takes) == TWO_STAGE:
            check_two_stage_budget(max_n, "max_n")
    if bound_seed is not None:
        check_seed(bound_seed, "bound_seed")
        if "confidence" in chosen.takes and confidence != TWO_STAGE:
            raise ValueError(f"`bound_seed` (the randomized bound) applies to mode 'certify' and to mode={mode!r} with "
                             f"confidence={TWO_STAGE!r}, got confidence={confidence!r}")
    if "futility" in chosen.takes:
        check_futility(futility)
    if "radii" in chosen.takes:
        check_radii_to_test(radii)
    else:
        check_radii(radii, "radii")
    return chosen
