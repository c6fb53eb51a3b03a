"""examples/compare.py and smoothing_hf.comparison on a tiny base and the embedded digits: every kind of method
trained a step, certified on the same images, in one table (mean ± std over seeds, best marked) and one plot."""

import json
import os

import pytest
import torch
from conftest import tiny_resnet
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from test_examples import run_example
from transformers import ViTImageProcessorPil

from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.baselines import ddpm_unet_config
from smoothing_hf.comparison import ComparisonSettings, run_comparison
from smoothing_hf.data import load_image_dataset
from smoothing_hf.reporting.comparison import comparison_table

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_trains_certifies_and_tabulates_every_kind_of_method(tiny_vit_gray_dir, tmp_path):
    torch.manual_seed(0)
    surrogate = str(tmp_path / "surrogate")  # another architecture stands in for the base (query access)
    tiny_resnet().save_pretrained(surrogate)
    ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5]).save_pretrained(surrogate)
    DDPMPipeline(unet=UNet2DModel(**ddpm_unet_config(28, 1, 8)), scheduler=DDPMScheduler()).save_pretrained(
        tmp_path / "ddpm"
    )
    output = tmp_path / "compare"
    shared = [
        "--base",
        tiny_vit_gray_dir,
        "--dataset_name",
        "embedded:digits",
        "--sigma",
        0.25,
        "--output_dir",
        output,
        "--seeds",
        "0,1",
        "--seeded_methods",
        "lora",
        "--epochs",
        0.05,
        "--batch_size",
        16,
        "--eval_batch_size",
        128,
        "--n0",
        10,
        "--n",
        40,
        "--alpha",
        0.05,
        "--skip",
        30,
        "--max_examples",
        3,
        "--certify_batch_size",
        64,
    ]
    run_example(
        "compare.py",
        *shared,
        "--methods",
        "base,linear,lora,consistency,dncnn-stability",
        "--diffusion_model",
        tmp_path / "ddpm",
        "--surrogate_model",
        surrogate,
        "--dncnn_options",
        '{"depth": 3, "width": 4}',
    )
    names = [
        "base",
        "linear",
        "lora-seed0",
        "lora-seed1",
        "consistency",
        "dncnn-stability",
        "dncnn-surrogate",
        "diffusion",
    ]
    assert sorted(os.listdir(output)) == sorted(
        names + ["certified_accuracy.png", "comparison.json", "comparison.md", "comparison.tex"]
    )
    results = {name: json.loads((output / name / "train_results.json").read_text()) for name in names}
    assert results["base"]["trainable_parameters"] == 0 == results["diffusion"]["trainable_parameters"]
    assert results["base"]["training_seconds"] == 0 and results["lora-seed1"]["seed"] == 1
    assert 0 < results["lora-seed0"]["trainable_parameters"] < results["lora-seed0"]["total_parameters"]
    loaded = SmoothedImageClassifier.from_pretrained(output / "dncnn-stability")
    assert loaded.config.training["objective"] == "stability"
    query_access = SmoothedImageClassifier.from_pretrained(output / "dncnn-surrogate")
    assert query_access.config.training["objective"] == f"stability (surrogate: {surrogate})"
    assert (
        query_access.config.base_model_name_or_path == tiny_vit_gray_dir
    )  # trained through the surrogate, certifies the base
    assert results["dncnn-surrogate"]["trainable_parameters"] == results["dncnn-stability"]["trainable_parameters"]
    assert SmoothedImageClassifier.from_pretrained(output / "consistency").config.training["steps"] >= 1

    comparison = json.loads((output / "comparison.json").read_text())
    rows = {row["name"]: row for row in comparison["rows"]}
    assert list(rows) == ["base", "linear", "lora", "consistency", "dncnn-stability", "dncnn-surrogate", "diffusion"]
    assert rows["lora"]["seeds"] == 2 and rows["lora"]["acr_std"] is not None and rows["base"]["acr_std"] is None
    assert all(row["num_examples"] == 3 and row["samples_per_second"] > 0 for row in rows.values())
    markdown = (output / "comparison.md").read_text()
    assert "| lora (2 seeds) |" in markdown and " ± " in markdown and "samples/s" in markdown
    # n = 40 at alpha = 0.05: pA_lower <= 0.05^(1/40) = 0.92791, radius <= 0.25 * Phi^-1(0.92791) = 0.3651
    assert "3 held-out images, n0 = 10, n = 40, alpha = 0.05;" in markdown and "= 0.365 can be certified" in markdown
    assert "\\toprule" in (output / "comparison.tex").read_text()
    assert comparison["settings"]["sigma"] == 0.25 and comparison["settings"]["seeds"] == [0, 1]

    # Rerunning reuses the runs (nothing is trained again) and certifies a run trained elsewhere beside them.
    before = (output / "lora-seed0" / "train_results.json").stat().st_mtime_ns
    run_example("compare.py", *shared, "--methods", "lora", "--pretrained", f"elsewhere={output / 'dncnn-stability'}")
    assert (output / "lora-seed0" / "train_results.json").stat().st_mtime_ns == before
    again = {row["name"]: row for row in json.loads((output / "comparison.json").read_text())["rows"]}
    assert list(again) == ["lora", "elsewhere"] and again["lora"] == rows["lora"]
    for key in ("certified_accuracy", "acr", "trainable_parameters"):  # the same model, images and noise seed
        assert again["elsewhere"][key] == rows["dncnn-stability"][key], key


@pytest.mark.parametrize(
    ("method", "missing"), [("dncnn-surrogate", "surrogate_model"), ("diffusion", "diffusion_model")]
)
def test_a_method_without_its_model_is_refused_by_name(tiny_vit_gray_dir, tmp_path, method, missing):
    with pytest.raises(ValueError, match=missing):
        run_comparison(
            tiny_vit_gray_dir,
            load_image_dataset("embedded:digits"),
            ComparisonSettings(sigma=0.25),
            tmp_path,
            methods=[method],
        )


