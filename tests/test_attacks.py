"""SmoothAdv (smoothing_hf.analysis.attacks) and Grad-CAM (smoothing_hf.analysis.attribution): behaviour on tiny
models."""

import json
import os

import pytest
import torch
from conftest import tiny_resnet, tiny_vit
from test_examples import run_example

from smoothing_hf import SmoothedImageClassifier, Smoother, SmoothingConfig
from smoothing_hf.analysis.attacks import attack_dataset, smooth_adv
from smoothing_hf.analysis.attribution import grad_cam, gradcam_grid
from smoothing_hf.analysis.robustness import summarize_attack
from smoothing_hf.input_modules import DnCNN


def smoothed(model, sigma=0.25):
    return SmoothedImageClassifier(model, SmoothingConfig(sigma=sigma, image_mean=[0.5], image_std=[0.5]))


@pytest.fixture(scope="module")
def vit():
    return smoothed(tiny_vit(num_channels=1))


def two_class_task(count, seed):
    """1 x 8 x 8 images 0.5 +- 0.04 * pattern (left half +1, right half -1) plus N(0, 0.02^2) pixel noise:
    the class means lie 0.64 apart in l2: an attack of radius 0.5 carries an image well past the midway boundary."""
    generator = torch.Generator().manual_seed(seed)
    pattern = torch.cat([torch.ones(1, 8, 4), -torch.ones(1, 8, 4)], dim=2)
    labels = torch.arange(count) % 2
    noise = 0.02 * torch.randn(count, 1, 8, 8, generator=generator)
    images = 0.5 + 0.04 * (2 * labels - 1).view(-1, 1, 1, 1) * pattern + noise
    return images.clamp(0, 1), labels


@pytest.fixture(scope="module")
def undefended():
    """A small MLP trained on clean images of the two-class task (no noise, no attack)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    images, labels = two_class_task(64, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model((images - 0.5) * 10), labels).backward()
        optimizer.step()
    return torch.nn.Sequential(ScaleShift(), model).eval()


class ScaleShift(torch.nn.Module):
    def forward(self, pixels):
        return (pixels - 0.5) * 10


# ---------------------------------------------------------------------------------------------- the attack


def test_attack_moves_a_linear_boundary_point_by_epsilon_toward_its_boundary(linear_boundary):
    # For f(x) = [w . x > b] the smoothed loss only depends on w . x: the optimal l2 attack moves x by
    # epsilon along -w (toward the boundary), so the signed distance d becomes d - epsilon * sign(d).
    images = torch.stack([linear_boundary.image_at(0.6), linear_boundary.image_at(-0.4)])
    attacked = smooth_adv(linear_boundary, images, [1, 0], 0.25, sigma=0.25, steps=10, num_noise=4)
    margins = attacked.flatten(1) @ linear_boundary.w - linear_boundary.b
    assert torch.allclose(margins, torch.tensor([0.35, -0.15]), atol=1e-4)
    assert torch.allclose((attacked - images).flatten(1).norm(dim=1), torch.tensor([0.25, 0.25]), atol=1e-4)


def test_attack_at_half_a_pixel_unit_defeats_an_undefended_model(undefended):
    images, labels = two_class_task(40, seed=1)  # held out
    smoother = Smoother(undefended, num_classes=2, sigma=0.1)
    clean = torch.tensor(smoother.predict(images, n=200, alpha=0.01, batch_size=400, seed=1))
    attacked_images = smooth_adv(undefended, images, labels, 0.5, sigma=0.1, steps=10, num_noise=4, seed=1)
    attacked = torch.tensor(smoother.predict(attacked_images, n=200, alpha=0.01, batch_size=400, seed=1))
    clean_accuracy = (clean == labels).float().mean().item()
    attacked_accuracy = (attacked == labels).float().mean().item()
    assert clean_accuracy >= 0.95 and attacked_accuracy <= 0.2


def test_attacked_images_stay_in_the_ball_and_in_the_pixel_box(vit):
    images = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()  # every pixel 0 or 1
    for epsilon in (0.5, 3.0):
        attacked = smooth_adv(vit, images, [1, 2, 3], epsilon, steps=3, num_noise=2, step_size=2.0)
        assert (attacked - images).flatten(1).norm(dim=1).max() <= epsilon + 1e-6
        assert attacked.min() >= 0 and attacked.max() <= 1
        assert (attacked != images).any()


def test_attack_is_reproducible_and_independent_of_the_batch_size(vit):
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    first = smooth_adv(vit, images, [1, 2, 3], 0.5, steps=2, num_noise=2, seed=5)
    again = smooth_adv(vit, images, [1, 2, 3], 0.5, steps=2, num_noise=2, seed=5, batch_size=2)
    other = smooth_adv(vit, images, [1, 2, 3], 0.5, steps=2, num_noise=2, seed=6)
    assert torch.allclose(first, again, atol=1e-6)
    assert not torch.allclose(first, other)
    assert torch.equal(smooth_adv(vit, images, [1, 2, 3], 0.0), images)


class NoGradients(torch.nn.Module):
    """A model whose forward runs under torch.no_grad: no gradient reaches its input (a black-box target)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        with torch.no_grad():
            return self.model(pixels)


