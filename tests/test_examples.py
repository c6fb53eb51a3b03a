"""The example scripts end to end on tiny models and the embedded data (run in-process for speed)."""

import json
import os
import runpy
import subprocess
import sys

import pytest
from transformers import AutoModelForImageClassification

from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.files import read_rows

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
QUIET = ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--per_device_eval_batch_size", "64"]


def run_example(script: str, *args: str) -> None:
    argv = sys.argv
    sys.argv = [script, *map(str, args)]
    try:
        runpy.run_path(os.path.join(EXAMPLES, script), run_name="__main__")
    finally:
        sys.argv = argv


def test_train_base_writes_an_ordinary_model_folder(tmp_path):
    run_example("train_base.py", "--model_type", "resnet", "--dataset_name", "embedded:digits",
                "--output_dir", tmp_path, "--max_steps", 2, "--per_device_train_batch_size", 8, *QUIET)
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert model.config.num_labels == 10 and model.config.num_channels == 1


@pytest.mark.parametrize("method", ["lora", "vpt"])
def test_train_then_certify(method, tiny_vit_gray_dir, tmp_path):
    output = tmp_path / method
    run_example("train.py", "--model_name_or_path", tiny_vit_gray_dir, "--dataset_name", "embedded:digits",
                "--method", method, "--sigma", 0.25, "--output_dir", output, "--max_steps", 2,
                "--per_device_train_batch_size", 8, *QUIET)
    results = json.loads((output / "train_results.json").read_text())
    assert results["method"] == method and 0 < results["trainable_share"] < 1
    assert 0 <= results["noisy_accuracy_before"] <= 1 and 0 <= results["noisy_accuracy_after"] <= 1
    model = SmoothedImageClassifier.from_pretrained(output)
    assert model.config.peft_method == method and model.sigma == 0.25
    assert model.config.training["dataset"] == "embedded:digits" and model.config.training["steps"] == 2

    run_example("certify.py", "--model_name_or_path", output, "--dataset_name", "embedded:digits", "--n0", 10,
                "--n", 50, "--alpha", 0.01, "--batch_size", 64, "--max_examples", 6, "--skip", 7,
                "--output_dir", output / "certify")
    rows = read_rows(output / "certify" / "certify.tsv")
    assert [row["idx"] for row in rows] == [0, 7, 14, 21, 28, 35]
    summary = json.loads((output / "certify" / "summary.json").read_text())
    assert summary["num_examples"] == 6 and summary["settings"]["n"] == 50


def test_joint_adaptation_gives_a_new_head_for_the_downstream_labels(tiny_vit_gray_dir, tmp_path):
    run_example("train.py", "--model_name_or_path", tiny_vit_gray_dir, "--dataset_name", "embedded:digits",
                "--new_head", "true", "--method", "lora", "--sigma", 0.5, "--output_dir", tmp_path,
                "--max_steps", 1, "--per_device_train_batch_size", 8, *QUIET)
    model = SmoothedImageClassifier.from_pretrained(tmp_path)
    assert model.model.config.id2label == {i: str(i) for i in range(10)}


def test_a_dataset_whose_labels_do_not_fit_the_head_is_an_error(tmp_path):
    from conftest import tiny_vit
    from transformers import ViTImageProcessorPil

    tiny_vit(num_channels=1, num_labels=5).save_pretrained(tmp_path / "base")
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5])
    processor.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="num_labels=5"):
        run_example("train.py", "--model_name_or_path", tmp_path / "base", "--dataset_name", "embedded:digits",
                    "--output_dir", tmp_path / "out", "--max_steps", 1, *QUIET)


def test_train_blackbox_then_certify(tiny_vit_gray_dir, tmp_path):
    output = tmp_path / "blackbox"
    run_example("train_blackbox.py", "--target_model_name_or_path", tiny_vit_gray_dir,
                "--dataset_name", "embedded:digits",
                "--sigma", 0.25, "--output_dir", output, "--steps", 2, "--batch_size", 8, "--num_directions", 2,
                "--autoencoder_steps", 3, "--eval_batch_size", 120, "--disable_tqdm", "true")
    results = json.loads((output / "train_results.json").read_text())
    assert results["queries"] == 2 * 2 * 2 * 8 and results["evaluation_queries"] == 2 * 360
    assert 0 < results["trainable_parameters"] < results["coordinator_parameters"]
    assert 0 <= results["noisy_accuracy_before"] <= 1 and 0 <= results["noisy_accuracy_after"] <= 1
    model = SmoothedImageClassifier.from_pretrained(output)  # encoder pretrained here, without labels
    assert model.config.input_module["type"] == "coordinator" and model.sigma == 0.25
    assert model.config.base_model_name_or_path == tiny_vit_gray_dir
    assert model.config.training["queries"] == 64 and model.config.training["dataset"] == "embedded:digits"
    assert model.input_module.options["encoder_name_or_path"] == str(output / "encoder")

    run_example("certify.py", "--model_name_or_path", output, "--dataset_name", "embedded:digits", "--n0", 10,
                "--n", 50, "--alpha", 0.01, "--batch_size", 64, "--max_examples", 3, "--output_dir", output / "certify",
                "--bound_seed", 2)
    summary = json.loads((output / "certify" / "summary.json").read_text())
    assert summary["num_examples"] == 3 and summary["settings"]["bound_seed"] == 2


