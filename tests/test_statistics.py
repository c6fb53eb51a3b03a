"""CERTIFY and PREDICT against a base classifier whose smoothed probabilities are known in closed form."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from smoothing_hf import ABSTAIN, Smoother, certificates_from_counts, clopper_pearson_lower

SIGMA = 0.25


def test_clopper_pearson_lower_is_the_exact_one_sided_bound():
    n, alpha = 500, 0.01
    for successes in (1, 37, 250, 499):
        bound = clopper_pearson_lower(np.array([successes]), n, alpha)[0]
        # The defining property: at p = bound, seeing `successes` or more has probability exactly alpha.
        assert binom.sf(successes - 1, n, bound) == pytest.approx(alpha, rel=1e-6)
    assert clopper_pearson_lower(np.array([0]), n, alpha)[0] == 0.0
    assert clopper_pearson_lower(np.array([n]), n, alpha)[0] == pytest.approx(alpha ** (1 / n))


def test_far_from_the_boundary_the_radius_is_sigma_times_the_all_correct_quantile(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    n, alpha = 1000, 0.001
    # 1.8 / 0.25 = 7.2 standard deviations from the boundary: every noisy sample is classified alike.
    for distance, label in ((1.8, 1), (-1.8, 0)):
        prediction, radius, pa_lower, count, selection_count, samples = smoother.certify(
            linear_boundary.image_at(distance), n0=100, n=n, alpha=alpha, batch_size=256
        )
        assert (prediction, count, selection_count, samples) == (label, n, 100, 1100)
        assert pa_lower == pytest.approx(alpha ** (1 / n))
        assert radius == pytest.approx(SIGMA * norm.ppf(alpha ** (1 / n)))


def test_certified_radius_is_sound_and_tight_on_a_linear_classifier(linear_boundary):
    """The true radius at distance d is |d|. The certificate may exceed it (or name the wrong class) only
    with probability alpha per point; and with n = 4000 it should come close to it."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    alpha, n = 0.01, 4000
    distances = np.linspace(-0.5, 0.5, 200)
    images = torch.stack([linear_boundary.image_at(d) for d in distances])
    certificates = smoother.certify(images, n0=100, n=n, alpha=alpha, batch_size=4096, seed=3)
    truth = (distances > 0).astype(int)
    predictions = np.array([c.prediction for c in certificates])
    radii = np.array([c.radius for c in certificates])
    answered = predictions != ABSTAIN
    wrong = answered & ((predictions != truth) | (radii > np.abs(distances)))
    # Violations are Binomial(200, <= alpha): more than its 0.999 quantile would be a broken bound.
    assert wrong.sum() <= binom.ppf(0.999, len(distances), alpha)
    # Tightness: where pA is well inside (1/2, 1), the bound loses only the sampling slack.
    middle = answered & (np.abs(distances) > 0.1)
    assert np.median(np.abs(distances[middle]) - radii[middle]) < 0.05
    assert answered[np.abs(distances) > 0.1].all()


def test_predict_abstains_on_the_boundary_and_answers_far_from_it(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    on_boundary = torch.stack([linear_boundary.image_at(0.0)] * 20)
    # pA = 1/2 exactly: each abstains with probability >= 1 - alpha.
    assert smoother.predict(on_boundary, n=1000, alpha=0.001, batch_size=512) == [ABSTAIN] * 20
    far = torch.stack([linear_boundary.image_at(-1.0), linear_boundary.image_at(1.0)])
    assert smoother.predict(far, n=100, alpha=0.001, batch_size=512) == [0, 1]
    assert smoother.predict(linear_boundary.image_at(1.0), n=100, alpha=0.001, batch_size=512) == 1


def test_predict_follows_the_binomial_test_threshold():
    """With a constant classifier all n samples agree; the two-sided p-value is 2 * 0.5 ** n."""

    def constant(pixels):
        logits = torch.zeros(len(pixels), 3)
        logits[:, 2] = 1.0
        return logits

    smoother = Smoother(constant, num_classes=3, sigma=0.5)
    image = torch.rand(1, 2, 2)
    assert smoother.predict(image, n=10, alpha=2 * 0.5**10, batch_size=8) == 2  # p-value == alpha
    with pytest.warns(UserWarning, match="too small"):
        assert smoother.predict(image, n=10, alpha=2 * 0.5**10 * 0.99, batch_size=8) == ABSTAIN


def test_certify_abstains_when_the_lower_bound_is_below_one_half():
    selection = np.array([[60, 40], [60, 40]])
    estimation = np.array([[505, 495], [900, 100]])
    weak, strong = certificates_from_counts(selection, estimation, alpha=0.001, sigma=0.5)
    assert (weak.prediction, weak.radius) == (ABSTAIN, 0.0)
    assert weak.pa_lower < 0.5
    assert strong.prediction == 0
    assert strong.radius == pytest.approx(0.5 * norm.ppf(clopper_pearson_lower(np.array([900]), 1000, 0.001)[0]))


def test_certify_warns_when_n_cannot_reach_one_half(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    with pytest.warns(UserWarning, match="log2"):
        certificate = smoother.certify(linear_boundary.image_at(1.8), n0=10, n=9, alpha=0.001, batch_size=16)
    # 0.001 ** (1 / 9) = 0.46 < 1/2: even a perfect base classifier cannot be certified.
    assert certificate.prediction == ABSTAIN and math.isclose(certificate.pa_lower, 0.001 ** (1 / 9))
