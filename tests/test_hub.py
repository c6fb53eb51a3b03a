"""Hub I/O: save -> load in a fresh process, push and load through a local Hub server, model cards, refreshing
a folder's results, and bad folders."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from hub_server import FakeHub
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from test_examples import run_example
from test_methods import SAVED_FILES, train_a_few_steps
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

from smoothing_hf import SmoothedImageClassifier, SmoothingConfig
from smoothing_hf.config import check_certification
from smoothing_hf.hub import certification_record, model_card, update_results
from smoothing_hf.methods import METHODS, Trains
from smoothing_hf.pipeline import certify

TESTS = os.path.dirname(os.path.abspath(__file__))
ROUND_TRIP_METHODS = ["lora", "loha", "adapter", "vpt", "full"]
CERTIFY = dict(n0=8, n=64, alpha=0.01, batch_size=64, seed=1)

# Loads each model of a request in this fresh process and writes its logits (safetensors) and certificates;
# the loads listed under "refused" must fail: their errors are written too.
LOAD_AND_EVALUATE = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
from smoothing_hf import SmoothedImageClassifier

request = json.loads(sys.argv[1])
pixels = load_file(request["pixels"])["pixels"]
logits, results = {}, {}
for name, (source, kwargs) in request.get("refused", {}).items():
    try:
        SmoothedImageClassifier.from_pretrained(source, **kwargs)
    except Exception as error:
        results[name] = {"error": type(error).__name__, "message": str(error)}
for name, (source, kwargs) in request["models"].items():
    model = SmoothedImageClassifier.from_pretrained(source, **kwargs)
    with torch.no_grad():
        logits[name] = model(pixels).logits.contiguous()
    results[name] = {"certificates": [list(c) for c in model.certify(pixels, **request["certify"])],
                     "config": model.config.to_dict()}
save_file(logits, request["output"] + ".safetensors")
with open(request["output"] + ".json", "w") as handle:
    json.dump(results, handle)
"""