class DetachedInput(torch.nn.Module):
    """A model with trainable weights that reads its input as data (as a remote service would): its output has
    gradients, but none with respect to the pixels."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 2)

    def forward(self, pixels):
        return self.linear(pixels.detach().flatten(1))


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"epsilon": -0.5}, ValueError, r"`epsilon` must be a finite number >= 0 \(l2 radius"),
        ({"epsilon": float("nan")}, ValueError, r"`epsilon` must be a finite number >= 0"),
        ({"num_noise": 0}, ValueError, r"`num_noise` must be a positive int"),
        ({"num_noise": 2.0}, TypeError, r"`num_noise` must be a positive int"),
        ({"steps": 0}, ValueError, r"`steps` must be a positive int"),
        ({"step_size": 0.0}, ValueError, r"`step_size` must be a positive finite number"),
        ({"sigma": 0.0}, ValueError, r"`sigma` must be a positive"),
        ({"labels": [1]}, ValueError, r"`labels` must hold one class per image"),
        ({"labels": [1, 2]}, ValueError, r"`labels` must be classes of the model, in \[0, 2\)"),
        ({"images": torch.full((2, 1, 4, 4), 2.0)}, ValueError, r"pixels in \[0, 1\]"),
        ({"seed": -1}, ValueError, "`seed` must be a non-negative int"),
    ],
)
def test_bad_attack_arguments(linear_boundary, changes, error, message):
    arguments = {"images": torch.full((2, 1, 4, 4), 0.6), "labels": [1, 1], "epsilon": 0.5, "sigma": 0.25, **changes}
    with pytest.raises(error, match=message):
        images, labels, epsilon = arguments.pop("images"), arguments.pop("labels"), arguments.pop("epsilon")
        smooth_adv(linear_boundary, images, labels, epsilon, **arguments)


def test_a_model_without_gradients_is_refused(linear_boundary):
    images = torch.full((1, 1, 4, 4), 0.6)
    with pytest.raises(TypeError, match="white-box attack"):  # a black-box callable
        smooth_adv(lambda pixels: linear_boundary(pixels), images, [1], 0.5, sigma=0.25)
    for model in (NoGradients(linear_boundary), DetachedInput()):
        with pytest.raises(TypeError, match="no gradient with respect to its input"):
            smooth_adv(model, images, [1], 0.5, sigma=0.25)
    with pytest.raises(ValueError, match="`sigma` is required"):  # a plain module has no sigma of its own
        smooth_adv(linear_boundary, images, [1], 0.5)


def test_summary_counts_certificate_violations():
    certified = [{"idx": 0, "label": 1, "predict": 1, "radius": 0.6, "correct": 1, "time": 0.0},
                 {"idx": 1, "label": 0, "predict": -1, "radius": 0.0, "correct": 0, "time": 0.0}]
    rows = [{"idx": idx, "label": label, "epsilon": epsilon, "predict": predict, "correct": int(predict == label)}
            for idx, label, epsilon, predict in [
                (0, 1, 0.0, 1), (0, 1, 0.5, 0), (0, 1, 0.75, 0), (1, 0, 0.0, 0), (1, 0, 0.5, 1), (1, 0, 0.75, -1)
            ]]
    summary = summarize_attack(rows, certified)
    assert summary["empirical_accuracy"] == {"0": 1.0, "0.5": 0.0, "0.75": 0.0}
    assert summary["abstain_rate"] == {"0": 0.0, "0.5": 0.0, "0.75": 0.5}
    assert summary["certified_accuracy"] == {"0": 0.5, "0.5": 0.5, "0.75": 0.0}
    # certified at 0.6 yet attacked into class 0 at epsilon 0.5: a violation; at 0.75 the certificate says nothing
    assert summary["certificate_violations"] == {"0": 0, "0.5": 1, "0.75": 0}


# ---------------------------------------------------------------------------------------------- Grad-CAM


@pytest.mark.parametrize("build", [tiny_vit, tiny_resnet], ids=["vit", "resnet"])
def test_grad_cam_gives_maps_in_the_unit_interval_and_a_grid(build, tmp_path):
    model = smoothed(build(num_channels=1))
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for target in (model, model.model):  # the smoothed classifier and its bare base model
        maps = grad_cam(target, images, [0, 1, 2])
        assert maps.shape == (3, 28, 28) and maps.min() >= 0 and maps.max() <= 1
        peaks = maps.flatten(1).amax(dim=1)
        # all-zero: no positive evidence
        assert ((peaks - 1).abs() < 1e-6).logical_or(peaks == 0).all() and peaks.max() == 1
    models = {"a": model, "b": smoothed(build(num_channels=1))}
    gradcam_grid(models, images, [0, 1, 2], tmp_path / "grid.png", sigma=0.25)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_grad_cam_arguments(vit):
    images = torch.rand(1, 1, 28, 28)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        grad_cam(lambda pixels: vit(pixels).logits, images, [0])
    with pytest.raises(ValueError, match="`layer`='nope' is not a module"):
        grad_cam(vit, images, [0], layer="nope")
    with pytest.raises(ValueError, match="one class per image"):
        grad_cam(vit, images, [0, 1])


# ---------------------------------------------------------------------------------------------- examples


def test_attack_and_gradcam_examples_end_to_end(tiny_vit_gray_dir, tmp_path):
    output = tmp_path / "attack"
    run_example("attack.py", "--model_name_or_path", tiny_vit_gray_dir, "--sigma", 0.25,
                "--dataset_name", "embedded:digits", "--radii", 0, 0.5, "--steps", 2, "--num_noise", 2, "--n", 20,
                "--alpha", 0.1, "--n0", 10,
                "--certify_n", 20, "--max_examples", 3, "--skip", 7, "--output_dir", output)
    lines = (output / "attack.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["idx", "label", "epsilon", "distance", "predict", "correct", "time"]
    assert [(line.split("\t")[0], line.split("\t")[2]) for line in lines[1:]] == [
        ("0", "0.0"), ("0", "0.5"), ("7", "0.0"), ("7", "0.5"), ("14", "0.0"), ("14", "0.5")]
    assert all(float(line.split("\t")[3]) <= 0.5 + 1e-6 for line in lines[1:])
    summary = json.loads((output / "summary.json").read_text())
    assert summary["num_examples"] == 3 and set(summary["gap"]) == {"0", "0.5"}
    assert summary["space"] == "l2 in [0, 1] pixels of 28 x 28 x 1"  # where epsilon and the distances live
    assert os.path.isfile(output / "robustness.png") and os.path.isfile(output / "certify" / "certify.tsv")

    model = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25, method="lora")
    model.save_pretrained(tmp_path / "lora")
    run_example("gradcam.py", "--model_name_or_path", tmp_path / "lora", "--dataset_name", "embedded:digits",
                "--num_images", 2, "--output", tmp_path / "grid" / "gradcam.png")
    assert (tmp_path / "grid" / "gradcam.png").read_bytes()[:4] == b"\x89PNG"


def test_certificates_must_cover_the_attacked_examples(vit):
    dataset = [{"pixel_values": torch.rand(1, 28, 28), "label": 3} for _ in range(4)]
    rows = [{"idx": 0, "label": 3, "predict": 3, "radius": 0.3, "correct": 1, "time": 0.0}]
    with pytest.raises(ValueError, match=r"no row for example indices \[2\]"):
        attack_dataset(vit, dataset, output_dir="unused", skip=2, certified=rows)
    with pytest.raises(ValueError, match="other labels than the dataset"):
        attack_dataset(vit, dataset, output_dir="unused", max_examples=1, certified=[{**rows[0], "label": 4}],
                       radii=[0.0], n=10)


def test_attack_goes_through_a_denoiser_composite():
    """SmoothAdv differentiates through the input module: the denoiser -> base composite is attacked like
    any white-box model, and its soft smoothed probability of the true class goes down."""
    torch.manual_seed(0)
    denoiser = DnCNN(num_channels=1, depth=3, width=8)
    for parameter in denoiser.parameters():  # not the identity it starts as, so gradients pass through its layers
        torch.nn.init.normal_(parameter, std=0.05)
    base = tiny_vit(num_channels=1)
    config = SmoothingConfig(sigma=0.25, image_mean=[0.5], image_std=[0.5])
    composite = SmoothedImageClassifier(base, config, input_module=denoiser).eval()
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = composite(images).logits.argmax(dim=1)
    attacked = smooth_adv(composite, images, labels, 1.0, steps=5, num_noise=4, seed=2)
    assert (attacked - images).flatten(1).norm(dim=1).max() <= 1.0 + 1e-6 and not torch.equal(attacked, images)

    def soft_probability(pixels):
        noise = 0.25 * torch.randn((64, *pixels.shape[1:]), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            return torch.stack(
                [composite(x + noise).logits.softmax(dim=1)[:, y].mean() for x, y in zip(pixels, labels)]
            )

    assert (soft_probability(attacked) < soft_probability(images)).all()