def test_train_base_with_the_same_seed_saves_the_same_weights(tmp_path):
    # The base was built before any seed was set, so two runs of the README's main job gave different bases.
    for run in ("first", "second"):
        run_example("train_base.py", "--dataset_name", "embedded:digits", "--output_dir", tmp_path / run, "--seed", 3,
                    "--max_train_samples", 16, "--max_eval_samples", 8, "--num_train_epochs", 1,
                    "--per_device_train_batch_size", 8, *QUIET)
    first, second = ((tmp_path / run / "model.safetensors").read_bytes() for run in ("first", "second"))
    assert first == second


@pytest.mark.parametrize(
    "bad, message",
    [(["--steps", 0], "`steps` must be a positive int"), (["--num_noise", -1], "`num_noise` must be a positive int"),
     (["--radii", 0.5, -0.25], "`radii` must be a finite number >= 0"), (["--n", 0], "`n` must be a positive int"),
     (["--alpha", 1.5], "`alpha` must be"), (["--step_size", 0], "`step_size` must be"),
     (["--certify_dir", "missing"], "`certify_dir` must be an examples/certify.py output folder"),
     (["--split", "test"], "`split` must be one of")],
)
def test_attack_checks_its_arguments_before_it_certifies_or_writes(bad, message, tiny_vit_gray_dir, tmp_path):
    # attack.py used to certify the examples into <output_dir>/certify first and fail on a bad argument after.
    with pytest.raises(ValueError, match=message):
        run_example("attack.py", "--model_name_or_path", tiny_vit_gray_dir, "--sigma", 0.25, "--dataset_name",
                    "embedded:digits", "--max_examples", 2, "--certify_n", 20, "--output_dir", tmp_path / "out", *bad)
    assert not (tmp_path / "out").exists()


