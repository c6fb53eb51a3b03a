"""Every image classifier in transformers x every method that applies to it, on tiny random models
(``model_types.TINY_MODELS``), written once over the table like peft's ``TEST_CASES``: wrap, one
``SmoothingTrainer`` step under noise, certify, save, reload with the same logits and certificates, and a
merged export that computes the same classifier (or a clear refusal where the adapter cannot be folded)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from model_types import LEFT_OUT, TINY_MODELS, check_table_covers_the_mapping, markdown_table
from peft import LoraConfig, VeraConfig
from transformers import TrainingArguments

from smoothing_hf import SmoothedImageClassifier, SmoothingTrainer
from smoothing_hf.methods import (
    METHODS,
    NotMergeable,
    Saved,
    adaptable_layers,
    applicable_methods,
    backbone_module_names,
    head_module_names,
    merged_copy,
)

CASES = [(case, method) for case, row in TINY_MODELS.items() for method in applicable_methods(row.build())]
NORMALIZATION = dict(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
CERTIFY = dict(n0=4, n=32, alpha=0.1, batch_size=32, seed=3)
README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    """case -> a folder holding its tiny base model, saved like a Hub checkpoint (built on first use)."""
    folders = {}

    def folder(case: str) -> str:
        if case not in folders:
            folders[case] = str(tmp_path_factory.mktemp(case))
            TINY_MODELS[case].build().save_pretrained(folders[case])
        return folders[case]

    return folder


def pixels(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def train_one_step(model: SmoothedImageClassifier, output_dir) -> None:
    images = pixels(4, seed=1)
    data = [{"pixel_values": image, "labels": index % 3} for index, image in enumerate(images)]
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=4, learning_rate=0.05,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
    )
    SmoothingTrainer(model, args, train_dataset=data).train()
    model.eval()


def logits(model: SmoothedImageClassifier, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).logits


def folds_exactly(model: SmoothedImageClassifier) -> bool:
    if not hasattr(model.model, "peft_config"):  # linear, full: the base weights themselves were trained
        return True
    try:
        merged_copy(model.model)
    except NotMergeable:
        return False
    return True


def test_the_table_covers_every_model_type_in_the_mapping():
    assert check_table_covers_the_mapping() == []
    assert not set(LEFT_OUT) & {row.model_type for row in TINY_MODELS.values()}


@pytest.mark.parametrize("case,method", CASES, ids=[f"{case}-{method}" for case, method in CASES])
def test_wrap_train_certify_save_reload_merge(case, method, base_dirs, tmp_path, one_thread):
    model = SmoothedImageClassifier.from_pretrained(base_dirs(case), sigma=0.25, method=method, **NORMALIZATION)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    train_one_step(model, tmp_path / "trainer")
    parameters = dict(model.named_parameters())
    assert all(torch.equal(parameters[n], before) for n, before in frozen.items()), "a frozen parameter changed"
    assert any(not torch.equal(parameters[n], before) for n, before in trainable.items()), "training changed nothing"

    images = pixels(2)
    certificates = model.certify(images, **CERTIFY)
    inference = model.inference_model()  # merged where that is exact, else the model itself
    torch.testing.assert_close(logits(inference, images), logits(model, images), rtol=1e-4, atol=1e-4)

    model.save_pretrained(tmp_path / "saved")
    reloaded = SmoothedImageClassifier.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(logits(reloaded, images), logits(model, images), rtol=0, atol=1e-6)
    assert reloaded.certify(images, **CERTIFY) == certificates

    if not METHODS[method].mergeable:
        return
    if not folds_exactly(model):
        assert inference is model  # certified unmerged
        with pytest.raises(ValueError, match="cannot fold"):
            model.save_pretrained(tmp_path / "merged", merge_adapter=True)
        return
    model.save_pretrained(tmp_path / "merged", merge_adapter=True)
    merged = SmoothedImageClassifier.from_pretrained(tmp_path / "merged")
    assert merged.config.merged == (METHODS[method].saved is not Saved.WHOLE_MODEL)  # `full` is whole already
    assert not hasattr(merged.model, "peft_config")
    torch.testing.assert_close(logits(merged, images), logits(model, images), rtol=1e-4, atol=1e-4)


def test_merging_falls_back_to_the_unmerged_model_where_peft_cannot_fold_a_layer(base_dirs, caplog):
    # BiT's weight-standardized convolutions standardize the weight in their forward: a folded delta would be
    # standardized away, so the merged model would be another classifier.
    model = SmoothedImageClassifier.from_pretrained(base_dirs("bit"), sigma=0.25, method="lora", **NORMALIZATION)
    with pytest.raises(NotMergeable, match="WeightStandardizedConv2d has its own forward"):
        merged_copy(model.model)
    assert model.inference_model() is model
    assert model.smoother().base_classifier is model
    # A user's peft_config that targets grouped convolutions: peft cannot merge those either.
    grouped = SmoothedImageClassifier.from_pretrained(
        base_dirs("regnet"), sigma=0.25, peft_config=LoraConfig(r=4, target_modules=["convolution"]),
        **NORMALIZATION,
    )
    with pytest.raises(NotMergeable, match="groups="):
        merged_copy(grouped.model)
    assert grouped.certify(pixels(1), **CERTIFY) == grouped.smoother(merge_adapter=False).certify(pixels(1), **CERTIFY)


def test_target_derivation_finds_the_backbone_and_skips_grouped_convolutions():
    clip, hgnet, lcnet = (TINY_MODELS[case].build() for case in ("clip", "hgnet_v2", "pp_lcnet"))
    assert (backbone_module_names(clip), head_module_names(clip)) == (["vision_model"], ["classifier"])
    assert (backbone_module_names(hgnet), head_module_names(hgnet)) == (["embedder", "encoder"], ["fc"])
    assert (backbone_module_names(lcnet), head_module_names(lcnet)) == (["encoder", "last_convolution"], ["head"])
    mobilenet = TINY_MODELS["mobilenet_v1"].build()
    targets = adaptable_layers(mobilenet)
    assert targets and all(mobilenet.get_submodule(name).groups == 1 for name in targets)
    assert any(getattr(m, "groups", 1) > 1 for m in mobilenet.modules())  # its depthwise ones are left out
    bit = TINY_MODELS["bit"].build()  # a Conv2d subclass (weight-standardized) is a convolution
    assert {type(bit.get_submodule(name)).__name__ for name in adaptable_layers(bit)} == {"WeightStandardizedConv2d"}


@pytest.mark.parametrize("case", ["deit-teacher", "levit-teacher"])
def test_distilled_two_head_models_train_and_certify_on_the_mean_of_their_heads(case, base_dirs):
    model = SmoothedImageClassifier.from_pretrained(base_dirs(case), sigma=0.25, method="lora", **NORMALIZATION)
    images, labels = pixels(4), torch.tensor([0, 1, 2, 0])
    output = model(images, labels=labels)
    normalized = (images - model.image_mean) / model.image_std
    heads = model.model(pixel_values=normalized)
    mean = (heads.cls_logits + heads.distillation_logits) / 2
    torch.testing.assert_close(output.logits, mean)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(mean, labels))
    output.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_peft_config_outside_the_registry_round_trips_through_peft(base_dirs, tmp_path):
    vera = VeraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    model = SmoothedImageClassifier.from_pretrained(base_dirs("vit"), sigma=0.5, peft_config=vera, **NORMALIZATION)
    assert model.config.peft_method == "vera"
    train_one_step(model, tmp_path / "trainer")
    model.save_pretrained(tmp_path / "saved")
    reloaded = SmoothedImageClassifier.from_pretrained(tmp_path / "saved")
    assert type(reloaded.model.peft_config["default"]) is VeraConfig
    images = pixels(2)
    torch.testing.assert_close(logits(reloaded, images), logits(model, images), rtol=0, atol=1e-6)
    assert reloaded.certify(images, **CERTIFY) == model.certify(images, **CERTIFY)


def test_bad_methods_and_peft_configs_are_refused_with_what_would_work(base_dirs):
    with pytest.raises(ValueError, match=r"unknown method 'lorra'; allowed: \['adapter'"):
        SmoothedImageClassifier.from_pretrained(base_dirs("vit"), sigma=0.25, method="lorra", **NORMALIZATION)
    with pytest.raises(ValueError, match=r"'adapter' does not apply to ResNetForImageClassification \(model type "
                                         r"'resnet'\).*transformer backbone.*apply to it are \['dora', 'full'"):
        SmoothedImageClassifier.from_pretrained(base_dirs("resnet"), sigma=0.25, method="adapter", **NORMALIZATION)
    with pytest.raises(ValueError, match=r"'vpt' does not apply .*'swin'.*no \[CLS\] token"):
        SmoothedImageClassifier.from_pretrained(base_dirs("swin"), sigma=0.25, method="vpt", **NORMALIZATION)
    with pytest.raises(ValueError, match=r"does not fit ViTForImageClassification.*target_modules=\['fc1', 'fc2', "
                                         r"'k_proj', 'o_proj', 'q_proj', 'v_proj'\]"):
        SmoothedImageClassifier.from_pretrained(
            base_dirs("vit"), sigma=0.25, peft_config=LoraConfig(target_modules=["query", "value"]), **NORMALIZATION
        )


FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from smoothing_hf import SmoothedImageClassifier
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = {}
    for kind, folder in json.loads(sys.argv[1]).items():
        model = SmoothedImageClassifier.from_pretrained(folder)
        with torch.no_grad():
            logits = model(images).logits
        certificates = model.certify(images, n0=4, n=32, alpha=0.1, batch_size=32, seed=3)
        results[kind] = {"logits": logits.tolist(), "certificates": [list(c) for c in certificates]}
    print(json.dumps(results))
""")


