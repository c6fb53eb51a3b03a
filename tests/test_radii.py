"""Several radii from one confidence sequence (``Smoother.certify_at_radii``), the betting confidence sequence,
and the scheduler that packs images of different stages into full forward batches. On the linear classifier
whose smoothed probabilities are known in closed form: at signed distance d from its boundary,
p_A = Phi(|d| / sigma) and the exact certified radius is |d|."""

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import betaln
from scipy.stats import binom, norm

from smoothing_hf import ABSTAIN, Smoother, derive_seed
from smoothing_hf.certification import (
    BOUNDING_SEQUENCES,
    CONFIDENCE_SEQUENCES,
    clopper_pearson_bounds,
    confidence_sequence,
)
from smoothing_hf.modes import check_mode

SIGMA = 0.25
RADII = (0.0, 0.25, 0.5, 0.75)


def images_at(boundary, distances):
    return torch.stack([boundary.image_at(float(d)) for d in distances])


# ---------------------------------------------------------------------------------------------- the sequence


def test_betting_bound_of_unanimous_draws_is_the_closed_form():
    """All t draws on cA: the Jeffreys-mixture wealth at p0 is B(t + 1/2, 1/2) / B(1/2, 1/2) / p0^t, so the
    lower bound is the p0 where it equals 1 / alpha."""
    sequence = confidence_sequence("betting", 0.001, 100_000)
    trials = np.array([128, 1024, 8192, 100_000])
    lower, upper = sequence.bounds(trials, trials)
    expected = np.exp((np.log(0.001) + betaln(trials + 0.5, 0.5) - betaln(0.5, 0.5)) / trials)
    np.testing.assert_allclose(lower, expected, rtol=1e-12)
    assert (upper == 1.0).all()


@pytest.mark.parametrize("confidence", BOUNDING_SEQUENCES)
def test_sequences_cover_p_at_every_checkpoint_at_once(confidence):
    """Over many Bernoulli streams at p = 0.9, the share of streams whose bounds miss p at some checkpoint is at
    most alpha; reading a plain Clopper-Pearson interval at every checkpoint misses far more often."""
    alpha, streams, max_n = 0.1, 400, 4096
    sequence = confidence_sequence(confidence, alpha, max_n, growth=2.0)
    draws = np.random.default_rng(0).random((streams, max_n)) < 0.9
    checkpoints = np.array(sequence.checkpoints)
    successes = draws.cumsum(axis=1)[:, checkpoints - 1]
    lower, upper = sequence.bounds(successes, np.broadcast_to(checkpoints, successes.shape))
    missed = ((lower > 0.9) | (upper < 0.9)).any(axis=1)
    assert missed.mean() <= binom.ppf(0.999, streams, alpha) / streams
    assert (lower <= successes / checkpoints).all() and (successes / checkpoints <= upper).all()
    trials = np.broadcast_to(checkpoints, successes.shape)
    naive_lower, naive_upper = clopper_pearson_bounds(successes, trials, alpha / 2)
    naive_missed = ((naive_lower > 0.9) | (naive_upper < 0.9)).any(axis=1)
    assert naive_missed.mean() > binom.ppf(0.999, streams, alpha) / streams  # what the test would catch


@pytest.mark.parametrize("confidence", BOUNDING_SEQUENCES)
def test_threshold_decisions_agree_with_the_bounds(confidence):
    sequence = confidence_sequence(confidence, 0.01, 10_000)
    successes = np.array([0, 10, 500, 900, 990, 1000])
    thresholds = np.array([0.5, 0.6, 0.84, 0.95, 0.999])
    above, below = sequence.decide(successes, 1000, thresholds)
    lower, upper = sequence.bounds(successes, 1000)
    # The bisection's bounds err on the safe side by at most 1e-12; no threshold sits that close here.
    np.testing.assert_array_equal(above, lower[:, None] >= thresholds)
    np.testing.assert_array_equal(below, upper[:, None] < thresholds)


