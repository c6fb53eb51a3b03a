"""What certification answers, and how the answers follow from class counts (no sampling here).

``Certificate`` (CERTIFY), ``RadiusDecision`` (a test at one radius), ``RadiiDecision`` (at several) and the
decisions of Cohen's PREDICT and CERTIFY from [B, K] class counts. ABSTAIN is -1, with radius 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import binomtest

from ..checks import check_number
from .bounds import lower_bound, radius_from_bound

ABSTAIN = -1
"""The class index returned when the smoothed classifier abstains (its radius is 0.0)."""


class Certificate(NamedTuple):
    """CERTIFY's answer for one image.

    With probability at least 1 - alpha over the noise, if ``prediction`` is not ``ABSTAIN`` then the
    smoothed classifier predicts ``prediction`` for every input within l2 distance ``radius`` (pixel space,
    [0, 1] scale) of the image.
    """

    prediction: int
    """The certified class, or ``ABSTAIN`` (-1)."""
    radius: float
    """sigma * Phi^-1(pa_lower); 0.0 when abstaining."""
    pa_lower: float
    """One-sided (1 - alpha) Clopper-Pearson lower bound of p_A from the estimation draws."""
    count: int
    """Estimation draws (of ``n``) whose base prediction was the selected class."""
    selection_count: int
    """Selection draws (of ``n0``) whose base prediction was the selected class."""
    samples: int
    """Noisy forward passes spent on this image: n0 + n (n0 + the estimation samples drawn, adaptively)."""


class RadiusDecision(NamedTuple):
    """``Smoother.certify_at_radius``'s answer for one image.

    With probability at least 1 - alpha over the noise, ``certified`` is True only if the smoothed
    classifier predicts ``prediction`` for every input within l2 distance ``radius`` of the image.
    """

    prediction: int
    """The smoothed classifier's class (p_A > 1/2 established), or ``ABSTAIN`` (-1)."""
    certified: bool
    """Whether p_A >= Phi(radius / sigma) was established: robust at the radius asked about."""
    samples: int
    """Noisy forward passes spent on this image, the n0 selection draws included."""


class RadiiDecision(NamedTuple):
    """``Smoother.certify_at_radii``'s answer for one image.

    With probability at least 1 - alpha over the noise, every True in ``certified`` is right at once: the
    smoothed classifier predicts ``prediction`` for every input within l2 distance ``radii[j]`` of the image.
    """

    prediction: int
    """The smoothed classifier's class (p_A > 1/2 established), or ``ABSTAIN`` (-1)."""
    certified: tuple[bool, ...]
    """One per radius asked about, in its order: whether p_A >= Phi(radius / sigma) was established."""
    samples: int
    """Noisy forward passes spent on this image, the n0 selection draws included."""


def check_radii_to_test(radii: Sequence[float], name: str = "radii") -> list[float]:
    """``radii`` as a list of floats, if it is a non-empty sequence of distinct finite l2 radii >= 0 ([0, 1]
    pixel units; any order)."""
    if isinstance(radii, (str, bytes)) or not isinstance(radii, Sequence) or not len(radii):
        raise ValueError(f"`{name}` must be a non-empty sequence of l2 radii >= 0 (pixels in [0, 1]), got {radii!r}")
    values = [check_number(r, f"{name}[{i}]", minimum=0, unit="l2, pixels in [0, 1]") for i, r in enumerate(radii)]
    repeated = sorted({r for r in values if values.count(r) > 1})
    if repeated:
        raise ValueError(f"`{name}` must not repeat a radius, got {repeated} more than once in {list(radii)}")
    return values


def predictions_from_counts(counts: np.ndarray, alpha: float) -> list[int]:
    """PREDICT's decision from [B, K] class counts: the top class where a two-sided binomial test of its
    count nA against the runner-up's nB (nA + nB trials, p = 0.5) has p-value <= alpha, else ABSTAIN."""
    counts = np.asarray(counts)
    top_two = np.argsort(-counts, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(counts))
    count_a, count_b = counts[rows, top_two[:, 0]], counts[rows, top_two[:, 1]]
    return [
        int(c) if binomtest(int(a), int(a + b), 0.5).pvalue <= alpha else ABSTAIN
        for c, a, b in zip(top_two[:, 0], count_a, count_b)
    ]


def certificates_from_counts(
    selection_counts: np.ndarray, estimation_counts: np.ndarray, alpha: float, sigma: float,
    uniforms: np.ndarray | None = None,
) -> list[Certificate]:
    """CERTIFY's decision from class counts: [B, K] selection counts (n0 each) and [B, K] estimation counts
    (n each, independent of the selection draws). Ties in selection go to the lowest class index. With
    ``uniforms`` (one in [0, 1) per image, independent of the draws), pA_lower is the randomized Clopper-Pearson
    bound (``bounds.randomized_clopper_pearson_lower``)."""
    selection_counts = np.asarray(selection_counts)
    estimation_counts = np.asarray(estimation_counts)
    n0 = selection_counts.sum(axis=1)
    n = estimation_counts.sum(axis=1)
    rows = np.arange(len(selection_counts))
    top = selection_counts.argmax(axis=1)
    count_a = estimation_counts[rows, top]
    pa_lower = lower_bound(count_a, n, alpha, uniforms)
    certified = pa_lower >= 0.5
    radii = radius_from_bound(pa_lower, sigma)
    return [
        Certificate(
            prediction=int(top[i]) if certified[i] else ABSTAIN,
            radius=float(radii[i]),
            pa_lower=float(pa_lower[i]),
            count=int(count_a[i]),
            selection_count=int(selection_counts[i, top[i]]),
            samples=int(n0[i] + n[i]),
        )
        for i in rows
    ]
