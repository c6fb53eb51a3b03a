"""SmoothedImageClassifier around real transformers models built from configs."""

import os

import numpy as np
import pytest
import torch
from peft import LoraConfig
from PIL import Image
from scipy.stats import norm

from smoothing_hf import ABSTAIN, Certificate, SmoothedImageClassifier, SmoothingConfig
from smoothing_hf.noise import bound_uniforms


def test_from_pretrained_takes_the_normalization_from_the_image_processor(tiny_vit_dir):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    assert model.config.image_mean == pytest.approx([0.5, 0.4, 0.3])
    assert model.config.image_std == pytest.approx([0.2, 0.25, 0.3])
    assert model.config.base_model_name_or_path == tiny_vit_dir
    assert (model.sigma, model.num_labels, model.num_channels) == (0.25, 10, 3)


def test_forward_normalizes_pixels_then_runs_the_base_model(tiny_vit_dir):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    pixels = torch.rand(4, 3, 28, 28)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.model(pixel_values=(pixels - mean) / std).logits
        output = model(pixels, labels=torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(output.logits, expected)
    assert output.loss.shape == () and output.loss > 0


def test_certify_end_to_end_on_a_tiny_vit(tiny_vit_dir):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    images = torch.rand(3, 3, 28, 28)
    certificates = model.certify(images, n0=10, n=200, alpha=0.01, batch_size=64, seed=0)
    assert len(certificates) == 3 and all(isinstance(c, Certificate) for c in certificates)
    for prediction, radius, *_ in certificates:
        assert prediction == ABSTAIN and radius == 0.0 or 0 <= prediction < 10 and radius >= 0.0
    assert model.certify(images, n0=10, n=200, alpha=0.01, batch_size=7, seed=0) == certificates
    single = model.certify(images[0], n0=10, n=200, alpha=0.01, batch_size=64)
    assert isinstance(single, Certificate)
    predictions = model.predict(images, n=100, alpha=0.01, batch_size=64)
    assert len(predictions) == 3 and all(-1 <= p < 10 for p in predictions)


def test_a_model_whose_noisy_prediction_is_constant_is_certified_at_the_maximal_radius(tiny_vit_dir):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.5)
    with torch.no_grad():  # a head that ignores its input: class 7 always
        model.model.classifier.weight.zero_()
        model.model.classifier.bias.copy_(torch.arange(10) == 7)
    certificate = model.certify(torch.rand(3, 28, 28), n0=10, n=100, alpha=0.001, batch_size=50)
    prediction, radius, pa_lower, count, *_ = certificate
    assert (prediction, count) == (7, 100)
    assert radius == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 100)))
    # The options of Smoother.certify pass through: the randomized bound, and the adaptive radius.
    uniform = bound_uniforms(3, [0])[0]
    randomized = model.certify(torch.rand(3, 28, 28), n0=10, n=100, alpha=0.001, batch_size=50, bound_seed=3)
    assert randomized.pa_lower == pytest.approx((0.001 / max(uniform, 0.002)) ** (1 / 100))
    adaptive = model.certify(torch.rand(3, 28, 28), n0=10, n=1000, alpha=0.001, batch_size=50, tolerance=0.05)
    assert adaptive.prediction == 7 and adaptive.samples < 10 + 1000


def test_peft_adapter_is_merged_into_a_copy_for_certification(tiny_vit_dir):
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"], init_lora_weights=False
    )
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, peft_config=lora)
    assert model.config.peft_method == "lora"
    merged = model.inference_model()
    assert merged is not model and not any("lora" in name for name, _ in merged.named_parameters())
    pixels = torch.rand(5, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(merged(pixels).logits, model(pixels).logits, rtol=1e-4, atol=1e-5)
    # The model itself keeps its adapter, unmerged and trainable.
    assert any("lora_A" in name and p.requires_grad for name, p in model.named_parameters())
    merged_certificates = model.certify(pixels, n0=10, n=100, alpha=0.01, batch_size=64)
    unmerged_certificates = model.smoother(merge_adapter=False).certify(pixels, n0=10, n=100, alpha=0.01, batch_size=64)
    assert [c.prediction for c in merged_certificates] == [c.prediction for c in unmerged_certificates]


def test_any_auto_model_works_a_resnet_with_explicit_normalization(tiny_resnet_dir):
    with pytest.raises(ValueError, match="image_mean"):
        SmoothedImageClassifier.from_pretrained(tiny_resnet_dir, sigma=0.5)
    model = SmoothedImageClassifier.from_pretrained(tiny_resnet_dir, sigma=0.5, image_mean=[0.13], image_std=[0.31])
    certificate = model.certify(torch.rand(1, 28, 28), n0=10, n=64, alpha=0.01, batch_size=32)
    assert certificate.samples == 74
    with pytest.raises(ValueError, match="image processor"):
        model.image_transform()


def test_image_transform_resizes_and_rescales_without_normalizing(tiny_vit_dir):
    transform = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25).image_transform()
    rgb = np.random.default_rng(0).integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
    pixels = transform(Image.fromarray(rgb))
    assert pixels.shape == (3, 28, 28) and pixels.dtype == torch.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.5
    batch = transform([Image.fromarray(rgb)] * 2)
    assert batch.shape == (2, 3, 28, 28)
    # An image already in [0, 1] at the model's size is not rescaled a second time.
    already = torch.from_numpy(rgb[:28, :28].transpose(2, 0, 1) / 255.0).float()
    torch.testing.assert_close(transform(already), already, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        transform(already * 255)


def test_smoothing_config_round_trips_through_json(tmp_path):
    config = SmoothingConfig(
        sigma=0.5, image_mean=[0.5], image_std=[0.5], base_model_name_or_path="a/b", peft_method="lora"
    )
    config.to_json_file(tmp_path / "smoothing_config.json")
    assert SmoothingConfig.from_json_file(tmp_path / "smoothing_config.json") == config
    assert not list(tmp_path.glob("*.tmp"))


def test_a_base_folder_given_as_a_relative_path_is_found_from_any_directory(tiny_vit_dir, tmp_path, monkeypatch):
    # Bug: the config recorded "runs/base" as given, so the adapter did not load from another directory.
    monkeypatch.chdir(os.path.dirname(tiny_vit_dir))
    model = SmoothedImageClassifier.from_pretrained(os.path.basename(tiny_vit_dir), sigma=0.25, method="lora")
    assert model.config.base_model_name_or_path == tiny_vit_dir
    model.save_pretrained(tmp_path / "adapter")
    monkeypatch.chdir(tmp_path)
    assert SmoothedImageClassifier.from_pretrained("adapter").config.base_model_name_or_path == tiny_vit_dir
