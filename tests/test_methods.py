"""The fine-tuning method registry, tested once per method (peft-style parametrized tests): what each row says
its method can do (architectures, what it trains, mergeable, how it is saved) is what the method does."""

import os

import pytest
import torch
from conftest import tiny_resnet, tiny_vit
from transformers import AutoModelForImageClassification

from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.methods import (
    METHODS,
    Saved,
    Trains,
    applicable_methods,
    apply_method,
    peft_target_modules,
    trainable_parameters,
)

VIT_METHODS = applicable_methods(tiny_vit())
RESNET_METHODS = applicable_methods(tiny_resnet())
NOT_FOR_RESNET = sorted(set(METHODS) - set(RESNET_METHODS))
SAVED_FILES = {
    Saved.PEFT_ADAPTER: {"adapter_config.json", "adapter_model.safetensors"},
    Saved.TRAINABLE_STATE: {"smoothing_weights.safetensors", "config.json"},  # the base's config: pipeline() reads it
    Saved.WHOLE_MODEL: {"config.json", "model.safetensors"},
}


def train_a_few_steps(model: SmoothedImageClassifier, num_channels: int, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        pixels = torch.rand(8, num_channels, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (8,), generator=generator)
        loss = model(pixels + 0.25 * torch.randn(pixels.shape, generator=generator), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("method", VIT_METHODS)
def test_each_method_trains_only_its_parameters_and_round_trips(method, tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method=method)
    trainable, total = trainable_parameters(model)
    assert 0 < trainable <= total and (trainable == total) == (METHODS[method].trains is Trains.EVERY_PARAMETER)
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in name for name in trainable_names)  # the head trains by default
    before = snapshot(model)
    train_a_few_steps(model, num_channels=3)
    after = snapshot(model)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert all(torch.equal(before[name], after[name]) for name in frozen), "a frozen parameter changed"
    assert any(not torch.equal(before[name], after[name]) for name in trainable_names)

    model.save_pretrained(tmp_path)
    assert SAVED_FILES[METHODS[method].saved] <= set(os.listdir(tmp_path))  # held as its row says
    reloaded = SmoothedImageClassifier.from_pretrained(tmp_path)
    assert reloaded.config.peft_method == method and reloaded.sigma == 0.25
    pixels = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, model(pixels).logits, rtol=0, atol=1e-6)
    certify = dict(n0=8, n=64, alpha=0.01, batch_size=32, seed=1)
    predictions = [[c.prediction for c in m.certify(pixels, **certify)] for m in (reloaded, model)]
    assert predictions[0] == predictions[1]


@pytest.mark.parametrize("method", RESNET_METHODS)
def test_methods_apply_to_a_convolutional_model_and_keep_frozen_batchnorm_statistics(method, tiny_resnet_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(
        tiny_resnet_dir, sigma=0.5, method=method, image_mean=[0.1], image_std=[0.3]
    )
    before = snapshot(model)
    train_a_few_steps(model, num_channels=1)
    after = snapshot(model)
    statistics = [name for name in before if "running_mean" in name]
    frozen_backbone = METHODS[method].trains is not Trains.EVERY_PARAMETER
    assert statistics and all(torch.equal(before[n], after[n]) for n in statistics) == frozen_backbone
    model.save_pretrained(tmp_path)
    reloaded = SmoothedImageClassifier.from_pretrained(tmp_path)
    pixels = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, model(pixels).logits, rtol=0, atol=1e-6)


def test_the_registry_says_which_methods_apply_to_which_architecture():
    assert VIT_METHODS == sorted(METHODS)
    assert NOT_FOR_RESNET == ["adapter", "vpt"]  # they need a transformer backbone
    beit_like = tiny_vit()
    beit_like.config.use_relative_position_bias = True  # no tokens can be added in front of such a bias
    assert not METHODS["vpt"].applies_to(beit_like) and METHODS["adapter"].applies_to(beit_like)


@pytest.mark.parametrize("method", NOT_FOR_RESNET)
def test_a_method_refuses_an_architecture_its_row_excludes_and_names_those_that_apply(method):
    with pytest.raises(ValueError, match=rf"method '{method}' does not apply to ResNetForImageClassification \(model "
                                         rf"type 'resnet'\): it needs .*, and ResNetForImageClassification has .*"
                                         rf"apply to it are \['dora', 'full'"):
        apply_method(tiny_resnet(), method)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_merged_export_is_a_plain_transformers_model_exactly_for_mergeable_methods(method, tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method=method)
    train_a_few_steps(model, num_channels=3, steps=1)
    if not METHODS[method].mergeable:
        with pytest.raises(ValueError, match=f"'{method}' adds modules of its own"):
            model.save_pretrained(tmp_path, merge_adapter=True)
        assert not os.path.exists(tmp_path / "smoothing_config.json")  # nothing half-written
        return
    model.save_pretrained(tmp_path, merge_adapter=True)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    assert "adapter_config.json" not in os.listdir(tmp_path)
    plain = AutoModelForImageClassification.from_pretrained(tmp_path)  # transformers alone, normalized pixels
    pixels = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        expected = model(pixels).logits
        normalized = (pixels - model.image_mean) / model.image_std
        torch.testing.assert_close(plain(pixel_values=normalized).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(SmoothedImageClassifier.from_pretrained(tmp_path)(pixels).logits, expected,
                                   rtol=1e-4, atol=1e-5)


def test_peft_targets_are_derived_from_the_model_and_never_the_head():
    assert peft_target_modules(tiny_vit()) == ["fc1", "fc2", "k_proj", "o_proj", "q_proj", "v_proj"]
    assert peft_target_modules(tiny_resnet()) == ["convolution"]
    lora = apply_method(tiny_vit(), "lora")
    assert not any("lora" in name for name, _ in lora.named_parameters() if "classifier" in name)


def test_method_options_reach_the_method():
    shallow = apply_method(tiny_vit(), "vpt", num_prompts=2)
    deep = apply_method(tiny_vit(), "vpt", num_prompts=2, deep=True)
    assert shallow.vit.visual_prompts.prompts.shape == (1, 2, 32)
    assert deep.vit.visual_prompts.prompts.shape == (2, 2, 32)
    assert apply_method(tiny_vit(), "lora", r=2, target_modules=["q_proj"]).peft_config["default"].r == 2
    head_only = apply_method(tiny_vit(), "adapter", train_head=False)
    assert not any(p.requires_grad for p in head_only.classifier.parameters())


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("prefix", {}, r"unknown method 'prefix'; allowed: \['adapter', 'dora'"),
        ("lora", {"rank": 4}, r"unknown options \['rank'\]"),
        ("vpt", {"num_prompts": 0}, "`num_prompts` must be a positive int"),
        ("adapter", {"reduction_factor": 0}, "`reduction_factor` must be a positive int"),
        ("full", {"r": 4}, "takes no options"),
        ("linear", {"r": 4}, "takes no options"),
        ("lora", {"target_modules": ["nothing"]}, "No modules were targeted"),
    ],
)
def test_bad_methods_and_options(method, options, message):
    with pytest.raises(ValueError, match=message):
        apply_method(tiny_vit(), method, **options)