def test_one_sided_tests_pass_a_true_null_at_most_alpha_of_the_time():
    """Bernoulli streams at p = p* exactly, the edge of both nulls, read after every chunk: the test of p > p*
    passes on some chunk in at most alpha of them, and so does the test of p < p*. Reading a plain one-sided
    Clopper-Pearson bound at every chunk passes far more often."""
    alpha, streams, max_n, threshold = 0.1, 400, 4096, 0.9
    sequence = confidence_sequence("one_sided", alpha, max_n)
    draws = np.random.default_rng(1).random((streams, max_n)) < threshold
    ever_above, ever_below, naive = (np.zeros(streams, dtype=bool) for _ in range(3))
    for trials in sequence.checkpoints:
        successes = draws[:, :trials].sum(axis=1)
        above, below = sequence.decide(successes, trials, np.array([threshold]))
        ever_above |= above[:, 0]
        ever_below |= below[:, 0]
        naive |= clopper_pearson_bounds(successes, np.full(streams, trials), alpha)[0] >= threshold
    allowed = binom.ppf(0.999, streams, alpha)
    assert ever_above.sum() <= allowed and ever_below.sum() <= allowed, (ever_above.sum(), ever_below.sum())
    assert naive.sum() > allowed  # what the test would catch


def test_one_sided_test_of_unanimous_draws_is_the_restricted_mixture():
    """All t draws on cA: the wealth against p* is the Jeffreys prior restricted to (p*, 1], integrated
    numerically here, over p*^t. At p* = Phi(3) (r = 0.75 at sigma = 0.25) and alpha = 0.001 it reaches
    1 / alpha after 5,900-6,000 draws: above the 5,114 that any valid test needs (log(1 / alpha) / -log p*),
    and 30% under the 8,960 of the betting sequence and 8,192 of bonferroni."""
    alpha, threshold = 0.001, norm.cdf(3)

    def wealth(t):
        restricted, _ = quad(lambda q: (q / threshold) ** t * q ** -0.5, threshold, 1, weight="alg", wvar=(0, -0.5))
        mass, _ = quad(lambda q: q ** -0.5, threshold, 1, weight="alg", wvar=(0, -0.5))
        return restricted / mass

    needed = next(t for t in range(5000, 7000, 10) if wealth(t) >= 1 / alpha)
    assert 5900 <= needed <= 6000
    assert np.log(1 / alpha) / -np.log(threshold) == pytest.approx(5114, abs=1)
    sequence = confidence_sequence("one_sided", alpha, 100_000)
    for t in (needed - 10, needed):
        above, below = sequence.decide(np.array([t]), t, np.array([threshold]))
        assert above[0, 0] == (wealth(t) >= 1 / alpha) and not below[0, 0]

    def unanimous_draws_to_certify(confidence):
        checkpoints = confidence_sequence(confidence, alpha, 100_000).checkpoints
        return next(t for t in checkpoints
                    if confidence_sequence(confidence, alpha, 100_000).decide(np.array([t]), t, [threshold])[0][0, 0])

    assert [unanimous_draws_to_certify(c) for c in ("one_sided", "betting", "bonferroni")] == [6016, 8960, 8192]