def run_python(script: str, request: dict, env: dict | None = None) -> str:
    """Run ``script`` in a fresh Python process with ``request`` as its JSON argument; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), json.dumps(request)],
        env=env, capture_output=True, text=True, timeout=600, cwd=TESTS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def evaluate_in_fresh_process(models: dict, pixels_path, output, env=None, refused=None) -> tuple[dict, dict]:
    request = {"pixels": str(pixels_path), "models": models, "certify": CERTIFY, "output": str(output),
               "refused": refused or {}}
    run_python(LOAD_AND_EVALUATE, request, env)
    with open(f"{output}.json") as handle:
        return load_file(f"{output}.safetensors"), json.load(handle)


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def saved(tiny_vit_dir, pixels, tmp_path_factory):
    """Each round-trip method trained a few steps and saved; with its logits and certificates before saving."""
    root = tmp_path_factory.mktemp("saved")
    expected = {}
    for method in ROUND_TRIP_METHODS:
        model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method=method)
        train_a_few_steps(model, num_channels=3)
        model.save_pretrained(root / method)
        with torch.no_grad():
            logits = model(pixels).logits
        expected[method] = (logits, [list(c) for c in model.certify(pixels, **CERTIFY)], model)
    save_file({"pixels": pixels}, root / "pixels.safetensors")
    return root, expected


# ---------------------------------------------------------------------------------------------- round trip


def test_train_save_load_in_a_fresh_process_gives_identical_logits_and_certificates(saved):
    root, expected = saved
    models = {method: [str(root / method), {}] for method in ROUND_TRIP_METHODS}
    logits, results = evaluate_in_fresh_process(models, root / "pixels.safetensors", root / "fresh")
    for method in ROUND_TRIP_METHODS:
        assert torch.equal(logits[method], expected[method][0]), method
        assert results[method]["certificates"] == expected[method][1], method
        assert results[method]["config"]["peft_method"] == method and results[method]["config"]["sigma"] == 0.25


@pytest.mark.parametrize("method", ROUND_TRIP_METHODS)
def test_a_saved_folder_holds_the_adapter_processor_config_and_card(saved, method):
    root, expected = saved
    files = set(os.listdir(root / method))  # the weights as the method's registry row says it is saved
    others = {"preprocessor_config.json", "smoothing_config.json", "README.md"}
    assert files == SAVED_FILES[METHODS[method].saved] | others
    config = SmoothingConfig.from_json_file(root / method / "smoothing_config.json")
    trainable = sum(p.numel() for p in expected[method][2].parameters() if p.requires_grad)
    assert config.training["trainable_parameters"] == trainable > 0 and config.training["train_head"]
    assert config.certification is None and not config.merged
    card = ModelCard.load(root / method / "README.md")
    assert card.data.library_name == "smoothing_hf" and method in card.data.tags
    assert f"{trainable:,}" in card.text and "sigma = 0.25" in card.text and "Not certified yet" in card.text
    every = METHODS[method].trains is Trains.EVERY_PARAMETER
    assert ("Every parameter" if every else f"only the {method} parameters and the classification head") in card.text


def test_the_trainable_parameter_count_survives_a_reload_and_resave(saved, tmp_path):
    root, _ = saved
    recorded = SmoothingConfig.from_json_file(root / "lora" / "smoothing_config.json").training
    SmoothedImageClassifier.from_pretrained(root / "lora").save_pretrained(tmp_path)  # its adapter is frozen now
    assert SmoothingConfig.from_json_file(tmp_path / "smoothing_config.json").training == recorded


def test_a_merged_model_loads_with_plain_transformers_and_as_a_smoothed_model(saved, pixels, tmp_path):
    root, expected = saved
    model = expected["lora"][2]
    model.save_pretrained(tmp_path, merge_adapter=True)
    assert "adapter_config.json" not in os.listdir(tmp_path)
    plain = AutoModelForImageClassification.from_pretrained(tmp_path)  # transformers alone: normalized pixels
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    reloaded = SmoothedImageClassifier.from_pretrained(tmp_path)
    assert reloaded.config.merged and reloaded.config.peft_method == "lora"
    with torch.no_grad():
        plain_logits = plain(pixel_values=(pixels - mean) / std).logits
        torch.testing.assert_close(plain_logits, expected["lora"][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(reloaded(pixels).logits, expected["lora"][0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'adapter' adds modules of its own"):
        expected["adapter"][2].save_pretrained(tmp_path / "adapter", merge_adapter=True)


def test_nothing_is_loaded_with_pickle(saved, tmp_path, monkeypatch):
    root, _ = saved

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    for method in ROUND_TRIP_METHODS:
        SmoothedImageClassifier.from_pretrained(root / method)


# ---------------------------------------------------------------------------------------------- model card


def certified_config(**changes) -> SmoothingConfig:
    certification = {
        "n0": 100, "n": 100_000, "alpha": 0.001, "seed": 0, "num_examples": 500, "dataset": "cifar10", "split": "test",
        "certified_accuracy": {"0": 0.98, "0.25": 0.94, "0.5": 0.87, "0.75": 0.71}, "acr": 0.62, "abstain_rate": 0.01,
    }
    return SmoothingConfig(
        sigma=0.25, image_mean=[0.5] * 3, image_std=[0.5] * 3, base_model_name_or_path="google/vit-base-patch16-224",
        base_model_revision="3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3", peft_method="lora",
        id2label={str(i): f"class {i}" for i in range(10)}, certification=certification,
        training={"dataset": "cifar10", "trainable_parameters": 1000, "total_parameters": 86_000_000}, **changes,
    )


def test_the_card_parses_and_its_eval_results_carry_the_certified_accuracies():
    card = ModelCard(str(model_card(certified_config(), "user/vit-lora-smoothing-0.25")))  # parse the rendered text
    data = card.data
    assert data.library_name == "smoothing_hf" and data.base_model == "google/vit-base-patch16-224"
    assert {"randomized-smoothing", "certified-robustness", "lora", "peft"} <= set(data.tags)
    assert data.datasets == ["cifar10"] and data.pipeline_tag == "image-classification"
    assert data.model_name == "vit-lora-smoothing-0.25"
    accuracies = {r.metric_config: r.metric_value for r in data.eval_results if r.metric_type == "certified_accuracy"}
    assert accuracies == {"radius=0": 0.98, "radius=0.25": 0.94, "radius=0.5": 0.87, "radius=0.75": 0.71}
    assert [r.metric_value for r in data.eval_results if r.metric_type == "acr"] == [0.62]
    assert all(r.dataset_type == "cifar10" and r.dataset_split == "test" and r.metric_args["sigma"] == 0.25
               for r in data.eval_results)
    assert card.content.count("model-index") == 1
    for text in ["sigma = 0.25**", "n0 = 100", "n = 100,000", "alpha = 0.001", "| 0.25 | 94.0% |", "**0.620**",
                 "1,000 of 86,000,000", 'from_pretrained("user/vit-lora-smoothing-0.25")',
                 "n0=100, n=100000, alpha=0.001"]:
        assert text in card.text, text


SPACE_32 = "l2 in [0, 1] pixels of 32 x 32 x 3"


def test_the_card_and_its_model_index_name_the_certification_space():
    config = certified_config(certify_size=[32, 32], model_input_size=[224, 224], resize_interpolation="bicubic")
    summary = {"certified_accuracy": {"0": 0.9, "0.5": 0.6}, "acr": 0.4, "num_examples": 50, "space": SPACE_32,
               "settings": {"n0": 100, "n": 10_000, "alpha": 0.001, "sigma": 0.25, "space": SPACE_32}}
    config.certification = certification_record(config, summary, dataset_name="cifar10", split="test")
    assert config.certification["space"] == SPACE_32
    card = ModelCard(str(model_card(config, "user/vit-lora-smoothing-0.25")))
    assert f"certification space **{SPACE_32}**" in card.text
    assert "| certification size | 32 x 32: noise added and radii measured there; upsampled inside the model to " \
           "224 x 224 (bicubic) |" in card.text
    results = card.data.eval_results
    assert [r.metric_name for r in results] == [f"Certified accuracy at radius 0 ({SPACE_32})",
                                                f"Certified accuracy at radius 0.5 ({SPACE_32})",
                                                f"Average certified radius ({SPACE_32})"]
    assert all(SPACE_32 in r.task_name and r.metric_args["space"] == SPACE_32 for r in results)
    with pytest.raises(ValueError, match="certified in l2 in .* of 224 x 224 x 3, but this model certifies in .* 32 x"):
        certification_record(config, {**summary, "space": "l2 in [0, 1] pixels of 224 x 224 x 3"})
    with pytest.raises(ValueError, match=r"`certification\['space'\]` must be a non-empty string"):
        check_certification({**config.certification, "space": ""})
    older = {**summary, "space": None, "settings": {k: v for k, v in summary["settings"].items() if k != "space"}}
    assert "space" not in certification_record(config, older)  # an older summary records none: nor does the record


def test_a_card_says_when_its_bound_is_the_randomized_one():
    config = certified_config()
    settings = {"n0": 100, "n": 10_000, "alpha": 0.001, "sigma": 0.25}
    summary = {"certified_accuracy": {"0": 0.9, "0.5": 0.6}, "acr": 0.4, "num_examples": 50, "settings": settings}
    config.certification = certification_record(config, summary)
    assert "bound_seed" not in config.certification
    assert "Clopper-Pearson lower bound of the top" in model_card(config, "user/m").text
    config.certification = certification_record(config, {**summary, "settings": {**settings, "bound_seed": 7}})
    assert config.certification["bound_seed"] == 7
    text = model_card(config, "user/m").text
    assert "randomized Clopper-Pearson lower bound (its uniforms from bound seed 7) of the top" in text
    assert "for the classical bound." in text
    with pytest.raises(ValueError, match=r"`certification\['bound_seed'\]`"):
        check_certification({**config.certification, "bound_seed": -2})


def test_a_card_without_results_or_hub_ids_has_no_model_index():
    config = SmoothingConfig(sigma=0.5, image_mean=[0.5], image_std=[0.5], base_model_name_or_path="/tmp/base",
                             peft_method="vpt")
    data = ModelCard(str(model_card(config, "runs/vpt"))).data
    assert data.eval_results is None and data.base_model is None and data.datasets is None
    assert "model-index" not in data.to_dict()


# ---------------------------------------------------------------------------------------------- results


@pytest.fixture
def digits():
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.rand(3, 28, 28, generator=generator), "labels": i % 10} for i in range(4)]


def test_certify_then_update_results_refreshes_the_folder_config_and_card(saved, digits, tmp_path):
    root, _ = saved
    folder = tmp_path / "lora"
    shutil.copytree(root / "lora", folder)
    model = SmoothedImageClassifier.from_pretrained(folder)
    summary = certify(model, digits, output_dir=tmp_path / "certify", **CERTIFY)
    assert SmoothingConfig.from_json_file(folder / "smoothing_config.json").certification is None  # never silently

    update_results(folder, summary, dataset_name="embedded:digits", split="validation")
    recorded = SmoothedImageClassifier.from_pretrained(folder).config.certification
    assert recorded["certified_accuracy"] == summary["certified_accuracy"] and recorded["acr"] == summary["acr"]
    settings = (recorded["n0"], recorded["n"], recorded["alpha"], recorded["seed"], recorded["num_examples"])
    assert settings == (8, 64, 0.01, 1, 4)
    card = ModelCard.load(folder / "README.md")
    results = card.data.eval_results
    assert {r.metric_config: r.metric_value for r in results if r.metric_type == "certified_accuracy"} == {
        f"radius={r}": v for r, v in summary["certified_accuracy"].items()}
    assert "of `embedded:digits` (validation split)" in card.text and card.data.datasets is None
    space = "l2 in [0, 1] pixels of 28 x 28 x 3"  # the images certified: the digits at the model's input size
    assert summary["space"] == recorded["space"] == space and f"certification space **{space}**" in card.text
    assert all(space in r.metric_name and space in r.task_name for r in results)
    assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]

    # The same through the model: record, then save.
    model.record_certification(summary, dataset_name="embedded:digits")
    model.save_pretrained(tmp_path / "again")
    again = SmoothingConfig.from_json_file(tmp_path / "again" / "smoothing_config.json")
    assert again.certification["acr"] == summary["acr"] and again.certification["space"] == space
    assert f"certification space **{space}**" in ModelCard.load(tmp_path / "again" / "README.md").text


def test_results_from_another_run_are_refused(saved, digits, tmp_path):
    root, _ = saved
    model = SmoothedImageClassifier.from_pretrained(root / "lora")
    summary = certify(model, digits, output_dir=tmp_path / "certify", **CERTIFY)
    with pytest.raises(ValueError, match=r"certified at sigma=0.5, but this model's sigma is 0.25"):
        model.record_certification({**summary, "settings": {**summary["settings"], "sigma": 0.5}})
    with pytest.raises(ValueError, match="another model: method='adapter' there, 'lora' here"):
        model.record_certification({**summary, "settings": {**summary["settings"], "model": {"method": "adapter"}}})
    with pytest.raises(ValueError, match="shard 1 of 2 only; merge the shards"):
        model.record_certification({**summary, "settings": {**summary["settings"], "num_shards": 2, "shard_index": 1}})
    predicted = certify(model, digits, output_dir=tmp_path / "predict", mode="predict", n=64, alpha=0.01, batch_size=64)
    with pytest.raises(ValueError, match="predict-mode summary has no certified radii"):
        model.record_certification(predicted)
    with pytest.raises(ValueError, match="is not a smoothing folder"):
        update_results(tmp_path, summary)
    assert model.config.certification is None


def test_certify_example_updates_the_model_card_only_when_asked(tiny_vit_gray_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, method="lora")
    model.save_pretrained(tmp_path / "model")
    arguments = ["--model_name_or_path", tmp_path / "model", "--dataset_name", "embedded:digits", "--n0", 8, "--n", 32,
                 "--alpha", 0.01, "--batch_size", 64, "--max_examples", 3]
    run_example("certify.py", *arguments, "--output_dir", tmp_path / "plain")
    assert SmoothingConfig.from_json_file(tmp_path / "model" / "smoothing_config.json").certification is None
    run_example("certify.py", *arguments, "--output_dir", tmp_path / "card", "--update_model_card", "true")
    certification = SmoothingConfig.from_json_file(tmp_path / "model" / "smoothing_config.json").certification
    assert certification["num_examples"] == 3 and certification["dataset"] == "embedded:digits"
    assert ModelCard.load(tmp_path / "model" / "README.md").data.eval_results
    with pytest.raises(ValueError, match="--update_model_card needs --mode certify"):
        run_example("certify.py", *arguments, "--output_dir", tmp_path / "predict", "--mode", "predict",
                    "--update_model_card", "true")


# ---------------------------------------------------------------------------------------------- bad folders


def copy_of(saved, method, tmp_path):
    root, _ = saved
    shutil.copytree(root / method, tmp_path / method)
    return tmp_path / method


def edit_config(folder, **changes):
    path = folder / "smoothing_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_adapter_files_without_a_smoothing_config_are_an_error(saved, tmp_path, method):
    folder = copy_of(saved, method, tmp_path)
    os.remove(folder / "smoothing_config.json")
    for kwargs in ({}, {"sigma": 0.25}):
        with pytest.raises(ValueError, match=r"holds adapter files .* but no smoothing_config.json"):
            SmoothedImageClassifier.from_pretrained(folder, **kwargs)


def test_a_config_naming_another_base_model_than_the_adapter_is_an_error(saved, tmp_path, tiny_vit_gray_dir):
    for method, source in [("lora", "adapter_config.json"), ("adapter", "smoothing_weights.safetensors")]:
        folder = copy_of(saved, method, tmp_path)
        edit_config(folder, base_model_name_or_path=tiny_vit_gray_dir)
        message = rf"names the base model '{tiny_vit_gray_dir}', but .*{source} was trained on"
        with pytest.raises(ValueError, match=message):
            SmoothedImageClassifier.from_pretrained(folder)


def test_weights_of_another_shape_than_the_base_model_are_an_error(saved, tmp_path):
    # Adapter weights without our metadata (nothing to compare names with): their shapes give the mismatch away.
    folder = copy_of(saved, "adapter", tmp_path)
    save_file(load_file(folder / "smoothing_weights.safetensors"), folder / "smoothing_weights.safetensors")
    wider = ViTForImageClassification(ViTConfig(image_size=28, patch_size=7, hidden_size=48, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64, num_labels=10))
    wider.save_pretrained(tmp_path / "wider")
    edit_config(folder, base_model_name_or_path=str(tmp_path / "wider"))
    message = r"trained on a different base model than the one its config names: .*\(2, 32\) saved, \(3, 48\) in"
    with pytest.raises(ValueError, match=message):
        SmoothedImageClassifier.from_pretrained(folder)


@pytest.mark.parametrize(
    "method, weights",
    [("lora", "adapter_model.safetensors"), ("vpt", "smoothing_weights.safetensors"), ("full", "model.safetensors")],
)
def test_a_corrupt_or_missing_weight_file_is_an_error_naming_it(saved, tmp_path, method, weights):
    folder = copy_of(saved, method, tmp_path)
    data = (folder / weights).read_bytes()
    (folder / weights).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{weights} is not a readable safetensors file .* corrupt or truncated"):
        SmoothedImageClassifier.from_pretrained(folder)
    os.remove(folder / weights)
    with pytest.raises(ValueError, match=rf"has no {weights}, which holds the"):
        SmoothedImageClassifier.from_pretrained(folder)


def test_a_pickled_adapter_is_never_loaded(saved, tmp_path):
    folder = copy_of(saved, "lora", tmp_path)
    os.remove(folder / "adapter_model.safetensors")
    (folder / "adapter_model.bin").write_bytes(b"not even a pickle")  # peft alone would torch.load this file
    with pytest.raises(ValueError, match=r"has no adapter_model.safetensors, .* safetensors only"):
        SmoothedImageClassifier.from_pretrained(folder)


def test_a_sigma_that_contradicts_the_saved_one_and_bad_config_files(saved, tmp_path):
    folder = copy_of(saved, "lora", tmp_path)
    with pytest.raises(ValueError, match=r"`sigma`=0.5 contradicts the saved sigma=0.25"):
        SmoothedImageClassifier.from_pretrained(folder, sigma=0.5)
    assert SmoothedImageClassifier.from_pretrained(folder, sigma=0.25).sigma == 0.25
    edit_config(folder, certification={"n0": 1, "n": 10, "alpha": 0.001})
    message = r"smoothing_config.json: `certification` must record .* missing \['num_examples'"
    with pytest.raises(ValueError, match=message):
        SmoothedImageClassifier.from_pretrained(folder)
    (folder / "smoothing_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="smoothing_config.json is not valid JSON"):
        SmoothedImageClassifier.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------- the Hub

def hub_environment(hub: FakeHub, home) -> dict:
    """This process's environment without Hugging Face settings, pointed at ``hub`` with its token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_TOKEN=hub.token, HF_HUB_DISABLE_TELEMETRY="1",
               TRANSFORMERS_VERBOSITY="error")
    return env


