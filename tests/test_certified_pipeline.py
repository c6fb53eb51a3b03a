"""The "certified-image-classification" pipeline task: registered on `import smoothing_hf` (which stays free of
transformers), loaded from a folder or a Hub id, and answering exactly what model.certify / model.predict answer
with the same seed, for every kind of input."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hub_server import FakeHub
from PIL import Image
from test_hub import UPLOAD_BASE, hub_environment, run_python
from transformers import pipeline

import smoothing_hf
from smoothing_hf import ABSTAIN, SmoothedImageClassifier, derive_seed
from smoothing_hf.certified_pipeline import TASK, CertifiedImageClassificationPipeline
from smoothing_hf.input_modules import DnCNN
from smoothing_hf.methods import METHODS

CALL = dict(n0=16, n=200, alpha=0.01, batch_size=256, seed=3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_vit_dir, tiny_vit_gray_dir) -> dict[str, str]:
    """Saved smoothing models, LoRA on the tiny 3-channel and 1-channel ViTs, as save_pretrained writes them."""
    root = tmp_path_factory.mktemp("certified-pipeline")
    saved = {}
    for name, base in [("rgb", tiny_vit_dir), ("gray", tiny_vit_gray_dir)]:
        model = SmoothedImageClassifier.from_pretrained(base, sigma=0.25, method="lora")
        saved[name] = str(root / name)
        model.save_pretrained(saved[name])
    return saved


@pytest.fixture(scope="module")
def rgb(folders) -> CertifiedImageClassificationPipeline:
    return pipeline(TASK, model=folders["rgb"], device="cpu")


@pytest.fixture(scope="module")
def gray(folders) -> CertifiedImageClassificationPipeline:
    return pipeline(TASK, model=folders["gray"], device="cpu")


def pictures(count: int, mode: str = "RGB") -> list[Image.Image]:
    """``count`` random 28 x 28 PIL images, smooth enough that the tiny model's votes vary."""
    generator = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    arrays = (generator.random((count, 28, 28, channels)) * 255).astype(np.uint8)
    return [Image.fromarray(a if channels == 3 else a[:, :, 0], mode) for a in arrays]


def answer_of(certificate, n: int, id2label: dict) -> dict:
    abstain = certificate.prediction == ABSTAIN
    return {"label": None if abstain else id2label[certificate.prediction], "score": certificate.count / n,
            "certified_radius": certificate.radius, "abstain": abstain}