# ---------------------------------------------------------------------------------------------- several radii


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_no_radius_is_certified_that_should_not_be_more_often_than_alpha_allows(linear_boundary, confidence):
    """Points just inside each radius (true radius 0.001 below it), on both sides of the boundary: an image is
    wrong when some radius it certifies exceeds its true radius or its class is wrong; at most alpha of them."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    alpha, per_radius = 0.05, 80
    inside = [np.full(per_radius, r - 0.001) for r in (0.25, 0.5, 0.75)] + [np.full(per_radius, 0.001)]
    distances = np.concatenate(inside)
    distances = distances * np.where(np.arange(len(distances)) % 2, 1, -1)
    decisions = smoother.certify_at_radii(
        images_at(linear_boundary, distances), RADII, n0=64, max_n=4096, alpha=alpha, batch_size=8192, seed=3,
        confidence=confidence,
    )
    truth = (distances > 0).astype(int)
    certified = np.array([d.certified for d in decisions])
    too_far = (certified & (np.array(RADII)[None, :] > np.abs(distances)[:, None])).any(axis=1)
    wrong_class = np.array([d.prediction not in (ABSTAIN, t) for d, t in zip(decisions, truth)])
    assert (too_far | wrong_class).sum() <= binom.ppf(0.999, len(distances), alpha)
    # Certified at r implies certified at every smaller radius, and a class was named.
    assert (np.diff(certified.astype(int), axis=1) <= 0).all()
    assert all(d.prediction != ABSTAIN for d in decisions if any(d.certified))


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_points_far_from_every_threshold_settle_all_radii_with_few_samples(linear_boundary, confidence):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    distances = np.array([0.12, -0.37, 0.63, -1.0, 1.5])
    decisions = smoother.certify_at_radii(
        images_at(linear_boundary, distances), RADII, n0=100, max_n=100_000, alpha=0.001, batch_size=1024, seed=4,
        confidence=confidence,
    )
    assert [d.certified for d in decisions] == [tuple(r < abs(d) for r in RADII) for d in distances]
    assert [d.prediction for d in decisions] == [1, 0, 1, 0, 1]
    samples = np.array([d.samples for d in decisions])
    # Points 0.12 or more from every radius up to 0.5: at most 2.5% of max_n.
    assert (samples[np.abs(distances) < 0.75] <= 2500).all(), samples
    # Certifying r = 0.75 needs p_A >= Phi(3) = 0.99865: at least log(1 / alpha) / -log(Phi(3)) = 5,100 unanimous
    # draws for any valid test; these sequences take at most 10% of max_n.
    assert ((5100 <= samples[np.abs(distances) > 0.75]) & (samples[np.abs(distances) > 0.75] <= 10_000)).all(), samples


def test_certified_follows_the_order_of_the_radii(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = images_at(linear_boundary, [0.3, -0.6, 0.05])
    kwargs = dict(n0=50, max_n=20_000, alpha=0.01, batch_size=2048, seed=6)
    ordered = smoother.certify_at_radii(images, [0.0, 0.25, 0.5], **kwargs)
    shuffled = smoother.certify_at_radii(images, [0.5, 0.0, 0.25], **kwargs)
    for a, b in zip(ordered, shuffled):
        assert b.certified == (a.certified[2], a.certified[0], a.certified[1])
        assert (a.prediction, a.samples) == (b.prediction, b.samples)


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_radii_decisions_do_not_depend_on_batch_size_or_batching(linear_boundary, confidence):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = images_at(linear_boundary, np.linspace(-0.8, 0.8, 9))
    kwargs = dict(n0=50, max_n=8000, alpha=0.01, seed=2, confidence=confidence)
    batched = smoother.certify_at_radii(images, RADII, batch_size=4096, **kwargs)
    assert smoother.certify_at_radii(images, RADII, batch_size=100, **kwargs) == batched
    alone = [
        smoother.certify_at_radii(image, RADII, batch_size=333, **{**kwargs, "seed": derive_seed(2, i)})
        for i, image in enumerate(images)
    ]
    assert alone == batched
    # One radius: the same decision as certify_at_radius.
    single = smoother.certify_at_radius(images, 0.25, batch_size=512, **kwargs)
    several = smoother.certify_at_radii(images, [0.25], batch_size=512, **kwargs)
    assert [(d.prediction, d.certified, d.samples) for d in single] == [
        (d.prediction, d.certified[0], d.samples) for d in several
    ]


class BatchSizes(torch.nn.Module):
    """The wrapped classifier, recording the size of every forward batch."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier, self.sizes = classifier, []

    def forward(self, pixels):
        self.sizes.append(len(pixels))
        return self.classifier(pixels)