# The start of each push script: the base model uploaded to the local Hub as "user/tiny-vit".
UPLOAD_BASE = """
import json, os, sys
import torch
from huggingface_hub import CommitOperationAdd, HfApi
from safetensors.torch import load_file, save_file
from smoothing_hf import DnCNN, SmoothedImageClassifier
from smoothing_hf.hub import push_folder
from smoothing_hf.pipeline import certify

request = json.loads(sys.argv[1])
api = HfApi()
api.create_repo("user/tiny-vit")  # the base model, as on the Hub
base = request["base"]
api.create_commit("user/tiny-vit", [CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(base, name))
                                    for name in sorted(os.listdir(base))], commit_message="Add the base model")
"""

PUSH = UPLOAD_BASE + """

model = SmoothedImageClassifier.from_pretrained("user/tiny-vit", sigma=0.25, method="lora")
generator = torch.Generator().manual_seed(0)
optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
model.train()
for _ in range(3):
    pixels = torch.rand(8, 3, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    loss = model(pixels + 0.25 * torch.randn(pixels.shape, generator=generator), labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
first = model.push_to_hub("user/vit-lora-smoothing", private=True, commit_message="LoRA smoothing at sigma 0.25")

pixels = load_file(request["pixels"])["pixels"]
dataset = [{"pixel_values": image, "labels": i} for i, image in enumerate(pixels)]
summary = certify(model, dataset, output_dir=request["certify_dir"], **request["certify"])
model.record_certification(summary, dataset_name="embedded:digits", split="validation")
second = model.push_to_hub("user/vit-lora-smoothing", revision="certified", commit_message="Certification results")
model.save_pretrained(request["folder"])  # a folder saved earlier, pushed as it is but for the card
for name in (".hidden", ".tmp-staging/left-over.json", "notes.tmp", "extra/.cache", "extra/notes.txt"):
    os.makedirs(os.path.dirname(os.path.join(request["folder"], name)), exist_ok=True)
    with open(os.path.join(request["folder"], name), "w") as handle:
        handle.write(name)  # hidden and temporary files stay behind; a subfolder's files go up
third = push_folder(request["folder"], "user/vit-lora-smoothing", revision="from-folder")
with torch.no_grad():
    save_file({"pushed": model(pixels).logits.contiguous()}, request["output"] + ".safetensors")
certificates = [list(c) for c in model.certify(pixels, **request["certify"])]
print(json.dumps({"base_revision": model.config.base_model_revision, "first": first.oid, "second": second.oid,
                  "third": third.oid, "summary": summary, "certificates": certificates}))
"""


