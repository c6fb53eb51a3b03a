"""Loading refuses bad folders, weights and arguments with an error that names the file or argument, before any
weights are read and without writing anything: a config whose `id2label` the weights do not cover, pickled
weights (with the one-line conversion), missing folders, truncated base weights, bad `id2label` and
`method_options`."""

import hashlib
import json
import os
import re
import shlex
import shutil

import pytest
import torch
from hub_server import FakeHub
from peft import LoraConfig
from safetensors.torch import load_file
from test_hub import hub_environment, run_python

from smoothing_hf import DnCNN, SmoothedImageClassifier, SmoothingConfig

PIXELS = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))


def snapshot(folder) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> the digest of its bytes: equal snapshots, nothing written."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return files


def refused(error, message, *folders, **kwargs):
    """``SmoothedImageClassifier.from_pretrained(**kwargs)`` raises ``error`` matching ``message`` and leaves
    ``folders`` as they were."""
    before = [snapshot(folder) for folder in folders]
    with pytest.raises(error, match=message) as raised:
        SmoothedImageClassifier.from_pretrained(**kwargs)
    assert [snapshot(folder) for folder in folders] == before
    return raised.value


def copy_base(tiny_vit_dir, tmp_path, name="base") -> str:
    folder = tmp_path / name
    shutil.copytree(tiny_vit_dir, folder)
    return str(folder)


def saved(base, folder, **kwargs) -> str:
    model = SmoothedImageClassifier.from_pretrained(base, sigma=0.25, **kwargs)
    model.save_pretrained(folder)
    return str(folder)


def edit_id2label(folder, num_classes: int) -> str:
    path = os.path.join(folder, "smoothing_config.json")
    values = json.loads(open(path).read())
    values["id2label"] = {str(i): f"class {i}" for i in range(num_classes)}
    open(path, "w").write(json.dumps(values))
    return path


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PIXELS).logits


# ------------------------------------------------------------------------------- id2label against the weights

@pytest.mark.parametrize("method, weights", [("lora", "adapter_model.safetensors"),
                                             ("adapter", "smoothing_weights.safetensors"),
                                             ("linear", "smoothing_weights.safetensors")])
def test_an_id2label_with_another_class_than_the_saved_head_is_an_error(tiny_vit_dir, tmp_path, method, weights):
    folder = saved(tiny_vit_dir, tmp_path / method, method=method)
    config_file = edit_id2label(folder, 11)
    weights = re.escape(os.path.join(folder, weights))
    message = rf"{re.escape(config_file)} lists 11 classes \(`id2label`\), but {weights} holds a head of 10 classes"
    refused(ValueError, message, folder, tiny_vit_dir, pretrained_model_name_or_path=folder)


def test_a_new_head_the_adapter_does_not_hold_is_an_error(tiny_vit_dir, tmp_path):
    # Saved without its head (train_head=False), then given an 11th class: the head would be random at each load.
    folder = saved(tiny_vit_dir, tmp_path / "lora", method="lora", method_options={"train_head": False})
    config_file = edit_id2label(folder, 11)
    base_weights = os.path.join(tiny_vit_dir, "model.safetensors")
    adapter = os.path.join(folder, "adapter_model.safetensors")
    message = (rf"{re.escape(config_file)} lists 11 classes .* the base model's head in {re.escape(base_weights)} has "
               rf"10 classes .* {re.escape(adapter)} holds no classifier.bias")
    refused(ValueError, message, folder, tiny_vit_dir, pretrained_model_name_or_path=folder)


def test_an_input_module_folder_with_another_id2label_is_an_error(tiny_vit_dir, tmp_path):
    folder = saved(tiny_vit_dir, tmp_path / "dncnn", input_module=DnCNN(num_channels=3, depth=2, width=4))
    edit_id2label(folder, 4)
    message = r"lists 4 classes .* has 10 classes .* the folder holds no weights of the model to replace it"
    refused(ValueError, message, folder, pretrained_model_name_or_path=folder)


