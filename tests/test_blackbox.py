"""Black-box PEFTSmoothing: the query interface, the coordinator, SPSA-GC and their contracts."""

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, ResNetConfig, ViTConfig, ViTModel

from smoothing_hf import SmoothedImageClassifier, Smoother
from smoothing_hf.blackbox import (
    SPSAGC,
    BlackBoxClassifier,
    QueryBudgetExceeded,
    pretrain_autoencoder,
    query_accuracy,
    train_coordinator,
)
from smoothing_hf.input_modules import Coordinator


class CountingTarget:
    """A black-box service stand-in: a fixed random linear classifier on 1 x 28 x 28 pixels that counts
    the images and calls it receives itself."""

    def __init__(self, num_labels: int = 10) -> None:
        self.weight = torch.randn(28 * 28, num_labels, generator=torch.Generator().manual_seed(0)) * 0.05
        self.images = self.calls = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images += pixels.shape[0]
        self.calls += 1
        return pixels.flatten(1) @ self.weight


class ImageDataset(torch.utils.data.Dataset):
    """Random 1 x 28 x 28 images in [0, 1] with labels in [0, num_labels)."""

    def __init__(self, size: int = 32, num_labels: int = 10, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.rand(size, 1, 28, 28, generator=generator)
        self.labels = torch.randint(0, num_labels, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": int(self.labels[i])}


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> str:
    """A tiny pretrained-style ViT encoder folder (1 channel, 28 x 28), the coordinator's backbone."""
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(1)
    config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32)
    AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def coordinator(encoder_dir: str, random_prompt: bool = False, **options) -> Coordinator:
    torch.manual_seed(0)
    module = Coordinator.from_encoder(encoder_dir, 1, **options)
    if random_prompt:  # a prompt that is not 0 (the trained start is 0)
        with torch.no_grad():
            module.out.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return module


def target_model(tiny_vit_gray_dir: str) -> torch.nn.Module:
    return BlackBoxClassifier.from_pretrained(tiny_vit_gray_dir).target


# ---------------------------------------------------------------- the black box


def test_no_gradient_reaches_or_is_computed_through_the_target(tiny_vit_gray_dir, encoder_dir):
    black_box = BlackBoxClassifier.from_pretrained(tiny_vit_gray_dir, output="probabilities")
    grad_enabled = []
    black_box.target.register_forward_pre_hook(
        lambda module, args, kwargs: grad_enabled.append(torch.is_grad_enabled()), with_kwargs=True
    )
    black_box.target.requires_grad_(True)  # even a target whose parameters would take gradients
    module = coordinator(encoder_dir)
    train_coordinator(module, black_box, ImageDataset(), sigma=0.25, steps=2, batch_size=8, progress=False)
    with torch.enable_grad():
        pixels = torch.rand(2, 1, 28, 28, requires_grad=True)
        answer = black_box(pixels)
    assert not answer.requires_grad and answer.grad_fn is None
    assert grad_enabled and not any(grad_enabled)
    assert all(p.grad is None for p in black_box.target.parameters())
    assert all(p.grad is None for p in module.parameters())  # SPSA-GC takes no gradients at all


def test_the_query_counter_counts_every_image_and_every_call(encoder_dir):
    target = CountingTarget()
    black_box = BlackBoxClassifier(target, 10)
    module = coordinator(encoder_dir)
    optimizer = SPSAGC([p for p in module.parameters() if p.requires_grad], num_directions=2)
    result = train_coordinator(module, black_box, ImageDataset(), sigma=0.25, steps=3, batch_size=8,
                               optimizer=optimizer, progress=False)
    # steps x directions x (+, -) x batch
    assert result["queries"] == 3 * 2 * 2 * 8 == target.images == black_box.queries
    assert result["calls"] == 12 == target.calls == black_box.calls
    query_accuracy(black_box, ImageDataset(size=20), sigma=0.25, batch_size=8)
    assert black_box.queries == target.images == 96 + 20 and black_box.calls == target.calls == 12 + 3


def test_local_model_adapter_uses_the_model_normalization(tiny_vit_gray_dir):
    black_box = BlackBoxClassifier.from_pretrained(tiny_vit_gray_dir, output="probabilities")
    smoothed = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25).eval()
    pixels = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = smoothed(pixels).logits.softmax(-1)
    torch.testing.assert_close(black_box(pixels), expected)
    assert black_box.num_labels == 10 and black_box.queries == 3
    assert torch.allclose(black_box.log_probabilities(pixels).exp(), expected, atol=1e-6)


