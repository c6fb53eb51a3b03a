"""The bounds behind every certificate: Clopper-Pearson confidence bounds of p_A and Cohen's radius formulas.

Exact binomial bounds from beta quantiles (SciPy), no asymptotics. Radii are l2 distances in the space the
noise is added in ([0, 1] pixels); sigma is the noise standard deviation in the same units.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, norm

from ..checks import check_alpha, check_positive_int, check_sigma


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


def clopper_pearson_upper(successes: np.ndarray, trials: int | np.ndarray, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound of a binomial proportion; 1.0 where every
    trial is a success."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.broadcast_to(np.asarray(trials, dtype=np.float64), successes.shape)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(1 - alpha, successes + 1, trials - successes)
    return np.where(successes < trials, bound, 1.0)


def clopper_pearson_bounds(successes: np.ndarray, trials: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided (1 - alpha) Clopper-Pearson lower and upper bounds of a binomial proportion, each at level
    alpha (for ``successes`` of ``trials``, arrays of the same shape)."""
    return clopper_pearson_lower(successes, trials, alpha), clopper_pearson_upper(successes, trials, alpha)


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
    n, alpha, sigma = check_positive_int(n, "n"), check_alpha(alpha), check_sigma(sigma)
    return float(radius_from_bound(clopper_pearson_lower(n, n, alpha), sigma))