def test_importing_smoothing_hf_loads_no_transformers_and_registers_the_task_either_way():
    script = textwrap.dedent("""
        import sys
        {first}
        print(sorted({{'torch', 'transformers'}} & set(sys.modules)))
        {second}
        from transformers.pipelines import PIPELINE_REGISTRY
        print(PIPELINE_REGISTRY.check_task("certified-image-classification")[1]["impl"].__name__)
    """)
    orders = {"smoothing_hf first": ("import smoothing_hf", "import transformers.pipelines"),
              "transformers first": ("import transformers.pipelines", "import smoothing_hf"),
              # the task module's own import loads transformers.pipelines (once broke: a circular import)
              "task module first": ("import smoothing_hf.certified_pipeline", "import transformers.pipelines")}
    for order, (first, second) in orders.items():
        done = subprocess.run([sys.executable, "-c", script.format(first=first, second=second)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        light, registered = done.stdout.split("\n")[:2]
        assert registered == "CertifiedImageClassificationPipeline", order
        assert light == ("[]" if order == "smoothing_hf first" else "['torch', 'transformers']"), order


def test_one_image_and_a_list_give_model_certify_answers_with_the_same_seed(rgb, one_thread):
    images = pictures(3)
    model = rgb.model
    pixels = model.image_transform()(images)
    id2label = model.model.config.id2label
    certify = {k: CALL[k] for k in ("n0", "n", "alpha", "batch_size", "seed")}

    # One image gets the seed itself, as model.certify on one [C, H, W] image.
    assert rgb(images[0], **CALL) == answer_of(model.certify(pixels[0], **certify), CALL["n"], id2label)
    # A list: image i gets derive_seed(seed, i), as model.certify on the stacked [B, C, H, W] batch.
    expected = [answer_of(c, CALL["n"], id2label) for c in model.certify(pixels, **certify)]
    assert rgb(images, **CALL) == expected
    alone = [answer_of(model.certify(pixels[i], **{**certify, "seed": derive_seed(CALL["seed"], i)}), CALL["n"],
                       id2label) for i in range(3)]
    assert alone == expected
    # A list of seeds gives one per image; the answers are not all the same (the test can tell images apart).
    assert rgb(images, **{**CALL, "seed": [derive_seed(CALL["seed"], i) for i in range(3)]}) == expected
    assert len({(a["label"], a["score"]) for a in expected}) > 1 or len({a["score"] for a in alone}) > 1


def test_paths_numpy_arrays_tensors_and_pil_images_give_the_same_answers(rgb, gray, tmp_path, one_thread):
    image = pictures(1)[0]
    path = str(tmp_path / "digit.png")
    image.save(path)
    array = np.asarray(image)
    expected = rgb(image, **CALL)
    pixels = rgb.model.image_transform()(image)
    kinds = [path, array, array.astype(np.float32) / 255, pixels]
    for given in kinds:
        assert rgb(given, **CALL) == expected, type(given).__name__
    assert rgb(kinds, **CALL) == rgb([image] * 4, **CALL)  # kinds mixed in one list, seeds by position
    # A 1-channel model gets RGB images converted to grayscale, as PIL's "L".
    gray_image = pictures(1, "L")[0]
    gray_pixels = gray.model.image_transform()(gray_image)
    certified = gray.model.certify(gray_pixels, **{k: CALL[k] for k in ("n0", "n", "alpha", "batch_size", "seed")})
    assert gray(gray_image.convert("RGB"), **CALL) == answer_of(certified, CALL["n"], gray.model.model.config.id2label)
    assert gray(np.asarray(gray_image), **CALL) == gray(gray_image, **CALL)


def test_the_images_of_one_call_share_forward_batches(rgb, one_thread):
    batches = []
    model = rgb.smoother.base_classifier
    handle = model.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
    try:
        rgb(pictures(4), n0=16, n=48, alpha=0.01, batch_size=1000)
    finally:
        handle.remove()
    assert batches == [4 * 16, 4 * 48]  # one selection batch, one estimation batch for all four images


def test_abstentions_come_back_as_such_and_predict_mode_matches_model_predict(rgb, one_thread):
    image = pictures(1)[0]
    with pytest.warns(UserWarning, match="n=8 is too small for alpha=0.001"):
        abstained = rgb(image, n0=8, n=8, alpha=0.001, batch_size=64)
    with pytest.warns(UserWarning, match="n=8 is too small for alpha=0.001"):
        certificate = rgb.model.certify(rgb.model.image_transform()(image), n0=8, n=8, alpha=0.001, batch_size=64)
    assert certificate.prediction == ABSTAIN
    assert abstained == {"label": None, "score": certificate.count / 8, "certified_radius": 0.0, "abstain": True}

    pixels = rgb.model.image_transform()(pictures(3))
    predicted = rgb(pictures(3), mode="predict", n=200, alpha=0.01, batch_size=256, seed=5)
    classes = rgb.model.predict(pixels, n=200, alpha=0.01, batch_size=256, seed=5)
    id2label = rgb.model.model.config.id2label
    assert [a["label"] for a in predicted] == [None if c == ABSTAIN else id2label[c] for c in classes]
    assert [a["abstain"] for a in predicted] == [c == ABSTAIN for c in classes]
    assert all(a["certified_radius"] is None and 0 < a["score"] <= 1 for a in predicted)


def test_top_k_lists_the_answer_then_the_classes_with_most_votes(rgb, one_thread):
    image = pictures(1)[0]
    answer = rgb(image, **CALL)
    ranked = rgb(image, **CALL, top_k=4)
    assert len(ranked) == 4 and ranked[0] == answer
    scores = [entry["score"] for entry in ranked[1:]]
    assert scores == sorted(scores, reverse=True) and answer["label"] not in [e["label"] for e in ranked[1:]]
    everything = rgb(image, **CALL, top_k=1000)  # clipped to the number of classes, as image-classification does
    assert len(everything) == 10 and sum(entry["score"] for entry in everything) == pytest.approx(1.0)


def test_the_noisy_samples_are_the_draws_that_certification_counts(rgb, one_thread):
    image = pictures(1)[0]
    noisy = rgb.noisy_samples(image, count=200, n=200, seed=3)  # two noise chunks of 128 and 72
    assert noisy.shape == (200, 3, 28, 28)
    with torch.no_grad():
        votes = np.bincount(rgb.smoother.base_classifier(noisy).logits.argmax(1).numpy(), minlength=10)
    ranked = rgb(image, n0=16, n=200, alpha=0.01, batch_size=256, seed=3, top_k=10)
    by_label = {entry["label"]: round(entry["score"] * 200) for entry in ranked}
    assert [by_label[rgb.id2label[c]] for c in range(10)] == votes.tolist()
    assert torch.equal(rgb.noisy_samples(image, count=5, n=200, seed=3), noisy[:5])


def test_arguments_given_to_pipeline_are_the_defaults_of_each_call(folders, rgb, one_thread):
    configured = pipeline(TASK, model=folders["rgb"], device="cpu", **CALL)
    image = pictures(1)[0]
    assert configured(image) == rgb(image, **CALL)
    assert configured(image, seed=4) == rgb(image, **{**CALL, "seed": 4})


@pytest.mark.parametrize("arguments, error, message", [
    ({"n": 0}, ValueError, r"`n` must be a positive int \(>= 1\)"),
    ({"n0": 2.5}, TypeError, r"`n0` must be a positive int \(>= 1\)"),
    ({"alpha": 1.5}, ValueError, r"`alpha` must be in \(0, 1\)"),
    ({"batch_size": -1}, ValueError, r"`batch_size` must be a positive int \(>= 1\)"),
    ({"seed": -1}, ValueError, r"`seed` must be a non-negative int \(>= 0\)"),
    ({"seed": "0"}, TypeError, "`seed` must be an int >= 0 or a list of them"),
    ({"seed": [1, 2]}, ValueError, r"`seed` must be an int or one int per image \(1\), got 2 seeds"),
    ({"mode": "fast"}, ValueError, r"`mode` must be one of \['certify', 'predict'\], got 'fast'"),
    ({"top_k": 0}, ValueError, r"`top_k` must be a positive int \(>= 1\)"),
    ({"timeout": 0}, ValueError, "`timeout` must be a positive finite number"),
    ({"sigma": 0.5}, TypeError, r"unknown argument\(s\) \['sigma'\].*takes n0, n, alpha, batch_size, seed, mode"),
])
def test_bad_arguments_are_refused_naming_them(rgb, arguments, error, message):
    with pytest.raises(error, match=message):
        rgb(pictures(1)[0], **arguments)


@pytest.mark.parametrize("inputs, error, message", [
    (None, ValueError, "`inputs` must be given: a PIL image, a path"),
    (7, TypeError, "`inputs` must be a PIL image, a path, an http.s. URL.*got int"),
    ([], ValueError, "`inputs` must hold at least one image, got an empty list"),
    (np.zeros((28, 28), dtype=np.float32), ValueError, r"a float array must be \[H, W\] \(1 channel\) or \[H, W, C\]"),
    (np.zeros((28, 28, 3), dtype=np.int64), TypeError, "an integer array must be uint8"),
    (np.full((28, 28, 3), 2.0), ValueError, r"float images must hold pixels in \[0, 1\]"),
    (torch.zeros(1, 28, 28), ValueError, r"a tensor must be float \[C, H, W\] pixels with C = 3"),
    (torch.zeros(3, 28, 28, dtype=torch.uint8), ValueError, r"a tensor must be float \[C, H, W\] pixels with C = 3"),
    (torch.full((3, 28, 28), 1.5), ValueError, r"`x` must hold un-normalized pixels in \[0, 1\]"),
    ("no/such/image.png", ValueError, "Incorrect image source"),
])
def test_bad_inputs_are_refused_naming_them(rgb, inputs, error, message):
    with pytest.raises(error, match=message):
        rgb(inputs, **CALL)


def test_a_model_that_is_not_smoothed_or_another_processor_is_refused(folders, tiny_vit_dir):
    with pytest.raises(TypeError, match="`model` must be a SmoothedImageClassifier .* smoothing_config.json"):
        pipeline(TASK, model=tiny_vit_dir, device="cpu")  # a plain base: transformers falls back to ViT
    model = SmoothedImageClassifier.from_pretrained(folders["rgb"])
    with pytest.raises(ValueError, match="`image_processor` must not be given"):
        CertifiedImageClassificationPipeline(model=model, image_processor=model.image_processor, device="cpu")
    made = CertifiedImageClassificationPipeline(model=model, device="cpu")
    assert made.model is model and repr(made) == "CertifiedImageClassificationPipeline(sigma=0.25, device=cpu)"
    assert smoothing_hf.CertifiedImageClassificationPipeline is CertifiedImageClassificationPipeline


@pytest.mark.parametrize("method", [*METHODS, "dncnn"])
def test_a_folder_of_every_method_loads_by_name(method, tiny_vit_dir, tmp_path, one_thread):
    """pipeline() reads a folder's config.json before its loader runs: every kind of smoothing folder has one
    (peft's files name their base instead), so each loads by name and answers as model.certify."""
    options = {"input_module": DnCNN(3, depth=2, width=4)} if method == "dncnn" else {"method": method}
    torch.manual_seed(0)
    SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, **options).save_pretrained(tmp_path / method)
    classifier = pipeline(TASK, model=str(tmp_path / method), device="cpu")
    pixels = classifier.model.image_transform()(pictures(2))
    certify = {k: CALL[k] for k in ("n0", "n", "alpha", "batch_size", "seed")}
    id2label = classifier.model.model.config.id2label
    assert classifier(list(pixels), **CALL) == [answer_of(c, CALL["n"], id2label)
                                                for c in classifier.model.certify(pixels, **certify)]


PIPELINE_BY_REPO_ID = UPLOAD_BASE + """
from transformers import pipeline
method = request["method"]
SmoothedImageClassifier.from_pretrained("user/tiny-vit", sigma=0.25, method=method).push_to_hub("user/vit-smoothed")
pipe = pipeline("certified-image-classification", model="user/vit-smoothed", device="cpu")
pixels = load_file(request["pixels"])["pixels"]
print(json.dumps({"pipeline": pipe(list(pixels), **request["call"]),
                  "certify": [list(c) for c in pipe.model.certify(pixels, **request["certify"])]}))
"""


@pytest.mark.parametrize("method", ["lora", "adapter"])  # peft's files, and ours with the base's config.json
def test_a_hub_id_takes_the_folder_code_path(method, tiny_vit_dir, tmp_path):
    from safetensors.torch import save_file

    pixels = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    save_file({"pixels": pixels}, tmp_path / "pixels.safetensors")
    certify = {k: CALL[k] for k in ("n0", "n", "alpha", "batch_size", "seed")}
    with FakeHub() as hub:
        request = {"base": tiny_vit_dir, "pixels": str(tmp_path / "pixels.safetensors"), "call": CALL,
                   "certify": certify, "method": method}
        result = json.loads(run_python(PIPELINE_BY_REPO_ID, request, hub_environment(hub, tmp_path)).splitlines()[-1])
        assert hub.unhandled == []
    labels = [f"LABEL_{c[0]}" if c[0] != ABSTAIN else None for c in result["certify"]]
    assert [a["label"] for a in result["pipeline"]] == labels
    assert [a["certified_radius"] for a in result["pipeline"]] == [c[1] for c in result["certify"]]


def test_the_model_card_shows_the_pipeline_line(folders, tmp_path):
    SmoothedImageClassifier.from_pretrained(folders["gray"]).save_pretrained(tmp_path / "card", model_id="user/x")
    card = (tmp_path / "card" / "README.md").read_text()
    assert 'pipeline("certified-image-classification", model="user/x")' in card
    assert "classifier(image, n0=100, n=100000, alpha=0.001)" in card