def test_a_whole_model_with_another_id2label_is_an_error(tiny_vit_dir, tmp_path):
    folder = saved(tiny_vit_dir, tmp_path / "full", method="full")
    edit_id2label(folder, 3)
    weights = re.escape(os.path.join(folder, "model.safetensors"))
    message = rf"lists 3 classes \(`id2label`\), but {weights} holds a model of 10"
    refused(ValueError, message, folder, pretrained_model_name_or_path=folder)


@pytest.mark.parametrize("method", ["lora", "linear"])
def test_a_new_head_saved_with_its_adapter_loads_the_same_every_time(tiny_vit_dir, tmp_path, method):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method=method, new_labels=["a", "b", "c"])
    model.save_pretrained(tmp_path / method)
    first, second = (SmoothedImageClassifier.from_pretrained(tmp_path / method) for _ in range(2))
    assert first.num_labels == 3 and first.model.config.id2label == {0: "a", 1: "b", 2: "c"}
    torch.testing.assert_close(logits(first), logits(model), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(second), logits(first), rtol=0, atol=0)
    # Edited back to the base's 10 classes, the config no longer fits the 3-class head it holds.
    edit_id2label(tmp_path / method, 10)
    refused(ValueError, r"lists 10 classes .* holds a head of 3 classes", tmp_path / method,
            pretrained_model_name_or_path=tmp_path / method)


@pytest.mark.parametrize("kwargs", [{"method": "lora", "method_options": {"train_head": False}},
                                    {"method": "vpt", "method_options": {"train_head": False}},
                                    {"input_module": "dncnn"}, {}])
def test_a_new_head_that_would_not_be_trained_is_refused(tiny_vit_dir, tmp_path, kwargs):
    if kwargs.get("input_module"):
        kwargs = {"input_module": DnCNN(num_channels=3, depth=2, width=4)}
    refused(ValueError, r"`new_labels` gives the model a new, randomly initialized head, which must be trained",
            tiny_vit_dir, pretrained_model_name_or_path=tiny_vit_dir, sigma=0.25, new_labels=["a", "b"], **kwargs)


# ----------------------------------------------------------------------------------------------- pickled weights

def pickled_only(folder, bogus: bool) -> None:
    """Replace the folder's model.safetensors by pytorch_model.bin: not even a pickle when ``bogus``."""
    state = load_file(os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "model.safetensors"))
    if bogus:  # anything that opened it would fail on it, so a clean refusal shows that nothing did
        open(os.path.join(folder, "pytorch_model.bin"), "wb").write(b"not even a pickle")
    else:
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))


def run_conversion(message: str) -> None:
    """Run the one-line conversion the error gives (its ``python -c "..."`` code, in this process)."""
    command = shlex.split(message.rsplit(": ", 1)[1])
    assert command[:2] == ["python", "-c"], command
    exec(command[2], {})


def test_a_base_with_pickled_weights_only_is_refused_with_the_conversion(tiny_vit_dir, tmp_path):
    base = copy_base(tiny_vit_dir, tmp_path)
    pickled_only(base, bogus=True)
    message = (r"has no model.safetensors, only the pickled pytorch_model.bin: weights are loaded from safetensors only"
               r" .* python -c .*use_safetensors=False")
    for kwargs in ({"sigma": 0.25}, {"sigma": 0.25, "method": "lora"}):
        refused(ValueError, message, base, pretrained_model_name_or_path=base, **kwargs)
    refused(ValueError, r"`use_safetensors` must be True", base, pretrained_model_name_or_path=base, sigma=0.25,
            use_safetensors=False)

    pickled_only(copy_base(tiny_vit_dir, tmp_path, "real"), bogus=False)
    error = refused(ValueError, message, pretrained_model_name_or_path=tmp_path / "real", sigma=0.25)
    run_conversion(str(error))  # the conversion it gives writes model.safetensors, which then loads
    assert "model.safetensors" in os.listdir(tmp_path / "real")
    reference = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    converted = SmoothedImageClassifier.from_pretrained(tmp_path / "real", sigma=0.25)
    torch.testing.assert_close(logits(converted), logits(reference), rtol=0, atol=0)


