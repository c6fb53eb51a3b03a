"""Sample-efficient certification (fixed-radius decisions, adaptive radii) on the linear classifier whose
smoothed probabilities are known in closed form: at signed distance d from its boundary, p_A = Phi(|d| / sigma)
and the exact certified radius is |d|."""

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from smoothing_hf import ABSTAIN, Smoother, clopper_pearson_lower
from smoothing_hf.certification import (
    ADAPTIVE_CONFIDENCES,
    CONFIDENCE_SEQUENCES,
    clopper_pearson_bounds,
    largest_certifiable_radius,
    pilot_size,
    sample_schedule,
)
from smoothing_hf.noise import NOISE_CHUNK_SIZE

SIGMA = 0.25


def images_at(boundary, distances):
    return torch.stack([boundary.image_at(float(d)) for d in distances])


def test_schedule_grows_geometrically_in_whole_chunks_up_to_max_n():
    assert sample_schedule(100_000) == [128, 512, 2048, 8192, 32768, 100_000]
    assert sample_schedule(6000, growth=2.0) == [128, 256, 512, 1024, 2048, 4096, 6000]
    assert sample_schedule(100) == [100]
    for schedule in (sample_schedule(100_000), sample_schedule(777, growth=1.5)):
        assert all(n % NOISE_CHUNK_SIZE == 0 for n in schedule[:-1])
        assert schedule == sorted(set(schedule))


def test_one_sided_bounds_are_the_exact_clopper_pearson_bounds():
    successes, trials, alpha = np.array([0, 3, 50, 99, 100]), np.full(5, 100), 0.01
    lower, upper = clopper_pearson_bounds(successes, trials, alpha)
    np.testing.assert_allclose(lower, clopper_pearson_lower(successes, 100, alpha))
    # At p = upper, seeing `successes` or fewer has probability exactly alpha.
    np.testing.assert_allclose(binom.cdf(successes[:-1], 100, upper[:-1]), alpha, rtol=1e-6)
    assert upper[-1] == 1.0


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_fixed_radius_decisions_are_sound_where_the_true_radius_is_just_below(linear_boundary, confidence):
    """At distance 0.2499 the true radius is just below r = 0.25 (p_A < Phi(r / sigma)): certifying is an
    error, allowed with probability alpha per point. Testing each of the K = 6 rounds at the full alpha
    instead of alpha / K fails this test (measured: 67 errors where 35 are allowed; 12 with alpha / K)."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    alpha, points = 0.05, 400
    distances = np.where(np.arange(points) % 2, 0.2499, -0.2499)
    decisions = smoother.certify_at_radius(
        images_at(linear_boundary, distances),
        0.25,
        n0=64,
        max_n=4096,
        alpha=alpha,
        batch_size=8192,
        seed=11,
        growth=2.0,
        confidence=confidence,
    )
    certified = np.array([d.certified for d in decisions])
    assert certified.sum() <= binom.ppf(0.999, points, alpha)
    assert all(d.samples <= 64 + 4096 for d in decisions)


def test_fixed_radius_certifies_far_points_with_few_samples_and_refutes_near_ones(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    distances = np.array([-0.8, -0.5, 0.5, 0.8, 0.02, -0.05])
    decisions = smoother.certify_at_radius(
        images_at(linear_boundary, distances), 0.25, n0=100, max_n=100_000, alpha=0.001, batch_size=4096, seed=2,
        confidence="bonferroni",
    )
    assert [d.certified for d in decisions] == [True, True, True, True, False, False]
    assert [d.prediction for d in decisions[:4]] == [0, 0, 1, 1]
    # p_A >= Phi(2) = 0.977 where certified: one or two rounds (128 or 512 draws) settle it.
    assert all(d.samples <= 100 + 512 for d in decisions[:4])
    # Near the boundary p_A is about Phi(0.2) = 0.58 << Phi(1) = 0.84: the first round refutes it.
    assert all(d.samples == 100 + 128 for d in decisions[4:])


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_fixed_radius_decisions_do_not_depend_on_batch_size_or_batching(linear_boundary, confidence):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    distances = np.linspace(-0.4, 0.4, 9)
    images = images_at(linear_boundary, distances)
    kwargs = dict(n0=50, max_n=5000, alpha=0.01, seed=4, confidence=confidence)
    batched = smoother.certify_at_radius(images, 0.2, batch_size=4096, **kwargs)
    assert smoother.certify_at_radius(images, 0.2, batch_size=100, **kwargs) == batched
    seeds = [derived for derived in _derived_seeds(4, len(images))]
    alone = [
        smoother.certify_at_radius(image, 0.2, batch_size=333, **{**kwargs, "seed": s})
        for image, s in zip(images, seeds)
    ]
    assert alone == batched


@pytest.mark.parametrize("confidence", CONFIDENCE_SEQUENCES)
def test_all_rounds_draw_the_noise_of_fixed_n_certification(linear_boundary, confidence):
    """An undecided image draws, over its rounds, exactly the max_n estimation samples ``certify`` draws
    with n = max_n: at d = 0.25 and r = 0.25 nothing is settled before the end."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    image = linear_boundary.image_at(0.25)
    decision = smoother.certify_at_radius(
        image, 0.25, n0=100, max_n=3000, alpha=0.001, batch_size=512, seed=5, confidence=confidence
    )
    assert decision.samples == 3100
    adaptive = smoother.certify(
        image, n0=100, n=3000, alpha=0.001, batch_size=512, seed=5, tolerance=1e-9, confidence="bonferroni"
    )
    fixed = smoother.certify(image, n0=100, n=3000, alpha=0.001, batch_size=512, seed=5)
    assert adaptive.samples == fixed.samples == 3100
    assert adaptive.count == fixed.count and adaptive.selection_count == fixed.selection_count


