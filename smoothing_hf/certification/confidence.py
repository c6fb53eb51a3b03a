"""Confidence sequences for p_A: bounds that hold at every look at once, so a test may stop whenever it likes.

A ``ConfidenceSequence`` gives one-sided lower and upper bounds of a binomial proportion p (the share of
noisy samples the base classifier puts on class cA) from the successes among the first t draws. With
probability at least 1 - alpha, the bounds read at *all* of its ``checkpoints`` contain p at once, so any
rule that decides when to stop from what it has seen keeps the (1 - alpha) guarantee of fixed-n CERTIFY.

Three constructions (``CONFIDENCE_SEQUENCES``; the sequential modes take one by name):

- ``"bonferroni"``: exact Clopper-Pearson bounds at level alpha / K, read only at the K cumulative sample
  counts of a geometric schedule (128, 512, ..., max_n). The union bound costs log K in the exponent; an
  image near a threshold overshoots it by up to the growth factor.
- ``"betting"``: the conjugate-mixture betting martingale of Robbins and of Waudby-Smith and Ramdas (2023),
  with the Jeffreys prior Beta(1/2, 1/2), i.e. the Krichevsky-Trofimov bettor that Voracek (2024) uses for
  randomized smoothing. For a candidate p0 the wealth after s successes in t draws is
  M_t(p0) = B(1/2 + s, 1/2 + t - s) / B(1/2, 1/2) / (p0^s (1 - p0)^(t - s)), a nonnegative martingale of
  mean 1 when p = p0; by Ville's inequality it ever reaches 1 / alpha with probability at most alpha. The
  sequence is {p0 : M_t(p0) < 1 / alpha}, an interval (log M_t is convex in p0), read after every chunk of
  128 draws. It costs about 0.5 log(pi t) in the exponent where all draws agree, and never overshoots.

- ``"one_sided"``: no bounds, a test per threshold p*: the same bettor with its Jeffreys prior restricted to
  p > p* (to certify) or p < p* (to refute), read after every chunk. Restricting the prior to the side that
  the test must establish puts all its mass where the evidence can come from: near p* = Phi(3) = 0.99865
  (r = 3 sigma) the unrestricted prior holds 2% of its mass above p*, so the restricted one saves about
  log 50 = 3.9 nats there, some 2,900 unanimous draws. Each test is a nonnegative supermartingale of mean at
  most 1 under its null (p <= p*, or p >= p*), so by Ville's inequality a threshold is wrongly certified with
  probability at most alpha. Thresholds are claimed in increasing order only (a radius is certified once
  its test and those of every smaller radius have passed): a fixed-sequence procedure, so the first false
  threshold must pass before any false claim and all thresholds share the one alpha, with no union bound.
  It decides thresholds only (the radii and fixed-radius modes); the adaptive mode needs bounds.

All are exact (no asymptotics) and computed in closed form with SciPy. The confseq package would be the
library to lean on, but it does not build here (a C++ extension); the betting bound is a dozen lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc, betaln, xlog1py, xlogy

from ..checks import check_alpha, check_choice, check_number, check_positive_int
from ..noise import NOISE_CHUNK_SIZE
from .bounds import bisect_boundary, clopper_pearson_bounds

CONFIDENCE_SEQUENCES = ("betting", "bonferroni", "one_sided")
"""The names ``confidence_sequence`` takes."""
BOUNDING_SEQUENCES = ("betting", "bonferroni")
"""The sequences that give bounds of p_A, which the adaptive mode reads; "one_sided" decides thresholds only."""
TWO_STAGE = "two_stage"
"""Not a sequence: the adaptive mode's two-stage rule (``two_stage.py``), a pilot choosing n for a fixed-n bound."""
ADAPTIVE_CONFIDENCES = (*BOUNDING_SEQUENCES, TWO_STAGE)
"""The names the adaptive mode's ``confidence`` takes."""
DEFAULT_CONFIDENCE = "bonferroni"
"""The sequential modes' default, chosen by measurement (``benchmarks/sample_efficiency.py``, 100 digits against
CERTIFY at n = 100,000): in radii mode it decided 100% of (image, radius) pairs as the standard run did
(one_sided 99.75%, betting 99.0%) for 3.0x fewer samples (one_sided 3.5x, betting 3.3x); in adaptive mode it lost
less ACR than betting (0.050 against 0.092 at tolerance 0.05). With a futility level of 0.05
(``Smoother.certify_at_radii``) one_sided is the fastest: 11.3x fewer samples (bonferroni 5.2x). For the adaptive
radius the two-stage rule (``TWO_STAGE``) loses about half the ACR of either at the same savings, so it is the
adaptive mode's default (``DEFAULT_ADAPTIVE_CONFIDENCE``)."""
DEFAULT_ADAPTIVE_CONFIDENCE = TWO_STAGE
"""The adaptive mode's default bound, chosen by the same measurement: at tolerance 0.02 it took 6.3x fewer samples
than CERTIFY for 0.030 of ACR, where bonferroni at 0.05 took 4.3x for 0.050 and betting at 0.03 5.1x for 0.055."""


