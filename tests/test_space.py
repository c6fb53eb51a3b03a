"""The certification space (smoothing_hf.space): noise added and radii measured at ``certify_size``, the model
resizing inside; a closed-form check that the radii are those of the native-size classifier."""

import json

import pytest
import torch
from scipy.stats import norm
from test_examples import QUIET, run_example

from smoothing_hf import SmoothedImageClassifier, Smoother, SmoothingConfig
from smoothing_hf.files import read_rows
from smoothing_hf.pipeline import certify
from smoothing_hf.space import choose_certify_size, parse_size, resize

CERTIFY = dict(n0=100, n=100_000, alpha=0.001, batch_size=20_000, seed=0)


class LinearBehindUpsampling(torch.nn.Module):
    """f(x) = [w . up(x) > b] on 8 x 8 images, up = nearest upsampling of 4 x 4 ones. w is constant on each
    2 x 2 block (w = up(v)), so w . up(x) = 4 v . x: linear in the 4 x 4 pixels with weight 4 v, whose norm is
    twice ||w|| = 1. At 4 x 4 the exact radius is |w . up(x) - b| / ||4 v|| = margin / 2; at 8 x 8 (noise on the
    upsampled image) it is margin / ||w|| = margin: upsampling by 2 doubles radii."""

    def __init__(self, upsample: bool) -> None:
        super().__init__()
        v = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        w = resize(v, (8, 8), "nearest")
        self.register_buffer("w", (w / w.norm()).flatten())
        self.b, self.upsample = 0.5 * float(self.w.sum()), upsample

    def margin(self, small: torch.Tensor) -> float:
        return float(resize(small[None], (8, 8), "nearest").flatten() @ self.w - self.b)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        large = resize(pixels, (8, 8), "nearest") if self.upsample else pixels
        margin = large.flatten(1) @ self.w - self.b
        return torch.stack([-margin, margin], dim=1)


def test_radii_at_the_native_size_are_those_of_the_composite_linear_classifier():
    native, at_model_size = LinearBehindUpsampling(upsample=True), LinearBehindUpsampling(upsample=False)
    direction = native.w.view(1, 1, 8, 8)[..., ::2, ::2][0]  # v, up to scale: moves the margin fastest
    direction = direction / direction.norm()
    for exact_native in (0.2, 0.3, 0.4):  # below the largest radius n = 100,000 certifies at either size
        small = 0.5 + exact_native * direction * (1 if exact_native != 0.3 else -1)
        margin = native.margin(small)
        assert abs(margin) / 2 == pytest.approx(exact_native, rel=1e-5)
        exact_model = abs(margin)
        small_cert = Smoother(native, num_classes=2, sigma=0.25).certify(small, **CERTIFY)
        large = resize(small[None], (8, 8), "nearest")[0]
        large_cert = Smoother(at_model_size, num_classes=2, sigma=0.25).certify(large, **CERTIFY)
        for cert, exact in ((small_cert, exact_native), (large_cert, exact_model)):
            assert cert.prediction == int(margin > 0)
            assert cert.radius <= exact  # valid (with probability 1 - alpha; fixed seeds)
            slack = 0.25 * (norm.ppf(0.999) - norm.ppf(cert.pa_lower)) if cert.pa_lower < 0.999 else 0.0
            assert cert.radius >= exact - 0.05 - slack  # tight: Clopper-Pearson's margin at n = 100,000
        assert large_cert.radius / small_cert.radius == pytest.approx(2.0, rel=0.1)


@pytest.fixture
def small_space_model(tiny_vit_gray_dir):
    return SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, method="lora", certify_size=[8, 8])


def test_the_model_adds_noise_at_its_certify_size_and_resizes_inside(small_space_model, tmp_path):
    model = small_space_model
    assert (model.config.certify_size, model.config.model_input_size) == ([8, 8], [28, 28])
    assert model.config.space(1) == "l2 in [0, 1] pixels of 8 x 8 x 1"
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    composite = Smoother(lambda p: model.base_logits(resize(p, (28, 28), "bilinear")), num_classes=10, sigma=0.25,
                         num_channels=1)
    settings = dict(n0=10, n=200, alpha=0.01, batch_size=100, seed=4)
    assert model.smoother(merge_adapter=False).certify(images, **settings) == composite.certify(images, **settings)
    model.save_pretrained(tmp_path)
    reloaded = SmoothedImageClassifier.from_pretrained(tmp_path)
    assert reloaded.config.certify_size == [8, 8] and reloaded.config.resize_interpolation == "bilinear"
    torch.testing.assert_close(reloaded(images).logits, model(images).logits, rtol=0, atol=1e-6)
    assert reloaded.image_transform()(torch.rand(1, 20, 30)).shape == (1, 8, 8)  # resized and center-cropped
    kept = torch.rand(1, 8, 8)
    assert torch.equal(reloaded.image_transform()(kept), kept)  # an image of the space's size is kept as it is