@pytest.mark.parametrize("confidence", ADAPTIVE_CONFIDENCES)
def test_adaptive_radius_is_sound_on_the_linear_classifier(linear_boundary, confidence):
    """The adaptive certificate may exceed the true radius |d| (or name the wrong class) only with
    probability alpha per point, whatever round it stopped at."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    alpha, points = 0.05, 300
    distances = np.linspace(-0.6, 0.6, points)
    certificates = smoother.certify(
        images_at(linear_boundary, distances), n0=64, n=8192, alpha=alpha, batch_size=8192, seed=7, tolerance=0.01,
        confidence=confidence,
    )
    truth = (distances > 0).astype(int)
    predictions = np.array([c.prediction for c in certificates])
    radii = np.array([c.radius for c in certificates])
    answered = predictions != ABSTAIN
    wrong = answered & ((predictions != truth) | (radii > np.abs(distances)))
    assert wrong.sum() <= binom.ppf(0.999, points, alpha)
    # And it is close where p_A is well inside (1/2, 1): within the sampling slack.
    middle = np.abs(distances) > 0.1
    assert np.median(np.abs(distances[middle]) - radii[middle]) < 0.05


def test_adaptive_stops_early_when_more_samples_would_not_pay(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = images_at(linear_boundary, [0.1, 1.8])
    kwargs = dict(n0=100, n=100_000, alpha=0.001, batch_size=4096, seed=8, confidence="bonferroni")
    coarse = smoother.certify(images, tolerance=1.0, **kwargs)
    assert [c.samples for c in coarse] == [228, 228]  # no next round can add a whole radius of 1.0
    fine = smoother.certify(images, tolerance=0.02, **kwargs)
    # Far from the boundary every draw agrees and each round still raises the radius by more than 0.02.
    assert fine[1].samples == 100_100
    assert fine[1].radius == pytest.approx(SIGMA * norm.ppf((0.001 / 6) ** (1 / 100_000)))
    # Near it (p_A = Phi(0.4) = 0.66) the radius saturates at 0.1 and sampling stops well before the budget.
    assert fine[0].samples < 10_000 and fine[0].prediction == 1 and 0 < fine[0].radius <= 0.1


@pytest.mark.parametrize("confidence", ADAPTIVE_CONFIDENCES)
def test_adaptive_does_not_abstain_for_a_small_gain_where_the_budget_establishes_the_class(
    linear_boundary, confidence
):
    """At distance 0.02 (p_A = Phi(0.08) = 0.532) n = 100,000 establishes the class (fixed-n CERTIFY names it,
    radius about 0.015) though any radius there is under the tolerance. Stopping for a gain under the tolerance
    before the class was established used to abstain after the first look; the class is a whole gain."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = images_at(linear_boundary, [0.02, -0.02])
    kwargs = dict(n0=100, n=100_000, alpha=0.001, batch_size=8192, seed=4)
    fixed = smoother.certify(images, **kwargs)
    adaptive = smoother.certify(images, tolerance=0.05, confidence=confidence, **kwargs)
    assert [c.prediction for c in fixed] == [1, 0]
    assert [c.prediction for c in adaptive] == [1, 0]
    assert all(0 < c.radius < 0.02 for c in adaptive)


@pytest.mark.parametrize("confidence", ADAPTIVE_CONFIDENCES)
def test_adaptive_certificates_do_not_depend_on_batch_size(linear_boundary, confidence):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = images_at(linear_boundary, np.linspace(-0.5, 0.5, 7))
    kwargs = dict(n0=50, n=5000, alpha=0.01, seed=9, tolerance=0.02, confidence=confidence)
    assert smoother.certify(images, batch_size=64, **kwargs) == smoother.certify(images, batch_size=5000, **kwargs)