def test_few_undecided_images_still_fill_the_forward_batches(linear_boundary):
    """Two images near a threshold, read after every chunk of 128 draws: each step packs draws beyond their
    next checkpoint so that the batches stay full (1,024 samples), where drawing to the next checkpoint only
    would give batches of 256."""
    counting = BatchSizes(linear_boundary)
    smoother = Smoother(counting, num_classes=2, sigma=SIGMA)
    decisions = smoother.certify_at_radii(
        images_at(linear_boundary, [0.26, -0.24]), [0.25], n0=128, max_n=20_000, alpha=0.001, batch_size=1024,
        seed=1, confidence="betting",
    )
    estimation = counting.sizes[1:]  # after the one selection batch
    assert sum(d.samples for d in decisions) > 4 * 1024  # near the threshold: many steps
    assert np.mean(estimation) > 0.9 * 1024, estimation


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_futility_gives_up_on_radii_out_of_reach_and_never_adds_a_certificate(linear_boundary, confidence):
    """Points just under a threshold (true radius 0.002 below 0.25, 0.5 or 0.75) and away from them: without a
    futility level those under it run to max_n; with one they stop long before, and what is certified with
    futility is certified without it (giving up can only lose a True). Points far from every threshold
    decide as before."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    distances = np.array([0.248, -0.498, 0.748, -0.3, 0.9, -1.2])
    kwargs = dict(n0=100, max_n=100_000, alpha=0.001, batch_size=4096, seed=8, confidence=confidence)
    images = images_at(linear_boundary, distances)
    patient = smoother.certify_at_radii(images, RADII, **kwargs)
    hasty = smoother.certify_at_radii(images, RADII, futility=0.05, **kwargs)
    for slow, fast in zip(patient, hasty):
        assert all(f <= s for s, f in zip(slow.certified, fast.certified))
        assert fast.samples <= slow.samples and fast.prediction == slow.prediction
    under = np.arange(len(distances)) < 3
    assert all(d.samples == 100_100 for d, u in zip(patient, under) if u)
    assert all(d.samples <= 35_000 for d, u in zip(hasty, under) if u), [d.samples for d in hasty]  # a third
    # Just under a threshold, every radius below it stays certified.
    assert [d.certified for d in hasty[:3]] == [tuple(r < abs(d) for r in RADII) for d in distances[:3]]
    assert [d.certified for d in hasty[3:]] == [d.certified for d in patient[3:]]


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_futility_keeps_the_alpha_guarantee(linear_boundary, confidence):
    """The soundness test above, with a futility level: giving up never certifies."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    alpha, per_radius = 0.05, 60
    distances = np.concatenate([np.full(per_radius, r - 0.001) for r in (0.25, 0.5, 0.75)])
    distances = distances * np.where(np.arange(len(distances)) % 2, 1, -1)
    decisions = smoother.certify_at_radii(
        images_at(linear_boundary, distances), RADII, n0=64, max_n=4096, alpha=alpha, batch_size=8192, seed=5,
        confidence=confidence, futility=0.2,
    )
    certified = np.array([d.certified for d in decisions])
    too_far = (certified & (np.array(RADII)[None, :] > np.abs(distances)[:, None])).any(axis=1)
    assert too_far.sum() <= binom.ppf(0.999, len(distances), alpha)


def test_radii_bad_input(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    image = linear_boundary.image_at(0.3)
    kwargs = dict(n0=10, max_n=100, alpha=0.01, batch_size=10)
    for radii, message in (([], "non-empty sequence"), ((), "non-empty sequence"), ("0.25", "non-empty sequence"),
                           (0.25, "non-empty sequence"), ([0.25, 0.5, 0.25], "must not repeat a radius"),
                           ([0.1, -0.1], r"`radii\[1\]` must be a finite number >= 0"),
                           ([float("inf")], r"`radii\[0\]` must be a finite number >= 0"),
                           ([float("nan")], r"`radii\[0\]` must be a finite number >= 0")):
        with pytest.raises(ValueError, match=message):
            smoother.certify_at_radii(image, radii, **kwargs)
    with pytest.raises(TypeError, match=r"`radii\[0\]` must be"):
        smoother.certify_at_radii(image, ["eight"], **kwargs)
    with pytest.raises(ValueError, match="`max_n` must be >= n0"):
        smoother.certify_at_radii(image, RADII, **{**kwargs, "max_n": 5})
    with pytest.raises(ValueError, match="`confidence` must be one of"):
        smoother.certify_at_radii(image, RADII, confidence="hoeffding", **kwargs)
    for futility in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="`futility` must be"):
            smoother.certify_at_radii(image, RADII, futility=futility, **kwargs)
        with pytest.raises(ValueError, match="`futility` must be"):
            smoother.certify_at_radius(image, 0.25, futility=futility, **kwargs)
    with pytest.raises(TypeError, match="`futility` must be"):
        smoother.certify_at_radii(image, RADII, futility="0.05", **kwargs)
    with pytest.raises(ValueError, match="`confidence` must be one of"):
        smoother.certify(image, n0=10, n=100, alpha=0.01, batch_size=10, confidence="wald")
    # The one-sided tests decide thresholds; the adaptive mode needs bounds.
    message = r"`confidence`='one_sided' decides radius thresholds only, .* \['betting', 'bonferroni', 'two_stage'\]"
    with pytest.raises(ValueError, match=message):
        smoother.certify(image, n0=10, n=100, alpha=0.01, batch_size=10, tolerance=0.1, confidence="one_sided")
    with pytest.raises(ValueError, match=message):
        check_mode("adaptive", 10, 100, None, 1000, 0.1, 4.0, "one_sided", RADII, False)
    assert check_mode("radii", 10, 100, None, 1000, None, 4.0, "one_sided", RADII, False).name == "radii"