def test_push_to_a_local_hub_then_load_by_repo_id_in_fresh_processes(tiny_vit_dir, pixels, tmp_path):
    save_file({"pixels": pixels}, tmp_path / "pixels.safetensors")
    with FakeHub() as hub:
        env = hub_environment(hub, tmp_path / "pusher-home")
        request = {"base": tiny_vit_dir, "pixels": str(tmp_path / "pixels.safetensors"), "certify": CERTIFY,
                   "certify_dir": str(tmp_path / "certify"), "output": str(tmp_path / "pushed"),
                   "folder": str(tmp_path / "folder")}
        pushed = json.loads(run_python(PUSH, request, env).strip().splitlines()[-1])

        # What reached the Hub: a private repo, one commit per push, the adapter, processor, config and card.
        repo = hub.repos["user/vit-lora-smoothing"]
        assert repo.private and repo.messages[pushed["first"]] == "LoRA smoothing at sigma 0.25"
        assert repo.branches == {"main": pushed["first"], "certified": pushed["second"], "from-folder": pushed["third"]}
        files = hub.files("user/vit-lora-smoothing")
        assert set(files) == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                              "preprocessor_config.json", "smoothing_config.json"}
        config = json.loads(files["smoothing_config.json"])
        assert config["base_model_name_or_path"] == "user/tiny-vit" and config["certification"] is None
        assert config["base_model_revision"] == pushed["base_revision"] == hub.repos["user/tiny-vit"].branches["main"]
        certified = hub.files("user/vit-lora-smoothing", "certified")
        assert json.loads(certified["smoothing_config.json"])["certification"]["acr"] == pushed["summary"]["acr"]
        card = ModelCard(certified["README.md"].decode())
        assert card.data.base_model == "user/tiny-vit"
        results = card.data.eval_results
        assert {r.metric_config: r.metric_value for r in results if r.metric_type == "certified_accuracy"} == {
            f"radius={r}": v for r, v in pushed["summary"]["certified_accuracy"].items()}
        assert 'from_pretrained("user/vit-lora-smoothing")' in card.text
        from_folder = hub.files("user/vit-lora-smoothing", "from-folder")
        assert set(from_folder) == set(files) | {"extra/notes.txt"}
        assert from_folder["extra/notes.txt"] == b"extra/notes.txt"
        assert from_folder["adapter_model.safetensors"] == certified["adapter_model.safetensors"]
        assert 'from_pretrained("user/vit-lora-smoothing")' in from_folder["README.md"].decode()  # not the folder path
        with open(os.path.join(request["folder"], "README.md")) as handle:  # the folder's own card is left as it was
            assert "user/vit-lora-smoothing" not in handle.read()

        # A private repo needs the token; with it (passed as an argument, not from the environment), one line loads
        # the adapter, its base model from its own repo at the recorded commit, and sigma; the revision argument
        # picks the branch; a fresh cache_dir gets everything downloaded.
        reader = {**env, "HF_HOME": str(tmp_path / "reader-home")}
        del reader["HF_TOKEN"]
        cache = str(tmp_path / "reader-cache")
        models = {
            "main": ["user/vit-lora-smoothing", {"token": hub.token, "cache_dir": cache}],
            "certified": ["user/vit-lora-smoothing", {"token": hub.token, "cache_dir": cache, "revision": "certified"}],
            "local_only": ["user/vit-lora-smoothing", {"cache_dir": cache, "local_files_only": True}],
        }
        logits, results = evaluate_in_fresh_process(models, tmp_path / "pixels.safetensors", tmp_path / "reader",
                                                    reader, refused={"no_token": ["user/vit-lora-smoothing", {}]})
        refused = results.pop("no_token")
        assert refused["error"] == "OSError"
        assert "user/vit-lora-smoothing" in refused["message"] and "token" in refused["message"]
        assert hub.unhandled == []

    # With the Hub gone: HF_HUB_OFFLINE=1 and the populated cache, for the smoothing repo and for its base model
    # as a plain base model id (as before this module existed).
    offline = {**reader, "HF_HUB_OFFLINE": "1"}
    base = ["user/tiny-vit", {"cache_dir": cache, "revision": pushed["base_revision"],  # the commit cached
                              "sigma": 0.5, "image_mean": [0.5] * 3, "image_std": [0.2] * 3}]
    offline_logits, offline_results = evaluate_in_fresh_process(
        {"offline": ["user/vit-lora-smoothing", {"cache_dir": cache}], "base": base},
        tmp_path / "pixels.safetensors", tmp_path / "offline", offline,
    )
    assert offline_results.pop("base")["config"]["sigma"] == 0.5
    expected = load_file(tmp_path / "pushed.safetensors")["pushed"]
    for name, result in [*results.items(), *offline_results.items()]:
        assert torch.equal({**logits, **offline_logits}[name], expected), name
        assert result["certificates"] == pushed["certificates"], name
        assert result["config"]["sigma"] == 0.25 and result["config"]["peft_method"] == "lora"
    assert results["main"]["config"]["certification"] is None
    certified_accuracy = results["certified"]["config"]["certification"]["certified_accuracy"]
    assert certified_accuracy == pushed["summary"]["certified_accuracy"]