def test_a_method_that_does_not_apply_to_the_base_fails_before_anything_is_trained(tmp_path):
    resnet = str(tmp_path / "resnet")
    tiny_resnet().save_pretrained(resnet)
    ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5]).save_pretrained(resnet)
    with pytest.raises(ValueError, match="'adapter' does not apply to .*: it needs a transformer backbone"):
        run_comparison(
            resnet,
            load_image_dataset("embedded:digits"),
            ComparisonSettings(sigma=0.25),
            tmp_path / "out",
            methods=["lora", "adapter"],
        )
    assert not (tmp_path / "out").exists()


def test_the_table_marks_the_best_mean_and_shows_the_spread():
    rows = [
        {
            "name": "a",
            "seeds": 3,
            "num_examples": 10,
            "certified_accuracy": {"0": 0.9, "0.5": 0.5},
            "certified_accuracy_std": {"0": 0.01, "0.5": 0.02},
            "acr": 0.4,
            "acr_std": 0.01,
            "trainable_parameters": 100,
            "training_seconds": 12.3,
            "samples_per_second": 1000.0,
        },
        {
            "name": "b_1",
            "seeds": 1,
            "num_examples": 10,
            "certified_accuracy": {"0": 0.8, "0.5": 0.6},
            "certified_accuracy_std": {"0": None, "0.5": None},
            "acr": 0.45,
            "acr_std": None,
            "trainable_parameters": None,
            "training_seconds": 0.0,
            "samples_per_second": 50.0,
        },
    ]
    markdown = comparison_table(rows, radii=(0.0, 0.5)).splitlines()
    assert markdown[0] == "| method | trainable | train s | samples/s | r = 0 | r = 0.5 | ACR |"
    assert markdown[2] == "| a (3 seeds) | 100 | 12 | 1000 | 90.0 ± 1.0* | 50.0 ± 2.0 | 0.400 ± 0.010 |"
    assert markdown[3] == "| b_1 | — | 0 | 50 | 80.0 | 60.0* | 0.450* |"
    latex = comparison_table(rows, radii=(0.0, 0.5), latex=True)
    assert (
        r"\textbf{90.0 $\pm$ 1.0}" in latex and r"b\_1 & --- & 0 & 50 & 80.0 & \textbf{60.0} & \textbf{0.450}" in latex
    )


def test_a_method_trained_twice_with_one_seed_gives_the_same_weights(tiny_vit_gray_dir, tmp_path):
    # The model was built before any seed was set, so LoRA's initial weights followed the global random state.
    dataset = load_image_dataset("embedded:digits")
    settings = ComparisonSettings(
        sigma=0.25,
        epochs=0.02,
        batch_size=16,
        eval_batch_size=256,
        n0=10,
        n=20,
        alpha=0.1,
        skip=200,
        certify_batch_size=64,
    )
    for run, global_seed in (("a", 1), ("b", 2)):
        torch.manual_seed(global_seed)
        run_comparison(tiny_vit_gray_dir, dataset, settings, tmp_path / run, methods=["lora"], seeds=[5])
    first, second = ((tmp_path / run / "lora" / "adapter_model.safetensors").read_bytes() for run in ("a", "b"))
    assert first == second


def test_bad_dncnn_options_fail_when_the_settings_are_made():
    with pytest.raises(ValueError, match="`dncnn_options`"):
        ComparisonSettings(sigma=0.25, dncnn_options="{depth: 6}")
    with pytest.raises(ValueError, match="`dncnn_options`"):
        ComparisonSettings(sigma=0.25, dncnn_options="[6, 16]")


def test_a_training_objective_row_trains_and_certifies_on_a_tiny_model(tiny_vit_gray_dir, tmp_path):
    settings = ComparisonSettings(
        sigma=0.25, epochs=0.02, batch_size=8, eval_batch_size=256, n0=10, n=20, alpha=0.1, skip=200,
        certify_batch_size=64, objective_options='{"smoothadv": {"epsilon": 0.25, "steps": 1}}',
    )
    run_comparison(tiny_vit_gray_dir, load_image_dataset("embedded:digits"), settings, tmp_path,
                   methods=["lora-smoothadv"], seeds=[0, 1], seeded_methods=["lora-smoothadv"])
    for seed in (0, 1):
        run = tmp_path / f"lora-smoothadv-seed{seed}"
        training = SmoothedImageClassifier.from_pretrained(run).config.training
        assert training["objective"] == "smoothadv" and training["num_noise_samples"] == 2
        assert training["objective_options"] == {"epsilon": 0.25, "steps": 1, "step_size": None, "warmup_epochs": 10}
        assert json.loads((run / "certify" / "summary.json").read_text())["num_examples"] == 2
    (row,) = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert row["name"] == "lora-smoothadv" and row["seeds"] == 2


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("objective_options", '{"smoothadv": {"epsilon": 0}}', r"objective 'smoothadv'.*`epsilon`"),
        ("objective_options", '{"smoothadv": {"lbd": 1}}', r"\['lbd'\] do not belong to objective 'smoothadv'"),
        ("objective_options", '{"adversarial": {}}', r"`objective_options` has keys \['adversarial'\]"),
        ("noise_samples", '{"macer": 1}', r"objective 'macer' needs `num_noise_samples` >= 2"),
    ],
)
def test_bad_objective_settings_fail_when_the_settings_are_made(field, value, match):
    with pytest.raises(ValueError, match=match):
        ComparisonSettings(sigma=0.25, **{field: value})