def test_train_then_certify_on_digits_uses_their_native_8_by_8_space(tiny_vit_gray_dir, tmp_path, capsys):
    output = tmp_path / "lora"
    run_example("train.py", "--model_name_or_path", tiny_vit_gray_dir, "--dataset_name", "embedded:digits",
                "--method", "lora", "--sigma", 0.25, "--output_dir", output, "--max_steps", 2,
                "--per_device_train_batch_size", 8, *QUIET)
    assert "certifying at the dataset's native size 8 x 8" in capsys.readouterr().out
    config = json.loads((output / "smoothing_config.json").read_text())
    assert (config["certify_size"], config["model_input_size"]) == ([8, 8], [28, 28])  # trained with noise at 8 x 8
    run_example("certify.py", "--model_name_or_path", output, "--dataset_name", "embedded:digits", "--n0", 10,
                "--n", 50, "--alpha", 0.01, "--batch_size", 64, "--max_examples", 3, "--output_dir", output / "c")
    summary = json.loads((output / "c" / "summary.json").read_text())
    assert summary["space"] == summary["settings"]["space"] == "l2 in [0, 1] pixels of 8 x 8 x 1"
    assert len(read_rows(output / "c" / "certify.tsv")) == 3
    with pytest.raises(ValueError, match="--certify_size is for a base model"):
        run_example("certify.py", "--model_name_or_path", output, "--dataset_name", "embedded:digits",
                    "--certify_size", "model", "--output_dir", output / "d")
    assert not (output / "d").exists()


def test_a_resumed_run_in_another_space_is_an_error(small_space_model, tiny_vit_gray_dir, tmp_path):
    small = [{"pixel_values": torch.rand(1, 8, 8), "labels": i} for i in range(3)]
    settings = dict(n0=10, n=50, alpha=0.01, batch_size=64, seed=0)
    certify(small_space_model, small, output_dir=tmp_path, **settings)
    at_model_size = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, method="lora")
    large = [{"pixel_values": resize(item["pixel_values"][None], (28, 28), "bilinear")[0].clamp(0, 1),
              "labels": item["labels"]} for item in small]
    with pytest.raises(ValueError, match=r"space='l2 in \[0, 1\] pixels of 8 x 8 x 1' there, "
                                         r"'l2 in \[0, 1\] pixels of 28 x 28 x 1' now"):
        certify(at_model_size, large, output_dir=tmp_path, **settings)
    mixed = [*small[:2], {"pixel_values": torch.rand(1, 28, 28), "labels": 2}]
    with pytest.raises(ValueError, match=r"dataset example 2 has shape \(1, 28, 28\).*same one"):
        certify(at_model_size, mixed, output_dir=tmp_path / "mixed", **settings)
    assert not (tmp_path / "mixed").exists()


def test_bad_spaces_are_refused(tiny_vit_gray_dir, small_space_model, tmp_path):
    with pytest.raises(ValueError, match=r"`certify_size` \[32, 32\] is larger than the model's input size \[28, 28\]"):
        SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, certify_size=32)
    with pytest.raises(ValueError, match="`certify_size` must be positive"):
        SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, certify_size=[0, 8])
    with pytest.raises(TypeError, match=r"`certify_size` must be \[height, width\]"):
        SmoothingConfig(sigma=0.25, image_mean=[0.5], image_std=[0.5], certify_size="8x8", model_input_size=28)
    with pytest.raises(ValueError, match="`resize_interpolation` must be one of"):
        SmoothingConfig(sigma=0.25, image_mean=[0.5], image_std=[0.5], certify_size=8, model_input_size=28,
                        resize_interpolation="area")
    with pytest.raises(ValueError, match=r"certifies in l2 in \[0, 1\] pixels of 8 x 8 x 1.*shape \(2, 1, 28, 28\)"):
        small_space_model(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="`certify_size` must be 'native', 'model' or a size"):
        parse_size("eight", "certify_size")
    saved = tmp_path / "saved"
    small_space_model.save_pretrained(saved)
    with pytest.raises(ValueError, match="brings its own method, head, normalization and space"):
        SmoothedImageClassifier.from_pretrained(saved, certify_size=8)


def test_the_default_space_is_the_native_one_only_below_the_model_size():
    assert choose_certify_size("native", [32, 32], [224, 224])[0] == [32, 32]
    assert choose_certify_size("native", [28, 28], [28, 28])[0] is None
    assert choose_certify_size("native", [500, 375], [224, 224])[0] is None  # larger: the model's size
    assert choose_certify_size("native", None, [224, 224])[0] is None  # mixed sizes
    assert choose_certify_size("model", [32, 32], [224, 224])[0] is None
    assert choose_certify_size("16x12", [32, 32], [224, 224])[0] == [16, 12]