def test_two_stage_bound_is_clopper_pearson_at_the_whole_alpha_on_draws_the_pilot_never_saw(linear_boundary):
    """Near the boundary (p_A = Phi(1.2) = 0.885) a tolerance of 0.02 needs a few thousand draws: the pilot
    picks them, and pA_lower is the exact bound of cA's count among them alone, at alpha itself (no union
    bound, no mixture), so the radius is within about the tolerance of fixed-n CERTIFY's at the whole budget."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = images_at(linear_boundary, [0.3, -0.3])
    n0, n, alpha = 100, 100_000, 0.001
    kwargs = dict(n0=n0, n=n, alpha=alpha, batch_size=4096, seed=6)
    fixed = smoother.certify(images, **kwargs)
    two_stage = smoother.certify(images, tolerance=0.02, confidence="two_stage", **kwargs)
    assert pilot_size(n) == 512
    for staged, full in zip(two_stage, fixed):
        fresh = staged.samples - n0 - pilot_size(n)
        assert 0 < fresh < 10_000 and fresh % NOISE_CHUNK_SIZE == 0
        assert staged.pa_lower == pytest.approx(float(clopper_pearson_lower(staged.count, fresh, alpha)), rel=1e-12)
        assert staged.prediction == full.prediction and staged.selection_count == full.selection_count
        assert full.radius - 0.04 < staged.radius <= 0.3


def test_two_stage_draws_the_chunks_of_the_fixed_n_stream(linear_boundary):
    """With every draw on cA (far from the boundary) the radius grows with n to the end, so a tolerance far
    below that growth takes all n - pilot draws left: the same chunks fixed-n CERTIFY counts, minus the pilot's."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    image = linear_boundary.image_at(1.8)
    kwargs = dict(n0=100, n=3000, alpha=0.001, batch_size=512, seed=5)
    staged = smoother.certify(image, tolerance=1e-9, confidence="two_stage", **kwargs)
    assert staged.samples == 100 + 3000 and staged.count == 3000 - pilot_size(3000)
    assert staged.radius == pytest.approx(SIGMA * norm.ppf(0.001 ** (1 / (3000 - 128))))


def test_sequential_bad_input(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    image = linear_boundary.image_at(0.3)
    with pytest.raises(ValueError, match="`radius` must be"):
        smoother.certify_at_radius(image, -0.1, n0=10, max_n=100, alpha=0.01, batch_size=10)
    with pytest.raises(ValueError, match="`max_n` must be >= n0"):
        smoother.certify_at_radius(image, 0.1, n0=100, max_n=50, alpha=0.01, batch_size=10)
    for growth in (1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="`growth` must be a finite number > 1"):
            smoother.certify_at_radius(image, 0.1, n0=10, max_n=100, alpha=0.01, batch_size=10, growth=growth)
    for radius in (float("inf"), float("nan")):  # no finite sample certifies an infinite radius
        with pytest.raises(ValueError, match="`radius` must be a finite number >= 0"):
            smoother.certify_at_radius(image, radius, n0=10, max_n=100, alpha=0.01, batch_size=10)
    with pytest.raises(ValueError, match="`n` must be > 128 for confidence='two_stage'"):
        smoother.certify(image, n0=10, n=128, alpha=0.01, batch_size=10, tolerance=0.1, confidence="two_stage")
    with pytest.raises(ValueError, match="the adaptive mode's two-stage radius"):
        smoother.certify_at_radii(image, [0.1], n0=10, max_n=500, alpha=0.01, batch_size=10, confidence="two_stage")
    with pytest.raises(ValueError, match="decides radius thresholds only"):
        smoother.certify(image, n0=10, n=500, alpha=0.01, batch_size=10, tolerance=0.1, confidence="one_sided")
    for tolerance in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="`tolerance` must be"):
            smoother.certify(image, n0=10, n=100, alpha=0.01, batch_size=10, tolerance=tolerance)


def _derived_seeds(seed, count):
    from smoothing_hf import derive_seed

    return [derive_seed(seed, i) for i in range(count)]


def test_the_largest_certifiable_radius_is_what_a_unanimous_classifier_certifies():
    # Hand computation: 0.001^(1/6000) = exp(ln(0.001) / 6000) = 0.998849, Phi^-1(0.998849) = 3.0483, times 0.25.
    assert largest_certifiable_radius(6000, 0.001, 0.25) == pytest.approx(0.25 * 3.0483, abs=1e-4)
    assert largest_certifiable_radius(5000, 0.001, 0.25) < 0.75 < largest_certifiable_radius(6000, 0.001, 0.25)

    def always_class_one(pixels):
        return torch.tensor([0.0, 1.0]).expand(len(pixels), 2)

    smoother = Smoother(always_class_one, num_classes=2, sigma=SIGMA)
    (certificate,) = smoother.certify(torch.zeros(1, 1, 4, 4), n0=10, n=6000, alpha=0.001, batch_size=1000)
    assert certificate.prediction == 1
    assert certificate.radius == pytest.approx(largest_certifiable_radius(6000, 0.001, SIGMA), rel=1e-9)
