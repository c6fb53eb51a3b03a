"""DESIGN.md contract 5: bad input raises a clear error naming the argument and what is allowed."""

import pytest
import torch

from smoothing_hf import SmoothedImageClassifier, Smoother, SmoothingConfig


@pytest.fixture
def smoother(linear_boundary):
    return Smoother(linear_boundary, num_classes=2, sigma=0.25, num_channels=1)


GOOD = dict(n0=10, n=100, alpha=0.01, batch_size=32)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"alpha": 0.0}, ValueError, r"`alpha` must be in \(0, 1\)"),
        ({"alpha": 1.0}, ValueError, r"`alpha` must be in \(0, 1\)"),
        ({"alpha": "0.1"}, TypeError, "`alpha`"),
        ({"n0": 0}, ValueError, "`n0` must be a positive int"),
        ({"n": -5}, ValueError, "`n` must be a positive int"),
        ({"n": 10.0}, TypeError, "`n` must be a positive int"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be a positive int"),
        ({"seed": -1}, ValueError, "`seed` must be a non-negative int"),
        ({"seed": [1, 2]}, ValueError, "one int per image"),
    ],
)
def test_bad_certify_arguments(smoother, linear_boundary, changes, error, message):
    with pytest.raises(error, match=message):
        smoother.certify(linear_boundary.image_at(0.3), **{**GOOD, **changes})


@pytest.mark.parametrize(
    "image, error, message",
    [
        (torch.rand(4, 4), ValueError, r"\[C, H, W\] or a batch"),
        (torch.rand(1, 1, 1, 4, 4), ValueError, r"\[C, H, W\] or a batch"),
        (torch.rand(3, 4, 4), ValueError, "must have 1 channels"),
        (torch.rand(1, 4, 4) * 255, ValueError, r"pixels in \[0, 1\]"),
        (torch.rand(1, 4, 4) - 0.5, ValueError, r"pixels in \[0, 1\]"),
        (torch.full((1, 4, 4), float("nan")), ValueError, "NaN"),
        (torch.randint(0, 255, (1, 4, 4)), TypeError, "float tensor"),
        (torch.rand(0, 1, 4, 4), ValueError, "at least one image"),
        ([[0.5]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_images(smoother, image, error, message):
    with pytest.raises(error, match=message):
        smoother.certify(image, **GOOD)
    with pytest.raises(error, match=message):
        smoother.predict(image, n=100, alpha=0.01, batch_size=32)


def test_pixels_within_rounding_of_the_unit_interval_are_accepted(smoother):
    image = torch.zeros(1, 4, 4)
    image[0, 0, 0] = 1 + 1e-6
    smoother.certify(image, **GOOD)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sigma": 0.0}, ValueError, "`sigma` must be a positive"),
        ({"sigma": -0.25}, ValueError, "`sigma` must be a positive"),
        ({"sigma": float("inf")}, ValueError, "`sigma` must be a positive"),
        ({"sigma": None}, TypeError, "`sigma`"),
        ({"num_classes": 1}, ValueError, "`num_classes` must be >= 2"),
        ({"base_classifier": "vit"}, TypeError, "`base_classifier`"),
    ],
)
def test_bad_smoother_arguments(linear_boundary, kwargs, error, message):
    with pytest.raises(error, match=message):
        Smoother(**{"base_classifier": linear_boundary, "num_classes": 2, "sigma": 0.25, **kwargs})


@pytest.mark.parametrize(
    "classifier, message",
    [
        (lambda x: torch.zeros(len(x), 3), r"\[batch, num_classes\] = \[\d+, 2\], got \(\d+, 3\)"),
        (lambda x: torch.zeros(len(x)), r"got \(\d+,\)"),
        (lambda x: torch.zeros(1, 2), r"got \(1, 2\)"),
        (lambda x: [0] * len(x), "got list"),
    ],
)
def test_a_base_classifier_with_the_wrong_output_shape(classifier, message):
    with pytest.raises(ValueError, match=message):
        Smoother(classifier, num_classes=2, sigma=0.25).certify(torch.rand(1, 4, 4), **GOOD)


def test_bad_model_arguments(tiny_vit_dir):
    with pytest.raises(ValueError, match="`sigma`"):
        SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=-1.0)
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    with pytest.raises(ValueError, match=r"`pixel_values` must have shape \[B, 3, H, W\]"):
        model(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="3 channels"):
        model.certify(torch.rand(1, 28, 28), **GOOD)
    with pytest.raises(TypeError, match="`model`"):
        SmoothedImageClassifier(torch.nn.Linear(2, 2), model.config)
    with pytest.raises(ValueError, match="one value per input channel"):
        SmoothedImageClassifier(model.model, SmoothingConfig(sigma=0.25, image_mean=[0.5], image_std=[0.5]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_mean": [0.5, 0.5], "image_std": [0.5]}, "one value per channel"),
        ({"image_std": [0.0]}, "`image_std` must be positive"),
        ({"image_mean": []}, "`image_mean` must be a non-empty list"),
        ({"image_mean": [float("nan")]}, "finite"),
    ],
)
def test_bad_smoothing_config(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SmoothingConfig(**{"sigma": 0.25, "image_mean": [0.5], "image_std": [0.5], **kwargs})


def test_unknown_config_keys_are_an_error():
    with pytest.raises(ValueError, match="unknown smoothing config keys"):
        SmoothingConfig.from_dict({"sigma": 0.25, "image_mean": [0.5], "image_std": [0.5], "sigmaa": 1})