@dataclass(frozen=True)
class ConfidenceSequence:
    """Bounds of p valid at once over ``checkpoints`` (cumulative draw counts, increasing, the last max_n).

    ``name`` is one of ``CONFIDENCE_SEQUENCES``; ``alpha`` the error probability of the whole sequence;
    ``growth`` the factor ``horizon`` looks ahead by (the adaptive radius projects its gain that far)."""

    name: str
    alpha: float
    checkpoints: tuple[int, ...]
    growth: float

    def bounds(self, successes: np.ndarray, trials: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """One-sided lower and upper bounds of p after ``successes`` of ``trials`` draws (arrays of one shape,
        or a scalar ``trials``); valid together with the bounds at every other checkpoint."""
        if self.name not in BOUNDING_SEQUENCES:
            raise ValueError(f"the {self.name!r} tests give no bounds; those that do: {list(BOUNDING_SEQUENCES)}")
        successes = np.asarray(successes, dtype=np.float64)
        trials = np.broadcast_to(np.asarray(trials, dtype=np.float64), successes.shape)
        if self.name == "bonferroni":
            return clopper_pearson_bounds(successes, trials, self.alpha / len(self.checkpoints))
        share = successes / trials
        excluded = lambda p: self._log_wealth(successes, trials, p) >= math.log(1 / self.alpha)  # noqa: E731
        lower = bisect_boundary(excluded, np.zeros_like(share), share)
        upper = bisect_boundary(excluded, np.ones_like(share), share)
        return np.where(successes > 0, lower, 0.0), np.where(successes < trials, upper, 1.0)

    def decide(
        self, successes: np.ndarray, trials: int, thresholds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For [B] ``successes`` of ``trials`` draws and [R] ``thresholds`` p*: [B, R] booleans ``above``
        (the lower bound reaches p*: p >= p* established) and ``below`` (the upper bound is under p*). For
        "one_sided", each threshold's own tests instead; the caller claims thresholds in increasing order only
        (the module docstring)."""
        successes = np.asarray(successes, dtype=np.float64)[:, None]
        thresholds = np.asarray(thresholds, dtype=np.float64)[None, :]
        if self.name == "one_sided":
            level = math.log(1 / self.alpha)
            return (_log_one_sided_wealth(successes, float(trials), thresholds, above=True) >= level,
                    _log_one_sided_wealth(successes, float(trials), thresholds, above=False) >= level)
        if self.name == "bonferroni":
            lower, upper = self.bounds(successes[:, 0], trials)
            return lower[:, None] >= thresholds, upper[:, None] < thresholds
        # Exact, without inverting: on each side of the observed share the wealth is monotone in p0.
        excluded = self._log_wealth(successes, float(trials), thresholds) >= math.log(1 / self.alpha)
        share = successes / trials
        return excluded & (thresholds <= share), excluded & (thresholds > share)

    def horizon(self, trials: int) -> int | None:
        """The draw count one look ahead of ``trials``: the next checkpoint (bonferroni) or ``growth`` times
        ``trials`` on the chunk grid (betting), at most max_n; None at max_n."""
        max_n = self.checkpoints[-1]
        if trials >= max_n:
            return None
        if self.name == "bonferroni":
            return next(c for c in self.checkpoints if c > trials)
        return min(max_n, _round_up_to_chunk(math.ceil(trials * self.growth)))

    def _log_wealth(self, successes: np.ndarray, trials: np.ndarray | float, p: np.ndarray) -> np.ndarray:
        """log M_t(p0) of the Jeffreys-mixture bettor (the module docstring); +inf where p0 is impossible."""
        failures = trials - successes
        with np.errstate(divide="ignore"):
            likelihood = xlogy(successes, p) + xlog1py(failures, -p)
        return betaln(0.5 + successes, 0.5 + failures) - betaln(0.5, 0.5) - likelihood


def _log_one_sided_wealth(successes: np.ndarray, trials: float, p0: np.ndarray, above: bool) -> np.ndarray:
    """log of the "one_sided" bettor's wealth against p = p0 after ``successes`` of ``trials`` draws: the
    likelihood of the Jeffreys prior restricted to (p0, 1] (``above``) or [0, p0) over that of p0,
    B(s + 1/2, f + 1/2) P(side | s, f) / (B(1/2, 1/2) P(side)) / (p0^s (1 - p0)^f), where P(side | s, f) is
    the Beta(s + 1/2, f + 1/2) mass on that side of p0. -inf where the side is empty (p0 = 1 above, 0 below)."""
    failures = trials - successes
    if above:  # P(q > p0) under Beta(a, b) is I_{1 - p0}(b, a)
        posterior, prior = betainc(failures + 0.5, successes + 0.5, 1 - p0), betainc(0.5, 0.5, 1 - p0)
    else:
        posterior, prior = betainc(successes + 0.5, failures + 0.5, p0), betainc(0.5, 0.5, p0)
    with np.errstate(divide="ignore", invalid="ignore"):
        likelihood = xlogy(successes, p0) + xlog1py(failures, -p0)
        wealth = betaln(0.5 + successes, 0.5 + failures) - betaln(0.5, 0.5) + np.log(posterior) - likelihood
        return np.where(prior > 0, wealth - np.log(prior), -np.inf)


def check_confidence(name: str, needs_bounds: bool = False) -> str:
    """``name`` if it is one of ``CONFIDENCE_SEQUENCES`` (the threshold modes), or of ``ADAPTIVE_CONFIDENCES``
    where the caller (the adaptive mode) ``needs_bounds``."""
    name = check_choice(name, "confidence", (*CONFIDENCE_SEQUENCES, TWO_STAGE))
    if needs_bounds and name not in ADAPTIVE_CONFIDENCES:
        raise ValueError(f"`confidence`={name!r} decides radius thresholds only, and the adaptive mode (`tolerance`) "
                         f"reads bounds of p_A: use one of {list(ADAPTIVE_CONFIDENCES)}")
    if not needs_bounds and name not in CONFIDENCE_SEQUENCES:
        raise ValueError(f"`confidence`={name!r} is the adaptive mode's two-stage radius; the modes that test radii "
                         f"take a confidence sequence, one of {list(CONFIDENCE_SEQUENCES)}")
    return name


def check_futility(futility: float | None) -> float | None:
    """``futility`` if it is None (never give up early) or a level in (0, 1) (``sequential._out_of_reach``)."""
    if futility is None:
        return None
    return check_number(futility, "futility", minimum=0, maximum=1, strict_minimum=True, strict_maximum=True)


def confidence_sequence(
    name: str, alpha: float, max_n: int, growth: float = 4.0, needs_bounds: bool = False
) -> ConfidenceSequence:
    """The ``name`` sequence (``CONFIDENCE_SEQUENCES``; ``BOUNDING_SEQUENCES`` where the caller ``needs_bounds``)
    at level ``alpha`` for up to ``max_n`` draws: bonferroni looks at ``sample_schedule(max_n, growth=growth)``;
    betting and one_sided after every chunk of 128 draws."""
    name = check_confidence(name, needs_bounds)
    if name == TWO_STAGE:
        raise ValueError(f"{TWO_STAGE!r} is a rule of the adaptive mode (``two_stage.py``), not a confidence sequence")
    alpha, max_n = check_alpha(alpha), check_positive_int(max_n, "max_n")
    growth = check_number(growth, "growth", minimum=1, strict_minimum=True)
    if name == "bonferroni":
        checkpoints = sample_schedule(max_n, growth=growth)
    else:
        checkpoints = [*range(NOISE_CHUNK_SIZE, max_n, NOISE_CHUNK_SIZE), max_n]
    return ConfidenceSequence(name, alpha, tuple(checkpoints), growth)


def sample_schedule(max_n: int, first: int = NOISE_CHUNK_SIZE, growth: float = 4.0) -> list[int]:
    """Cumulative estimation sample counts after each round: ``first``, then growing ``growth``-fold, up to
    ``max_n``. Every count but the last is a multiple of the noise chunk size, so each round continues the
    example's noise stream where the previous one stopped and all rounds together draw exactly the
    ``max_n`` samples that fixed-n certification would.

    >>> sample_schedule(100_000)
    [128, 512, 2048, 8192, 32768, 100000]
    """
    max_n = check_positive_int(max_n, "max_n")
    growth = check_number(growth, "growth", minimum=1, strict_minimum=True)
    first = check_positive_int(first, "first")
    schedule = []
    size = _round_up_to_chunk(first)
    while size < max_n:
        schedule.append(size)
        size = max(_round_up_to_chunk(math.ceil(size * growth)), size + NOISE_CHUNK_SIZE)
    return [*schedule, max_n]


def _round_up_to_chunk(size: int) -> int:
    return -(-size // NOISE_CHUNK_SIZE) * NOISE_CHUNK_SIZE