def test_each_saved_kind_reloads_in_a_fresh_process(base_dirs, tmp_path):
    kinds = {  # kind -> (case, method or peft config, merged export)
        "peft adapter": ("swin", "lora", False),
        "peft adapter, a config outside the registry": ("vit", VeraConfig(r=4, target_modules=["q_proj"]), False),
        "our weights (bottleneck adapters)": ("dinov2", "adapter", False),
        "our weights (head of a CNN with BatchNorm)": ("mobilenet_v2", "linear", False),
        "whole model": ("convnext", "full", False),
        "merged export": ("resnet", "loha", True),
    }
    folders, expected = {}, {}
    images = pixels(2)
    for kind, (case, method, merge) in kinds.items():
        how = {"peft_config": method} if not isinstance(method, str) else {"method": method}
        model = SmoothedImageClassifier.from_pretrained(base_dirs(case), sigma=0.25, **how, **NORMALIZATION)
        train_one_step(model, tmp_path / "trainer")
        folders[kind] = str(tmp_path / kind.replace(" ", "_"))
        model.save_pretrained(folders[kind], merge_adapter=merge)
        expected[kind] = (logits(model, images), model.certify(images, **CERTIFY))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(folders)], capture_output=True, text=True,
                         env=env, check=True)
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for kind, (expected_logits, expected_certificates) in expected.items():
        tolerance = 1e-4 if kinds[kind][2] else 1e-6
        torch.testing.assert_close(torch.tensor(results[kind]["logits"]), expected_logits, rtol=0, atol=tolerance)
        assert [tuple(c) for c in results[kind]["certificates"]] == [tuple(c) for c in expected_certificates], kind


def test_the_readme_table_of_model_types_and_methods_is_current():
    with open(README, encoding="utf-8") as handle:
        readme = handle.read()
    assert markdown_table() in readme, "regenerate it with `python tests/model_types.py`"