PUSH_COMPOSITE = UPLOAD_BASE + """
torch.manual_seed(0)
denoiser = DnCNN(num_channels=3, depth=2, width=4)
model = SmoothedImageClassifier.from_pretrained("user/tiny-vit", sigma=0.25, input_module=denoiser)
with torch.no_grad():  # a denoiser that is not the identity it starts as
    for parameter in model.input_module.parameters():
        parameter.add_(0.1 * torch.randn_like(parameter))
model.eval()
pushed = model.push_to_hub("user/vit-dncnn-smoothing", commit_message="DnCNN denoiser before the frozen base")
pixels = load_file(request["pixels"])["pixels"]
with torch.no_grad():
    save_file({"pushed": model(pixels).logits.contiguous()}, request["output"] + ".safetensors")
certificates = [list(c) for c in model.certify(pixels, **request["certify"])]
print(json.dumps({"commit": pushed.oid, "certificates": certificates}))
"""


def test_a_denoiser_composite_pushes_and_loads_by_repo_id_with_identical_certificates(tiny_vit_dir, pixels, tmp_path):
    save_file({"pixels": pixels}, tmp_path / "pixels.safetensors")
    with FakeHub() as hub:
        env = hub_environment(hub, tmp_path / "home")
        request = {"base": tiny_vit_dir, "pixels": str(tmp_path / "pixels.safetensors"), "certify": CERTIFY,
                   "output": str(tmp_path / "pushed")}
        pushed = json.loads(run_python(PUSH_COMPOSITE, request, env).strip().splitlines()[-1])
        files = hub.files("user/vit-dncnn-smoothing")
        # The denoiser's weights and record, no adapter: the base model's weights stay in its own repo (its
        # config.json is here, for pipeline(), which reads a repo's config before any loader runs).
        assert set(files) == {".gitattributes", "README.md", "config.json", "input_module.safetensors",
                              "preprocessor_config.json", "smoothing_config.json"}
        assert json.loads(files["config.json"])["model_type"] == "vit"
        config = json.loads(files["smoothing_config.json"])
        assert config["input_module"] == {"type": "dncnn", "options": {"num_channels": 3, "depth": 2, "width": 4}}
        assert config["base_model_name_or_path"] == "user/tiny-vit"
        logits, results = evaluate_in_fresh_process(
            {"composite": ["user/vit-dncnn-smoothing", {"cache_dir": str(tmp_path / "cache")}]},
            tmp_path / "pixels.safetensors", tmp_path / "reader", {**env, "HF_HOME": str(tmp_path / "reader-home")},
        )
        assert hub.unhandled == []
    assert torch.equal(logits["composite"], load_file(tmp_path / "pushed.safetensors")["pushed"])
    assert results["composite"]["certificates"] == pushed["certificates"]
    assert results["composite"]["config"]["input_module"]["type"] == "dncnn"


def test_a_pull_request_against_another_branch_is_refused_before_any_request(saved, monkeypatch):
    # upload_folder opens pull requests against the default branch only; the repo used to be created first.
    from smoothing_hf.hub import push_folder

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda *args, **kwargs: pytest.fail("a request was sent"))
    root, _ = saved
    with pytest.raises(ValueError, match="`revision` must be None with it, got 'dev'"):
        push_folder(root / "lora", "user/vit-lora-smoothing", revision="dev", create_pr=True)
