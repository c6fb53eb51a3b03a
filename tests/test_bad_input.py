"""DESIGN.md contract 5: bad input raises a clear error naming the argument and what is allowed."""

import re

import pytest
import torch

from smoothing_hf import SmoothedImageClassifier, Smoother, SmoothingConfig
from smoothing_hf.certification import largest_certifiable_radius
from smoothing_hf.checks import check_number, is_number, parse_json_object


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
        ({"tolerance": float("inf")}, ValueError, r"`tolerance` must be a positive finite number \(a radius"),
        ({"tolerance": float("nan")}, ValueError, "`tolerance` must be a positive finite number"),
        ({"tolerance": "0.1"}, TypeError, "`tolerance` must be"),
        # growth only shapes adaptive rounds, but a nonsensical one is refused without a tolerance too
        ({"growth": float("inf")}, ValueError, "`growth` must be a finite number > 1, got inf"),
        ({"growth": float("nan")}, ValueError, "`growth` must be a finite number > 1, got nan"),
        ({"growth": 1.0}, ValueError, "`growth` must be a finite number > 1"),
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
        (torch.rand(0, 1, 4, 4), ValueError, r"at least one image, got an empty batch of shape \(0, 1, 4, 4\)"),
        (torch.rand(1, 1, 0, 28), ValueError, r"height and width >= 1 .*got shape \(1, 1, 0, 28\)"),
        (torch.rand(1, 4, 0), ValueError, r"height and width >= 1 .*got shape \(1, 4, 0\)"),
        ([[0.5]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_images(smoother, image, error, message):
    with pytest.raises(error, match=message):
        smoother.certify(image, **GOOD)
    with pytest.raises(error, match=message):
        smoother.predict(image, n=100, alpha=0.01, batch_size=32)


def test_empty_dimensions_are_refused_naming_the_shape_without_a_channel_count():
    smoother = Smoother(lambda x: torch.zeros(len(x), 2), num_classes=2, sigma=0.25)  # any number of channels
    for shape in [(1, 0, 4, 4), (0, 4, 4), (2, 3, 5, 0)]:
        with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
            smoother.certify(torch.rand(shape), **GOOD)
        with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
            smoother.certify_at_radius(torch.rand(shape), 0.1, n0=10, max_n=100, alpha=0.01, batch_size=32)


@pytest.mark.parametrize(
    "radius, error, message",
    [("eight", TypeError, "`radius` must be a finite number >= 0 .*got str 'eight'"),
     (None, TypeError, "`radius` must be"), (float("inf"), ValueError, "`radius` must be a finite number >= 0"),
     (float("nan"), ValueError, "`radius` must be a finite number >= 0"), (-0.5, ValueError, "`radius` must be")],
)
def test_bad_radius_to_certify_at_radius(smoother, linear_boundary, radius, error, message):
    with pytest.raises(error, match=message):
        smoother.certify_at_radius(linear_boundary.image_at(0.3), radius, n0=10, max_n=100, alpha=0.01, batch_size=32)


def test_number_checks_refuse_nan_infinity_and_ints_beyond_floats():
    for value in (float("nan"), float("inf"), -float("inf"), 10**400, True, "1"):
        assert not is_number(value)
    assert is_number(3) and is_number(-2.5) and is_number(10**300)
    for value in (float("nan"), float("inf"), 10**400):
        with pytest.raises(ValueError, match="`x` must be a finite number"):
            check_number(value, "x")
    with pytest.raises(ValueError, match=r"`x` must be in \[0, 1\], got inf"):
        check_number(float("inf"), "x", minimum=0, maximum=1)


@pytest.mark.parametrize(
    "arguments, error, message",
    [((0, 0.001, 0.25), ValueError, "`n` must be a positive int"), ((100, 1.5, 0.25), ValueError, "`alpha` must be"),
     ((100, 0.001, float("inf")), ValueError, "`sigma` must be a positive finite number"),
     ((100.0, 0.001, 0.25), TypeError, "`n` must be")],
)
def test_bad_largest_certifiable_radius_arguments(arguments, error, message):
    with pytest.raises(error, match=message):
        largest_certifiable_radius(*arguments)


@pytest.mark.parametrize(
    "text, error, message",
    [('{"r": 16', ValueError, r"`method_options` must be the text of a JSON object.*got '\{\"r\": 16', which is not "
      r"JSON: Expecting ',' delimiter"),
     ("[1, 2]", ValueError, r"`method_options` must be .*got '\[1, 2\]', which is a JSON array"),
     ("null", ValueError, "which is JSON null"), ('"r"', ValueError, "which is a JSON string"),
     ("16", ValueError, "which is a JSON number"), (16, TypeError, "`method_options` must be .*got int 16")],
)
def test_bad_json_options(text, error, message):
    with pytest.raises(error, match=message):
        parse_json_object(text, "method_options")


def test_json_options_as_text_or_as_an_object_from_a_json_file_of_arguments():
    assert parse_json_object('{"r": 16, "deep": true}', "method_options") == {"r": 16, "deep": True}
    assert parse_json_object({"r": 16}, "method_options") == {"r": 16} and parse_json_object("{}", "x") == {}


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
    for empty in ((1, 3, 0, 28), (0, 3, 28, 28)):  # an empty image or batch, not an error deep inside the model
        with pytest.raises(ValueError, match=r"with B, H, W >= 1, got \(" + str(empty[0])):
            model(torch.rand(*empty))
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