def test_a_smoothing_folder_whose_base_has_pickled_weights_only_is_refused(tiny_vit_dir, tmp_path):
    base = copy_base(tiny_vit_dir, tmp_path)
    folder = saved(base, tmp_path / "lora", method="lora")
    pickled_only(base, bogus=True)
    message = rf"'{re.escape(base)}' has no model.safetensors, only the pickled pytorch_model.bin"
    refused(ValueError, message, base, folder, pretrained_model_name_or_path=folder)


def test_a_whole_model_folder_with_pickled_weights_only_is_refused(tiny_vit_dir, tmp_path):
    folder = saved(tiny_vit_dir, tmp_path / "full", method="full")
    pickled_only(folder, bogus=True)
    refused(ValueError, r"has no model.safetensors, only the pickled pytorch_model.bin", folder,
            pretrained_model_name_or_path=folder)


def test_a_pickled_adapter_is_refused_with_the_conversion(tiny_vit_dir, tmp_path):
    folder = saved(tiny_vit_dir, tmp_path / "lora", method="lora")
    reference = logits(SmoothedImageClassifier.from_pretrained(folder))
    adapter = os.path.join(folder, "adapter_model.safetensors")
    torch.save(load_file(adapter), os.path.join(folder, "adapter_model.bin"))
    os.remove(adapter)
    message = (r"has no adapter_model.safetensors, only the pickled adapter_model.bin: weights are loaded from "
               r"safetensors only .* python -c .*save_file\(torch.load")
    error = refused(ValueError, message, folder, pretrained_model_name_or_path=folder)
    run_conversion(str(error))
    torch.testing.assert_close(logits(SmoothedImageClassifier.from_pretrained(folder)), reference, rtol=0, atol=0)


UPLOAD_PICKLED = """
import json, os, sys
from huggingface_hub import CommitOperationAdd, HfApi
from smoothing_hf import SmoothedImageClassifier

request = json.loads(sys.argv[1])
HfApi().create_repo("user/pickled-vit")
operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(request["base"], name))
              for name in sorted(os.listdir(request["base"]))]
HfApi().create_commit("user/pickled-vit", operations, commit_message="A pickled base model")
try:
    SmoothedImageClassifier.from_pretrained("user/pickled-vit", sigma=0.25)
except ValueError as error:
    print(json.dumps({"error": str(error)}))
"""


def test_a_hub_repo_with_pickled_weights_only_is_refused_like_a_folder(tiny_vit_dir, tmp_path):
    base = copy_base(tiny_vit_dir, tmp_path)
    pickled_only(base, bogus=True)
    with FakeHub() as hub:
        output = run_python(UPLOAD_PICKLED, {"base": base}, hub_environment(hub, tmp_path / "home"))
    error = json.loads(output.strip().splitlines()[-1])["error"]
    assert error.startswith("'user/pickled-vit' has no model.safetensors, only the pickled pytorch_model.bin")
    assert "from_pretrained('user/pickled-vit', use_safetensors=False).save_pretrained('user--pickled-vit')" in error


# ---------------------------------------------------------------------------------- missing and truncated files

def test_a_missing_folder_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("./no-such-folder", str(tmp_path / "x" / "y")):
        refused(OSError, rf"'{re.escape(path)}' is neither a folder .* nor a valid Hub repo id", tmp_path,
                pretrained_model_name_or_path=path, sigma=0.25)
    assert os.listdir(tmp_path) == []
    (tmp_path / "weights.safetensors").write_bytes(b"")
    refused(OSError, r"'weights.safetensors' is a file, not a model folder", tmp_path,
            pretrained_model_name_or_path="weights.safetensors", sigma=0.25)
    # A Hub id that is not cached offline keeps transformers' own error.
    with pytest.raises(OSError) as raised:
        SmoothedImageClassifier.from_pretrained("someone/not-cached-anywhere", sigma=0.25)
    assert "neither a folder" not in str(raised.value)