def test_query_budget_exhausted_is_a_clear_error(encoder_dir):
    target = CountingTarget()
    black_box = BlackBoxClassifier(target, 10, query_budget=20)
    black_box(torch.rand(8, 1, 28, 28))
    black_box(torch.rand(8, 1, 28, 28))
    with pytest.raises(QueryBudgetExceeded, match="16 of 20 images already sent, this call would send 8 more"):
        black_box(torch.rand(8, 1, 28, 28))
    assert black_box.queries == target.images == 16 and black_box.remaining == 4  # nothing was sent
    assert issubclass(QueryBudgetExceeded, RuntimeError)
    black_box = BlackBoxClassifier(CountingTarget(), 10, query_budget=100)
    with pytest.raises(QueryBudgetExceeded, match="query budget exhausted"):
        train_coordinator(coordinator(encoder_dir), black_box, ImageDataset(), sigma=0.25, steps=10, batch_size=8,
                          progress=False)
    with pytest.raises(ValueError, match="query_budget"):
        BlackBoxClassifier(target, 10, query_budget=0)


def test_a_target_whose_output_does_not_match_the_label_count_is_an_error(encoder_dir, tiny_vit_gray_dir):
    with pytest.raises(ValueError, match=r"shape \(4, 5\) for 4 images, but \[4, 10\] was expected.*label count"):
        BlackBoxClassifier(CountingTarget(num_labels=5), 10)(torch.rand(4, 1, 28, 28))
    # a five-class target trained on with ten-class labels
    with pytest.raises(ValueError, match="labels go up to 9 but the black box returns 5 classes"):
        train_coordinator(coordinator(encoder_dir), BlackBoxClassifier(CountingTarget(num_labels=5)),
                          ImageDataset(size=64), sigma=0.25, steps=1, batch_size=64, progress=False)
    with pytest.raises(ValueError, match="declared to return probabilities"):
        BlackBoxClassifier(CountingTarget(), 10, output="probabilities")(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="output"):
        BlackBoxClassifier(CountingTarget(), 10, output="labels")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        BlackBoxClassifier(CountingTarget(), 10)(torch.rand(1, 28, 28))


@pytest.mark.parametrize("sigma", [0.0, -0.25])
def test_sigma_must_be_positive(sigma, encoder_dir, tiny_vit_gray_dir):
    black_box = BlackBoxClassifier(CountingTarget(), 10)
    with pytest.raises(ValueError, match="sigma"):
        train_coordinator(coordinator(encoder_dir), black_box, ImageDataset(), sigma=sigma, steps=1, progress=False)
    with pytest.raises(ValueError, match="sigma"):
        query_accuracy(black_box, ImageDataset(), sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=sigma, input_module=coordinator(encoder_dir))
    assert black_box.queries == 0


# ---------------------------------------------------------------- SPSA-GC


def quadratic(w: torch.Tensor) -> float:
    minimum = torch.linspace(-2, 2, w.numel())
    return float(((w - minimum) ** 2 * torch.linspace(0.5, 2, w.numel())).sum())


def test_spsa_gc_converges_on_a_quadratic_within_a_query_budget():
    w = torch.nn.Parameter(torch.zeros(10))
    optimizer = SPSAGC([w], a=0.1, c=0.01, A=10, alpha=0.602, gamma=0.101, momentum=0.9,
                       generator=torch.Generator().manual_seed(0))
    start = quadratic(w.detach())
    for _ in range(300):  # 600 loss evaluations
        optimizer.step(lambda: quadratic(w.detach()))
    assert optimizer.evaluations == 600 and optimizer.steps == 300
    assert quadratic(w.detach()) < 1e-3 * start
    torch.testing.assert_close(w.detach(), torch.linspace(-2, 2, 10), atol=0.02, rtol=0)


