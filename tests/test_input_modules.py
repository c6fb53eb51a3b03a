"""The input-module contract of SmoothedImageClassifier: run before normalization, saved and loaded whole,
the base model frozen, shapes checked."""

import pytest
import torch

from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.input_modules import INPUT_MODULES, InputModule


class PixelAffine(InputModule):
    """x -> gain * x + shift per channel, a stand-in denoiser with known output."""

    module_type = "pixel_affine"
    description = "a per-channel affine map of the pixels"

    def __init__(self, num_channels: int, crop: int = 0) -> None:
        super().__init__(num_channels=num_channels, crop=crop)
        self.gain = torch.nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.shift = torch.nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.crop = crop

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.gain * pixels + self.shift
        return out[..., self.crop :, self.crop :]


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(INPUT_MODULES, "pixel_affine", PixelAffine)


def test_input_module_runs_before_the_base_model(tiny_vit_dir):
    module = PixelAffine(3)
    with torch.no_grad():
        module.gain.fill_(0.5)
        module.shift.fill_(0.25)
    smoothed = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, input_module=module).eval()
    plain = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25).eval()
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(smoothed(x).logits, plain(0.5 * x + 0.25).logits)
    assert not any(p.requires_grad for p in smoothed.model.parameters())
    assert all(p.requires_grad for p in smoothed.input_module.parameters())
    assert smoothed.config.input_module == {"type": "pixel_affine", "options": {"num_channels": 3, "crop": 0}}


def test_input_module_round_trip_gives_identical_certificates(tiny_vit_dir, tmp_path):
    module = PixelAffine(3)
    with torch.no_grad():
        module.gain.copy_(torch.tensor([0.9, 1.1, 1.0]).view(1, 3, 1, 1))
    smoothed = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, input_module=module)
    smoothed.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "input_module.safetensors").is_file()
    assert "pixel_affine" in (tmp_path / "saved" / "README.md").read_text()
    loaded = SmoothedImageClassifier.from_pretrained(tmp_path / "saved")
    assert loaded.config.training["trainable_parameters"] == 6
    torch.testing.assert_close(loaded.input_module.gain, module.gain)
    x = torch.rand(2, 3, 28, 28)
    kwargs = dict(n0=16, n=64, alpha=0.01, batch_size=32, seed=3)
    assert loaded.certify(x, **kwargs) == smoothed.certify(x, **kwargs)


def test_input_module_errors(tiny_vit_dir, tmp_path):
    with pytest.raises(ValueError, match="at most one of"):
        SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method="lora", input_module=PixelAffine(3))
    with pytest.raises(TypeError, match="input_module"):
        SmoothedImageClassifier(SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25).model,
                                SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25).config,
                                input_module=torch.nn.Identity())
    cropping = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, input_module=PixelAffine(3, crop=1))
    with pytest.raises(ValueError, match="input module must return pixels of its input's shape"):
        cropping(torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match="merge_adapter"):
        cropping.save_pretrained(tmp_path / "merged", merge_adapter=True)


def test_a_frozen_input_module_is_not_called_trained_in_the_card(tiny_vit_dir, tmp_path):
    module = PixelAffine(3).requires_grad_(False)
    frozen = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, input_module=module)
    frozen.save_pretrained(tmp_path / "frozen")
    card = (tmp_path / "frozen" / "README.md").read_text()
    assert "Nothing was trained here" in card and "only the pixel_affine module was trained" not in card