def test_a_smoothing_folder_whose_base_folder_is_gone_names_it(tiny_vit_dir, tmp_path):
    base = copy_base(tiny_vit_dir, tmp_path)
    folder = saved(base, tmp_path / "lora", method="lora")
    shutil.rmtree(base)
    message = rf"the base model that smoothing_config.json names '{re.escape(base)}' is neither a folder"
    refused(OSError, message, folder, pretrained_model_name_or_path=folder)


def test_truncated_base_weights_are_an_error_naming_the_file(tiny_vit_dir, tmp_path):
    base = copy_base(tiny_vit_dir, tmp_path)
    folder = saved(base, tmp_path / "lora", method="lora")
    weights = os.path.join(base, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    message = rf"{re.escape(weights)} is not a readable safetensors file .* corrupt or truncated"
    refused(ValueError, message, base, pretrained_model_name_or_path=base, sigma=0.25)
    refused(ValueError, message, base, folder, pretrained_model_name_or_path=folder)


# ------------------------------------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize(
    "id2label, error",
    [(["cat", "dog"], TypeError), ({"a": "cat"}, ValueError), ({0: "cat", "0": "dog"}, ValueError),
     ({1: "cat"}, ValueError), ({0: 1}, ValueError), ({True: "cat"}, ValueError), ({}, ValueError)],
)
def test_a_bad_id2label_is_an_error_saying_what_is_allowed(id2label, error):
    allowed = r"`id2label` must be a dict from class index \(int or digit string\) to class name \(str\), with indices"
    with pytest.raises(error, match=allowed):
        SmoothingConfig(sigma=0.25, image_mean=[0.5], image_std=[0.5], id2label=id2label)


def test_id2label_keys_are_kept_as_index_strings_in_order():
    config = SmoothingConfig(sigma=0.25, image_mean=[0.5], image_std=[0.5], id2label={1: "dog", "0": "cat"})
    assert list(config.id2label.items()) == [("0", "cat"), ("1", "dog")]


def test_method_options_without_a_method_or_of_another_type_are_errors(tiny_vit_dir, tmp_path):
    refused(ValueError, r"`method_options` needs `method`", tiny_vit_dir, pretrained_model_name_or_path=tiny_vit_dir,
            sigma=0.25, method_options={"r": 4})
    lora = {"peft_config": LoraConfig(target_modules=["query"])}
    refused(ValueError, r"`method_options` needs `method`", tiny_vit_dir, pretrained_model_name_or_path=tiny_vit_dir,
            sigma=0.25, method_options={"r": 4}, **lora)
    refused(TypeError, r"`method_options` must be a dict", tiny_vit_dir, pretrained_model_name_or_path=tiny_vit_dir,
            sigma=0.25, method="lora", method_options=[1, 2])
    plain = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method_options={})
    assert plain.config.peft_method is None


def test_arguments_a_saved_smoothing_folder_brings_itself_are_refused(tiny_vit_dir, tmp_path):
    folder = saved(tiny_vit_dir, tmp_path / "lora", method="lora")
    for kwargs, named in [({"method_options": {"r": 4}}, "`method_options`"), ({"new_labels": ["a"]}, "`new_labels`"),
                          ({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}, "`image_mean`, `image_std`")]:
        refused(ValueError, rf"is a saved smoothing model; .* so {named} must not be given", folder,
                pretrained_model_name_or_path=folder, **kwargs)



def test_a_black_box_target_and_an_encoder_with_pickled_weights_only_are_refused(tiny_vit_dir, tmp_path):
    from smoothing_hf.blackbox import BlackBoxClassifier
    from smoothing_hf.input_modules import Coordinator

    base = copy_base(tiny_vit_dir, tmp_path)
    pickled_only(base, bogus=True)  # a refusal, not an unpickling error, shows nothing opened it
    with pytest.raises(ValueError, match="only the pickled pytorch_model.bin"):
        BlackBoxClassifier.from_pretrained(base)
    with pytest.raises(OSError, match="model.safetensors"):
        Coordinator.from_encoder(base, num_channels=3)