def test_spsa_gc_look_ahead_beats_plain_spsa_and_is_reproducible():
    def run(momentum: float, seed: int = 0) -> torch.Tensor:
        w = torch.nn.Parameter(torch.zeros(10))
        generator = torch.Generator().manual_seed(seed)
        optimizer = SPSAGC([w], a=0.02, c=0.01, momentum=momentum, num_directions=2, generator=generator)
        for _ in range(100):
            optimizer.step(lambda: quadratic(w.detach()))
        return w.detach()

    assert quadratic(run(0.9)) < 0.5 * quadratic(run(0.0))
    assert torch.equal(run(0.9), run(0.9))
    assert not torch.equal(run(0.9, seed=0), run(0.9, seed=1))


def test_spsa_gc_gains_and_bad_hyperparameters():
    w = torch.nn.Parameter(torch.zeros(3))
    optimizer = SPSAGC([w], a=0.5, c=0.2, A=3, alpha=0.5, gamma=0.25)
    assert optimizer.gains(0) == pytest.approx((0.5 / 4**0.5, 0.2))
    assert optimizer.gains(15) == pytest.approx((0.5 / 19**0.5, 0.2 / 16**0.25))
    for bad in ({"a": 0}, {"c": -1}, {"momentum": 1.0}, {"num_directions": 0}, {"alpha": float("nan")}):
        with pytest.raises(ValueError):
            SPSAGC([w], **bad)
    with pytest.raises(ValueError, match="non-finite"):
        calls = []
        optimizer.step(lambda: float("nan") if calls.append(1) or len(calls) == 2 else 0.0)  # fails at the second
    assert torch.equal(w, torch.zeros(3)) and optimizer.steps == 0  # put back, not left perturbed
    assert optimizer.state_dict()["state"]["spsa"]["evaluations"] == 2


# ---------------------------------------------------------------- the coordinator and the composite


def test_the_prompt_is_computed_from_the_noisy_input_only(tiny_vit_gray_dir, encoder_dir):
    module = coordinator(encoder_dir, random_prompt=True).eval()
    smoothed = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, input_module=module).eval()
    black_box = BlackBoxClassifier(target_model(tiny_vit_gray_dir), image_mean=[0.5], image_std=[0.5])
    clean = torch.rand(4, 1, 28, 28)
    noisy = clean + 0.25 * torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    composite = (noisy + module.prompt(module.features(noisy), (28, 28))).clamp(0, 1)
    assert composite.min() >= 0 and composite.max() <= 1 and not torch.equal(composite, noisy.clamp(0, 1))
    with torch.no_grad():
        torch.testing.assert_close(smoothed(noisy).logits, black_box(composite))
        # The coordinator is handed the noisy pixels alone (no clean image reaches it) and is deterministic.
        assert list(inspect.signature(module.forward).parameters) == ["pixels"]
        assert torch.equal(module(noisy), module(noisy.clone())) and torch.equal(module.train()(noisy), module(noisy))
        prompts = [module.prompt(module.features(pixels), (28, 28)) for pixels in (noisy, clean)]
        assert not torch.equal(*prompts)
    # Certification applies the coordinator to every noisy sample: the composite is one fixed base classifier.
    composite_classifier = Smoother(lambda z: black_box(module(z)), num_classes=10, sigma=0.25, num_channels=1)
    kwargs = {"n0": 16, "n": 64, "alpha": 0.01, "batch_size": 32, "seed": 5}
    assert smoothed.certify(clean, **kwargs) == composite_classifier.certify(clean, **kwargs)


def test_the_first_prompt_is_zero_and_only_the_decoder_trains(encoder_dir):
    module = coordinator(encoder_dir)
    noisy = torch.rand(2, 1, 28, 28) * 1.4 - 0.2
    assert torch.equal(module(noisy), noisy.clamp(0, 1))
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"trigger", "hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert module.train().encoder.training is False
    json.dumps(module.record())  # options are JSON


