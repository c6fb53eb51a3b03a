"""DESIGN.md contract 3: the same (seed, example) gives the same certificate whatever the batching."""

import numpy as np
import pytest
import torch

from smoothing_hf import NOISE_CHUNK_SIZE, Phase, Smoother, derive_seed


@pytest.fixture
def near_boundary(linear_boundary):
    """Images close to the boundary, where every noisy sample's class matters to the counts."""
    images = torch.stack([linear_boundary.image_at(d) for d in (-0.1, -0.02, 0.0, 0.03, 0.2)])
    return Smoother(linear_boundary, num_classes=2, sigma=0.25), images


@pytest.mark.parametrize("batch_size", [1, 7, 100, NOISE_CHUNK_SIZE, 333, 5000])
def test_certificates_do_not_depend_on_the_batch_size(near_boundary, batch_size):
    smoother, images = near_boundary
    reference = smoother.certify(images, n0=50, n=300, alpha=0.01, batch_size=64, seed=11)
    assert smoother.certify(images, n0=50, n=300, alpha=0.01, batch_size=batch_size, seed=11) == reference


def test_an_image_in_a_batch_gets_the_noise_it_gets_alone_with_the_derived_seed(near_boundary):
    smoother, images = near_boundary
    batch = smoother.certify(images, n0=20, n=500, alpha=0.01, batch_size=256, seed=5)
    alone = [
        smoother.certify(image, n0=20, n=500, alpha=0.01, batch_size=37, seed=derive_seed(5, i))
        for i, image in enumerate(images)
    ]
    assert batch == alone
    assert smoother.predict(images, n=200, alpha=0.01, batch_size=64, seed=5) == [
        smoother.predict(image, n=200, alpha=0.01, batch_size=1000, seed=derive_seed(5, i))
        for i, image in enumerate(images)
    ]


def test_explicit_per_image_seeds_and_order_independence(near_boundary):
    smoother, images = near_boundary
    seeds = [derive_seed(9, 100 + i) for i in range(len(images))]
    forward = smoother.certify(images, n0=20, n=200, alpha=0.01, batch_size=50, seed=seeds)
    backward = smoother.certify(images.flip(0), n0=20, n=200, alpha=0.01, batch_size=50, seed=seeds[::-1])
    assert forward == backward[::-1]


def test_seeds_and_phases_give_different_noise(near_boundary):
    smoother, images = near_boundary
    image = images[2:3]
    runs = {
        tuple(smoother.sample_counts(image, [seed], phase, 1000, 512)[0])
        for seed in (0, 1)
        for phase in (Phase.SELECTION, Phase.ESTIMATION)
    }
    assert len(runs) == 4


def test_counts_over_disjoint_chunk_sets_add_up_to_the_full_counts(near_boundary):
    smoother, images = near_boundary
    seeds = [1, 2, 3, 4, 5]
    num_samples = 5 * NOISE_CHUNK_SIZE + 17
    full = smoother.sample_counts(images, seeds, Phase.ESTIMATION, num_samples, batch_size=200)
    parts = [
        smoother.sample_counts(images, seeds, Phase.ESTIMATION, num_samples, 90, chunks=range(r, 6, 3))
        for r in range(3)
    ]
    np.testing.assert_array_equal(sum(parts), full)
    assert (full.sum(axis=1) == num_samples).all()


def test_noise_has_the_requested_standard_deviation():
    seen = []

    def record(pixels):
        seen.append(pixels.clone())
        return torch.zeros(len(pixels), 2)

    Smoother(record, num_classes=2, sigma=0.3).sample_counts(
        torch.full((1, 3, 8, 8), 0.5), [0], Phase.ESTIMATION, 2000, 512
    )
    noise = torch.cat(seen) - 0.5
    assert noise.shape == (2000, 3, 8, 8)
    assert noise.mean().abs() < 0.005 and abs(noise.std().item() - 0.3) < 0.005
    # Noisy pixels reach the classifier unclipped (Cohen's analysis assumes the exact Gaussian).
    assert noise.max() + 0.5 > 1 and noise.min() + 0.5 < 0
