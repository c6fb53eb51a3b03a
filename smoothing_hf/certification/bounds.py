"""The bounds behind every certificate: Clopper-Pearson confidence bounds of p_A and Cohen's radius formulas.

Exact binomial bounds from beta quantiles (SciPy), no asymptotics; the randomized Clopper-Pearson bound by
bisection on SciPy's binomial tail (no library has it). Radii are l2 distances in the space the
noise is added in ([0, 1] pixels); sigma is the noise standard deviation in the same units.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, binom, norm

from ..checks import check_alpha, check_positive_int, check_sigma

_BISECTION_STEPS = 60  # halvings of an interval within [0, 1]: 2^-60 is below float64's resolution there


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


def randomized_clopper_pearson_lower(
    successes: np.ndarray, trials: int | np.ndarray, alpha: float, uniforms: np.ndarray
) -> np.ndarray:
    """One-sided (1 - alpha) randomized Clopper-Pearson lower bound: for k successes of n trials and a uniform
    U in [0, 1) drawn independently of them, the p at which P(X > k) + U P(X = k) = alpha, X ~ Binomial(n, p)
    (the inversion of the uniformly most powerful one-sided test; Voracek 2024 for randomized smoothing).

    It lies between the classical bounds at k and k + 1, so it is never below ``clopper_pearson_lower``: U near
    1 gives the classical bound, U near 0 the one at k + 1. Its error probability is alpha where the classical
    bound's is at most alpha. Where all n agree (k = n) it is (alpha / U)^(1/n), in expectation one nat above
    the classical alpha^(1/n) in the exponent; there U counts as at least 2 alpha, so that the bound stays
    below 1 (an infinite radius, which U < alpha would claim): at most (1/2)^(1/n), for 2 alpha nats of the
    gain. ``successes`` (integers), ``trials`` and ``uniforms`` broadcast together.
    """
    successes, uniforms = np.broadcast_arrays(np.asarray(successes, dtype=np.float64), np.asarray(uniforms, float))
    trials = np.broadcast_to(np.asarray(trials, dtype=np.float64), successes.shape)
    uniforms = np.where(successes >= trials, np.maximum(uniforms, min(2 * alpha, 1.0)), uniforms)

    def tail(p: np.ndarray) -> np.ndarray:  # rises with p: a mixture of P(X > k) and P(X >= k)
        return binom.sf(successes, trials, p) + uniforms * binom.pmf(successes, trials, p)

    low = clopper_pearson_lower(successes, trials, alpha)  # tail(low) <= alpha
    high = np.where(successes < trials, clopper_pearson_lower(successes + 1, trials, alpha), 1.0)  # >= alpha
    reached = tail(low) >= alpha  # no successes and U >= alpha: the bound is 0
    return np.where(reached, 0.0, bisect_boundary(lambda p: tail(p) < alpha, low, high))


def bisect_boundary(excluded, outside: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Bisect, elementwise, between points ``outside`` a set (where ``excluded`` is True) and ``inside`` it;
    return the last point found outside (so a lower bound errs low and an upper bound high)."""
    for _ in range(_BISECTION_STEPS):
        middle = (outside + inside) / 2
        out = excluded(middle)
        outside, inside = np.where(out, middle, outside), np.where(out, inside, middle)
    return outside


def lower_bound(
    successes: np.ndarray, trials: int | np.ndarray, alpha: float, uniforms: np.ndarray | None = None
) -> np.ndarray:
    """A fixed-n certificate's pA_lower: the classical Clopper-Pearson bound, or with ``uniforms`` the randomized
    one."""
    if uniforms is None:
        return clopper_pearson_lower(successes, trials, alpha)
    return randomized_clopper_pearson_lower(successes, trials, alpha, uniforms)


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
    give pA_lower = alpha^(1/n), so the radius is sigma * Phi^-1(alpha^(1/n)) (l2, [0, 1] pixel units). That is
    the classical bound's; the randomized one reaches up to sigma * Phi^-1((1/2)^(1/n))."""
    n, alpha, sigma = check_positive_int(n, "n"), check_alpha(alpha), check_sigma(sigma)
    return float(radius_from_bound(clopper_pearson_lower(n, n, alpha), sigma))