def test_save_and_load_give_identical_certificates(tiny_vit_gray_dir, encoder_dir, tmp_path):
    module = coordinator(encoder_dir, random_prompt=True)
    smoothed = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, input_module=module)
    smoothed.record_training(dataset_name="embedded:mnist", queries=1234, steps=5)
    smoothed.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "smoothing_config.json").read_text())
    assert config["input_module"]["type"] == "coordinator" and config["sigma"] == 0.25
    assert config["base_model_name_or_path"] == tiny_vit_gray_dir and config["training"]["queries"] == 1234
    assert config["training"]["trainable_parameters"] == sum(p.numel() for p in module.parameters() if p.requires_grad)
    # the architecture from the options, no download
    loaded = SmoothedImageClassifier.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded.input_module, Coordinator)
    pixels = torch.rand(2, 1, 28, 28)
    kwargs = {"n0": 16, "n": 64, "alpha": 0.01, "batch_size": 32, "seed": 3}
    assert loaded.certify(pixels, **kwargs) == smoothed.certify(pixels, **kwargs)


@pytest.mark.parametrize("backbone", ["resnet", "vit-without-pooler"])
def test_any_backbone_serves_as_encoder(backbone, tmp_path):
    torch.manual_seed(0)
    if backbone == "resnet":
        resnet = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        encoder = AutoModel.from_config(resnet)
    else:
        encoder = ViTModel(ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
    encoder.save_pretrained(tmp_path)
    module = Coordinator.from_encoder(str(tmp_path), num_channels=1)  # a 3-channel encoder reads gray images
    assert module.options["feature"] == ("pooler" if backbone == "resnet" else "mean")
    assert module(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    rebuilt = Coordinator.from_options(json.loads(json.dumps(module.options)))
    rebuilt.load_state_dict(module.state_dict())
    pixels = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(rebuilt.features(pixels), module.features(pixels))


class Squares(ImageDataset):
    """Four classes of 1 x 28 x 28 images: a bright square in one quadrant on a dim random background."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (size,), generator=generator)
        self.pixels = 0.1 * torch.rand(size, 1, 28, 28, generator=generator)
        for i, label in enumerate(self.labels.tolist()):
            row, col = divmod(label, 2)
            self.pixels[i, 0, 2 + 14 * row : 12 + 14 * row, 2 + 14 * col : 12 + 14 * col] = 0.9


def test_a_short_training_lowers_the_loss(encoder_dir):
    from conftest import tiny_vit

    torch.manual_seed(0)  # a tiny ViT target, trained (clean images, white box) for a second
    target, data = tiny_vit(num_channels=1, num_labels=4).train(), Squares(256, seed=1)
    optimizer = torch.optim.Adam(target.parameters(), lr=3e-3)
    for _ in range(60):
        batch = torch.randint(0, 256, (32,))
        loss = F.cross_entropy(target(pixel_values=data.pixels[batch]).logits, data.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    black_box = BlackBoxClassifier(target.requires_grad_(False), output="probabilities")
    module = coordinator(encoder_dir)
    test = Squares(64, seed=3)
    noisy = test.pixels + 0.5 * torch.randn(test.pixels.shape, generator=torch.Generator().manual_seed(9))

    def noisy_loss() -> float:
        return float(F.nll_loss(black_box.log_probabilities(module(noisy)), test.labels))

    before = noisy_loss()
    optimizer = SPSAGC([p for p in module.parameters() if p.requires_grad], a=0.003, c=0.01, A=10,
                       generator=torch.Generator().manual_seed(0))
    result = train_coordinator(module, black_box, Squares(64, seed=2), sigma=0.5, steps=40, batch_size=32,
                               optimizer=optimizer, progress=False)
    assert result["steps"] == 40 and result["queries"] == 40 * 2 * 32
    assert noisy_loss() < 0.5 * before


def test_pretrain_autoencoder_learns_to_reconstruct(tmp_path):
    images = torch.zeros(64, 1, 28, 28)
    images[::2, :, 4:24, 10:18] = 1.0  # two kinds of image
    encoder = pretrain_autoencoder(images, steps=60, batch_size=32, learning_rate=3e-3, progress=False)
    assert not encoder.training and encoder.config.num_channels == 1
    encoder.save_pretrained(tmp_path)
    module = Coordinator.from_encoder(str(tmp_path), 1)
    features = module.features(images[:2])
    assert not torch.allclose(features[0], features[1], atol=1e-3)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\] pixels in \[0, 1\]"):
        pretrain_autoencoder(images * 2, steps=1)