def test_attack_with_a_bad_argument_exits_non_zero_and_writes_nothing(tiny_vit_gray_dir, tmp_path):
    script = os.path.join(EXAMPLES, "attack.py")
    finished = subprocess.run(
        [sys.executable, script, "--model_name_or_path", tiny_vit_gray_dir, "--sigma", "0.25", "--dataset_name",
         "embedded:digits", "--steps", "0", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode != 0 and "`steps` must be a positive int" in finished.stderr
    assert not (tmp_path / "out").exists()


def test_train_takes_its_arguments_as_one_json_file_and_saves_the_trainer_metrics(tiny_vit_gray_dir, tmp_path):
    arguments = {"model_name_or_path": tiny_vit_gray_dir, "dataset_name": "embedded:digits", "method": "lora",
                 "sigma": 0.5, "output_dir": str(tmp_path / "out"), "max_steps": 1, "per_device_train_batch_size": 8,
                 "per_device_eval_batch_size": 64, "report_to": "none", "save_strategy": "no", "disable_tqdm": True}
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    run_example("train.py", tmp_path / "args.json")
    results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert results["method"] == "lora" and results["sigma"] == 0.5 and "train_runtime" in results
    assert results["training_seconds"] == results["train_runtime"] and 0 < results["trainable_share"] < 1
    evaluation = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert evaluation["eval_accuracy"] == results["noisy_accuracy_after"]
    assert evaluation["before_accuracy"] == results["noisy_accuracy_before"]
    assert json.loads((tmp_path / "out" / "all_results.json").read_text()).keys() == results.keys() | evaluation.keys()
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 1
    assert SmoothedImageClassifier.from_pretrained(tmp_path / "out").sigma == 0.5


def test_certify_takes_an_image_folder_given_as_validation_dir_alone(tiny_vit_gray_dir, tmp_path, monkeypatch):
    import datasets
    import numpy as np
    from PIL import Image

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")

    for label in ("0", "1"):  # class subfolders, as the "imagefolder" builder reads them
        (tmp_path / "images" / label).mkdir(parents=True)
        for k in range(2):
            pixels = np.full((28, 28), 60 * k + 100 * int(label), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{k}.png")
    run_example("certify.py", "--model_name_or_path", tiny_vit_gray_dir, "--sigma", 0.25, "--validation_dir",
                tmp_path / "images", "--n0", 8, "--n", 16, "--alpha", 0.1, "--batch_size", 16,
                "--output_dir", tmp_path / "certify")
    rows = read_rows(tmp_path / "certify" / "certify.tsv")
    assert [row["label"] for row in rows] == [0, 0, 1, 1]  # the whole folder, not a held-out part of it


@pytest.mark.parametrize(
    "script, option, text, message",
    [("train.py", "--method_options", '{"r": 16', r"`method_options` must be .*got '\{\"r\": 16', which is not JSON"),
     ("train.py", "--method_options", "[1, 2]", r"`method_options` must be .*got '\[1, 2\]', which is a JSON array"),
     ("train_denoiser.py", "--denoiser_options", "{depth: 6}", "`denoiser_options` must be .*which is not JSON"),
     ("train_denoiser.py", "--denoiser_options", "6", "`denoiser_options` must be .*which is a JSON number")],
)
def test_bad_json_options_are_refused_naming_the_option_before_anything_is_loaded(script, option, text, message,
                                                                                 tmp_path):
    # json.loads' bare JSONDecodeError named neither the option nor the text; a JSON array reached the method.
    with pytest.raises(ValueError, match=message):
        run_example(script, "--model_name_or_path", tmp_path / "no-model-needed", "--dataset_name", "embedded:digits",
                    option, text, "--output_dir", tmp_path / "out", *QUIET)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "script, arguments, message",
    [("gradcam.py", ["--model_name_or_path", "m", "--output", "g.png", "--num_images", 0], "`num_images` must be"),
     ("gradcam.py", ["--model_name_or_path", "m", "--output", "g.png", "--skip", 0], "`skip` must be"),
     ("compare.py", ["--base", "m", "--output_dir", "out", "--sigma", 0.25, "--seeds", "0,one"], "`seeds` must be"),
     ("compare.py", ["--base", "m", "--output_dir", "out", "--sigma", 0.25, "--pretrained", "runs/a"],
      "`pretrained` must be comma-separated label=folder pairs"),
     ("train_base.py", ["--output_dir", "out", "--image_std", 0], "`image_std` must be a positive finite number"),
     ("train_denoiser.py", ["--model_name_or_path", "m", "--dataset_name", "embedded:digits", "--output_dir", "out",
                            "--denoiser", "diffusion", "--diffusion_model", "d", "--denoiser_options", '{"depth": 6}'],
      "`--denoiser_options` are DnCNN's, for --denoiser dncnn only")],
)
def test_example_arguments_are_checked_before_anything_is_loaded(script, arguments, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        run_example(script, *arguments)
    assert not (tmp_path / "out").exists()


def test_train_then_certify_with_the_same_seed_gives_the_same_adapter_and_certificates(tiny_vit_gray_dir, tmp_path):
    from safetensors.torch import load_file

    for run in ("first", "second"):
        run_example("train.py", "--model_name_or_path", tiny_vit_gray_dir, "--dataset_name", "embedded:digits",
                    "--method", "lora", "--sigma", 0.25, "--output_dir", tmp_path / run, "--seed", 5, "--max_steps", 2,
                    "--per_device_train_batch_size", 8, *QUIET)
        run_example("certify.py", "--model_name_or_path", tmp_path / run, "--dataset_name", "embedded:digits",
                    "--n0", 8, "--n", 32, "--alpha", 0.1, "--batch_size", 64, "--max_examples", 4, "--skip", 11,
                    "--output_dir", tmp_path / run / "certify")
    weights = sorted(path.name for path in (tmp_path / "first").glob("*.safetensors"))
    assert weights and weights == sorted(path.name for path in (tmp_path / "second").glob("*.safetensors"))
    for name in weights:
        first, second = (load_file(tmp_path / run / name) for run in ("first", "second"))
        assert first.keys() == second.keys() and all(first[key].equal(second[key]) for key in first)
    first, second = (read_rows(tmp_path / run / "certify" / "certify.tsv") for run in ("first", "second"))
    assert len(first) == 4 and [{**row, "time": None} for row in first] == [{**row, "time": None} for row in second]
