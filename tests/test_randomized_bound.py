"""The randomized Clopper-Pearson bound: exact error probability alpha, never below the classical bound, and its
uniforms reproducible from a recorded seed."""

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from smoothing_hf import ABSTAIN, Smoother
from smoothing_hf.certification import clopper_pearson_lower, randomized_clopper_pearson_lower
from smoothing_hf.noise import bound_uniforms, image_seeds

SIGMA = 0.25


@pytest.mark.parametrize("successes", [0, 1, 37, 250, 499, 500])
def test_the_bound_solves_its_defining_equation_between_the_classical_bounds_at_k_and_k_plus_one(successes):
    n, alpha = 500, 0.01
    uniforms = np.array([0.03, 0.2, 0.5, 0.9, 0.999])
    bound = randomized_clopper_pearson_lower(np.full(5, successes), n, alpha, uniforms)
    classical = clopper_pearson_lower(np.array([successes]), n, alpha)[0]
    above = clopper_pearson_lower(np.array([successes + 1]), n, alpha)[0] if successes < n else 1.0
    assert np.all((classical <= bound) & (bound <= above))
    assert np.all(np.diff(bound) <= 0)  # a larger uniform, a smaller bound: U -> 1 is the classical bound
    tail = binom.sf(successes, n, bound) + uniforms * binom.pmf(successes, n, bound)
    solved = bound > 0  # no successes and U >= alpha: the bound is 0, where the tail is already >= alpha
    assert tail[solved] == pytest.approx(alpha, rel=1e-6)
    assert np.all(tail[~solved] >= alpha) and (successes == 0 or solved.all())


def test_where_all_draws_agree_it_is_alpha_over_u_to_the_one_over_n_and_stays_below_one():
    n, alpha = 1000, 0.001
    uniforms = np.array([0.0, alpha / 2, 2 * alpha, 0.1, 0.7])
    bound = randomized_clopper_pearson_lower(np.full(5, n), n, alpha, uniforms)
    # U below 2 alpha counts as 2 alpha: the bound stops at (1/2)^(1/n), a finite radius, instead of reaching 1.
    expected = (alpha / np.maximum(uniforms, 2 * alpha)) ** (1 / n)
    assert bound == pytest.approx(expected, rel=1e-12)
    assert bound.max() == pytest.approx(0.5 ** (1 / n)) and bound.max() < 1


@pytest.mark.parametrize("p", [0.5, 0.88])
def test_it_errs_with_probability_alpha_where_the_classical_bound_errs_less(p):
    """Draws X ~ Binomial(30, p) and U: the bound exceeds p in a share alpha of them (exactly, in expectation);
    the classical bound, whose error probability at this p is computed exactly, errs measurably less."""
    n, alpha, draws = 30, 0.1, 20_000
    generator = np.random.default_rng(0)
    successes, uniforms = generator.binomial(n, p, draws), generator.random(draws)
    errors = int((randomized_clopper_pearson_lower(successes, n, alpha, uniforms) > p).sum())
    assert binom.ppf(0.0005, draws, alpha) <= errors <= binom.ppf(0.9995, draws, alpha)
    k = np.arange(n + 1)
    classical_error = binom.pmf(k, n, p)[clopper_pearson_lower(k, n, alpha) > p].sum()
    assert classical_error < alpha - 0.02
    assert errors / draws > classical_error + 0.01


def test_randomized_certify_is_sound_on_the_linear_classifier_and_never_below_the_classical_radius(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    alpha, n = 0.01, 2000
    distances = np.linspace(-0.4, 0.4, 160)
    images = torch.stack([linear_boundary.image_at(d) for d in distances])
    kwargs = dict(n0=50, n=n, alpha=alpha, batch_size=4096, seed=3)
    classical = smoother.certify(images, **kwargs)
    randomized = smoother.certify(images, bound_seed=11, **kwargs)
    uniforms = bound_uniforms(11, image_seeds(3, len(images)))
    counts = np.array([c.count for c in randomized])
    assert [(c.count, c.selection_count, c.samples) for c in randomized] == [
        (c.count, c.selection_count, c.samples) for c in classical
    ]
    assert [c.pa_lower for c in randomized] == pytest.approx(
        randomized_clopper_pearson_lower(counts, n, alpha, uniforms).tolist(), rel=1e-12
    )
    gains = np.array([r.pa_lower - c.pa_lower for r, c in zip(randomized, classical)])
    assert np.all(gains >= 0) and gains.mean() > 0
    predictions = np.array([c.prediction for c in randomized])
    radii = np.array([c.radius for c in randomized])
    answered = predictions != ABSTAIN
    wrong = answered & ((predictions != (distances > 0)) | (radii > np.abs(distances)))
    assert wrong.sum() <= binom.ppf(0.999, len(distances), alpha)
    assert radii.max() <= SIGMA * norm.ppf(0.5 ** (1 / n))  # finite, whatever the uniforms


def test_the_uniforms_follow_the_bound_seed_not_the_batch(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = torch.stack([linear_boundary.image_at(d) for d in (0.05, 0.1, 0.2, 0.3)])
    kwargs = dict(n0=20, n=600, alpha=0.01, seed=5)
    whole = smoother.certify(images, batch_size=1000, bound_seed=1, **kwargs)
    seeds = image_seeds(5, len(images))
    one_by_one = [smoother.certify(images[i], batch_size=7, bound_seed=1, **{**kwargs, "seed": seeds[i]})
                  for i in range(len(images))]
    assert whole == one_by_one
    other = smoother.certify(images, batch_size=1000, bound_seed=2, **kwargs)
    assert [c.count for c in other] == [c.count for c in whole]
    assert [c.pa_lower for c in other] != [c.pa_lower for c in whole]


def test_the_two_stage_radius_takes_the_randomized_bound_on_its_fresh_draws(linear_boundary):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    images = torch.stack([linear_boundary.image_at(d) for d in np.linspace(0.05, 0.6, 12)])
    kwargs = dict(n0=20, n=3000, alpha=0.01, batch_size=1000, seed=2, tolerance=0.02, confidence="two_stage")
    classical = smoother.certify(images, **kwargs)
    randomized = smoother.certify(images, bound_seed=4, **kwargs)
    uniforms = bound_uniforms(4, image_seeds(2, len(images)))
    assert [(c.count, c.samples) for c in randomized] == [(c.count, c.samples) for c in classical]
    fresh = np.array([c.samples - 20 - 128 for c in randomized])  # n0 and the 128-draw pilot of n = 3000
    expected = randomized_clopper_pearson_lower(np.array([c.count for c in randomized]), fresh, 0.01, uniforms)
    assert [c.pa_lower for c in randomized] == pytest.approx(expected.tolist(), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"bound_seed": -1}, ValueError, "`bound_seed`"),
        ({"bound_seed": 1.5}, TypeError, "`bound_seed`"),
        ({"bound_seed": 1, "tolerance": 0.1, "confidence": "betting"}, ValueError,
         "`bound_seed` applies to fixed n and confidence='two_stage', got 'betting'"),
    ],
)
def test_a_bad_bound_seed_is_refused(linear_boundary, kwargs, error, message):
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA)
    with pytest.raises(error, match=message):
        smoother.certify(linear_boundary.image_at(0.3), n0=10, n=500, alpha=0.01, batch_size=100, **kwargs)
