"""Sample-efficient certification: the statistics of testing in rounds, with the (1 - alpha) guarantee kept.

Estimation samples are drawn in rounds whose cumulative sizes follow a fixed geometric schedule
n_1 < n_2 < ... < n_K = max_n (``sample_schedule``). After round k, the one-sided Clopper-Pearson bounds
of p_A from the n_k samples so far are taken at level alpha / K. By the union bound, with probability at
least 1 - alpha every one of the K lower bounds is below p_A at once (likewise the upper bounds above it),
whatever rule decides when to stop. So a decision taken at any round, or a certificate built from the
largest lower bound seen, keeps the guarantee of Cohen's fixed-n CERTIFY.

Why this scheme (a Bonferroni split over a fixed schedule): it is exact (Clopper-Pearson, no asymptotics),
needs nothing but beta quantiles, and its price is small: splitting alpha over K = 6 rounds turns
log(1 / alpha) = 6.9 into log(K / alpha) = 8.7 at alpha = 0.001, i.e. about a quarter more samples for the
same bound, while an easy input stops after the first round of 128 samples instead of drawing 100,000.
Betting confidence sequences (Voracek, 2024; Waudby-Smith and Ramdas, 2023) pay a comparable
0.5 log(pi n) where all samples agree; they win on inputs near the decision threshold, where a test
that may stop after every sample needs fewer of them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, norm

from .noise import NOISE_CHUNK_SIZE


def sample_schedule(max_n: int, first: int = NOISE_CHUNK_SIZE, growth: float = 4.0) -> list[int]:
    """Cumulative estimation sample counts after each round: ``first``, then growing ``growth``-fold, up to
    ``max_n``. Every count but the last is a multiple of the noise chunk size, so each round continues the
    example's noise stream where the previous one stopped and all rounds together draw exactly the
    ``max_n`` samples that fixed-n certification would.

    >>> sample_schedule(100_000)
    [128, 512, 2048, 8192, 32768, 100000]
    """
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"`max_n` must be a positive int, got {max_n!r}")
    if not isinstance(growth, (int, float)) or isinstance(growth, bool) or not growth > 1:
        raise ValueError(f"`growth` must be a number > 1, got {growth!r}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise ValueError(f"`first` must be a positive int, got {first!r}")
    schedule = []
    size = _round_up_to_chunk(first)
    while size < max_n:
        schedule.append(size)
        size = max(_round_up_to_chunk(math.ceil(size * growth)), size + NOISE_CHUNK_SIZE)
    return [*schedule, max_n]


def clopper_pearson_lower(successes: np.ndarray, trials: int | np.ndarray, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound of a binomial proportion.

    Equals ``statsmodels``' ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]`` that Cohen uses;
    0.0 where there are no successes. Real-valued successes are allowed (the beta quantile interpolates).
    """
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.broadcast_to(np.asarray(trials, dtype=np.float64), successes.shape)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, successes, trials - successes + 1)
    return np.where(successes > 0, bound, 0.0)


def clopper_pearson_bounds(successes: np.ndarray, trials: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided (1 - alpha) Clopper-Pearson lower and upper bounds of a binomial proportion, each at level
    alpha (for ``successes`` of ``trials``, arrays of the same shape)."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        upper = np.where(successes < trials, beta.ppf(1 - alpha, successes + 1, trials - successes), 1.0)
    return clopper_pearson_lower(successes, trials, alpha), upper


def radius_threshold(radius: float, sigma: float) -> float:
    """p* = Phi(radius / sigma): the smoothed classifier is robust at l2 radius ``radius`` exactly when its
    top-class probability p_A is at least p*."""
    return float(norm.cdf(radius / sigma))


def radius_from_bound(pa_lower: np.ndarray, sigma: float) -> np.ndarray:
    """Cohen's radius sigma * Phi^-1(pA_lower) where pA_lower >= 1/2, else 0.0 (abstain)."""
    pa_lower = np.asarray(pa_lower, dtype=float)
    return np.where(pa_lower >= 0.5, sigma * norm.ppf(np.maximum(pa_lower, 0.5)), 0.0)


def largest_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can give with ``n`` estimation samples at ``alpha``: all n on the top class
    give pA_lower = alpha^(1/n), so the radius is sigma * Phi^-1(alpha^(1/n)) (l2, [0, 1] pixel units)."""
    return float(radius_from_bound(clopper_pearson_lower(n, n, alpha), sigma))


def projected_radius(successes: np.ndarray, trials: np.ndarray, next_trials: int, alpha: float, sigma: float) -> np.ndarray:
    """The radius the next round (``next_trials`` samples in all) would certify if the observed share of
    top-class samples stayed the same: the stopping rule of adaptive certification compares it with the
    radius certified so far. (A heuristic for when to stop; the guarantee does not depend on it.)"""
    share = np.asarray(successes, dtype=float) / np.asarray(trials, dtype=float)
    lower, _ = clopper_pearson_bounds(share * next_trials, np.full_like(share, next_trials), alpha)
    return radius_from_bound(lower, sigma)


def _round_up_to_chunk(size: int) -> int:
    return -(-size // NOISE_CHUNK_SIZE) * NOISE_CHUNK_SIZE
