"""The training objectives (smoothing_hf.objectives) in SmoothingTrainer, tested once per objective and once per
(objective, fine-tuning method) pair, peft-style: each loss is finite and learns a toy task, trains only the
trainable parameters, accumulates like one large batch, keeps its attacks within epsilon and [0, 1], records
itself in the model's config and card, and refuses bad options by name."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_resnet, tiny_vit
from test_examples import QUIET, run_example
from test_training import PerExampleNoise, brightness_dataset, training_args

from smoothing_hf import SmoothedImageClassifier, SmoothingTrainer
from smoothing_hf import objectives as objectives_module
from smoothing_hf.analysis.attacks import soft_smoothed_pgd
from smoothing_hf.config import SmoothingConfig
from smoothing_hf.hub import model_card
from smoothing_hf.methods import applicable_methods
from smoothing_hf.objectives import OBJECTIVES, MacerOptions, SmoothAdvOptions, TrainingBatch, get_objective

pytestmark = pytest.mark.usefixtures("one_thread")

NOISE_SAMPLES = {"gaussian": 1, "consistency": 2, "smoothadv": 2, "macer": 2}
"""m for each objective in these tests (the smallest each needs, 2 for SmoothAdv's multi-noise attack)."""
FAST_OPTIONS = {"smoothadv": {"epsilon": 0.5, "steps": 2, "warmup_epochs": 1}}
"""Options that make a few steps meaningful: SmoothAdv at its full radius from the first step."""


def trainer_for(model, tmp_path, objective, **overrides) -> SmoothingTrainer:
    settings = dict(objective=objective, objective_options=FAST_OPTIONS.get(objective),
                    num_noise_samples=NOISE_SAMPLES[objective])
    args = {key: overrides.pop(key) for key in list(overrides) if key in ("max_steps", "learning_rate")}
    settings.update(overrides)
    return SmoothingTrainer(model, training_args(tmp_path, **args), **settings)


# ---------------------------------------------------------------------------------------------- per objective


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_each_objective_learns_a_toy_task_and_trains_only_the_trainable_parameters(objective, tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method="lora")
    data = brightness_dataset(32)
    trainer = trainer_for(model, tmp_path, objective, max_steps=12, learning_rate=0.02, train_dataset=data)

    batch = trainer.data_collator([data[i] for i in range(8)])  # one backward by hand: where do gradients go?
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        else:
            assert parameter.grad is None, f"a frozen parameter got a gradient: {name}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(model.get_parameter(name), before[name]) for name in frozen)
    assert all(not torch.equal(p, before[name]) for name, p in model.named_parameters() if p.requires_grad)
    assert model.config.training["objective"] == objective
    assert model.config.training["num_noise_samples"] == NOISE_SAMPLES[objective]
    options = json.loads(json.dumps(trainer.training_record())).get("objective_options")  # JSON as it is
    assert model.config.training.get("objective_options") == options and (options is None) == (objective == "gaussian")


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_gradient_accumulation_gives_the_loss_and_update_of_one_large_batch(objective, tiny_vit_dir, tmp_path):
    def one_sgd_step(batch_size, accumulation):
        torch.manual_seed(0)  # the same random LoRA A matrices in both runs
        model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method="lora")
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        m = NOISE_SAMPLES[objective]
        trainer = SmoothingTrainer(
            model,
            training_args(tmp_path / f"{batch_size}x{accumulation}", max_steps=1,
                          per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                          optim="sgd", learning_rate=0.5,
                          lr_scheduler_type="constant", max_grad_norm=0.0),
            objective=objective, objective_options=FAST_OPTIONS.get(objective), num_noise_samples=m,
            data_collator=PerExampleNoise(0.25, m),  # noise per (example, copy): the same in either split
            train_dataset=brightness_dataset(8),
        )
        result = trainer.train()
        update = torch.cat([(p.detach() - before[name]).flatten() for name, p in model.named_parameters()])
        return update, result.training_loss

    large, large_loss = one_sgd_step(8, 1)
    accumulated, accumulated_loss = one_sgd_step(4, 2)
    assert large.norm() > 1e-3
    torch.testing.assert_close(accumulated, large, rtol=1e-3, atol=1e-6)
    assert accumulated_loss == pytest.approx(large_loss, rel=1e-4)


# ---------------------------------------------------------------------------------------------- objective x method


def method_cases() -> list[tuple[str, str, str]]:
    vit, resnet = applicable_methods(tiny_vit()), applicable_methods(tiny_resnet())
    cases = [(objective, "vit", method) for objective in OBJECTIVES for method in vit]
    cases += [(objective, "resnet", method) for objective in OBJECTIVES for method in ("lora", "full")
              if method in resnet]
    return cases


@pytest.mark.parametrize(("objective", "base", "method"), method_cases())
def test_one_trainer_step_for_each_objective_and_method(objective, base, method, tiny_vit_dir, tiny_resnet_dir,
                                                        tmp_path):
    if base == "vit":
        model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method=method)
        data = brightness_dataset(8)
    else:  # one channel, BatchNorm (trained by full fine-tuning, frozen otherwise)
        model = SmoothedImageClassifier.from_pretrained(tiny_resnet_dir, sigma=0.25, method=method, image_mean=[0.5],
                                                        image_std=[0.5])
        data = brightness_dataset(8).map(lambda example: {"pixel_values": example["pixel_values"][:1]})
    trainer = trainer_for(model, tmp_path, objective, max_steps=1, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    assert model.config.training["objective"] == objective


# ---------------------------------------------------------------------------------------------- SmoothAdv


def test_smoothadv_attacks_stay_within_the_warmed_up_epsilon_and_the_pixel_box(tiny_vit_dir, tmp_path, monkeypatch):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method="lora")
    attacks = []

    def recording(attack_model, clean, labels, noise, **kwargs):
        attacked = soft_smoothed_pgd(attack_model, clean, labels, noise, **kwargs)
        attacks.append((clean, attacked, kwargs["epsilon"]))
        return attacked

    monkeypatch.setattr(objectives_module, "soft_smoothed_pgd", recording)
    data = brightness_dataset(16)  # 2 steps per epoch at batch 8
    trainer = SmoothingTrainer(
        model, training_args(tmp_path, max_steps=6, learning_rate=0.02), objective="smoothadv",
        objective_options={"epsilon": 1.0, "steps": 3, "warmup_epochs": 2}, num_noise_samples=2, train_dataset=data,
    )
    trainer.train()
    assert [epsilon for _, _, epsilon in attacks] == [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]  # epochs 0, 1, 2
    for clean, attacked, epsilon in attacks:
        distances = (attacked - clean).flatten(1).norm(dim=1)
        assert (distances <= epsilon + 1e-5).all() and (distances > 0.5 * epsilon).all()  # moved, within the ball
        assert attacked.min() >= 0 and attacked.max() <= 1


def test_the_shared_pgd_lowers_the_soft_smoothed_probability_within_the_box(tiny_vit_dir):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    clean = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    clean[:, :, :4] = 1.0  # pixels on the box's edge: the attack must not leave [0, 1]
    labels = torch.tensor([0, 1, 2, 3])
    noise = 0.25 * torch.randn(8, 3, 28, 28, generator=torch.Generator().manual_seed(1))

    def smoothed_probability(pixels):
        with torch.no_grad():
            probabilities = model(pixels.repeat_interleave(2, dim=0) + noise).logits.softmax(-1).view(4, 2, -1)
        return probabilities.mean(1).gather(1, labels[:, None]).squeeze(1)

    attacked = soft_smoothed_pgd(model, clean, labels, lambda: noise, epsilon=0.5, steps=4, step_size=0.25,
                                 num_noise=2)
    assert ((attacked - clean).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert attacked.min() >= 0 and attacked.max() <= 1
    assert (smoothed_probability(attacked) < smoothed_probability(clean)).all()
    assert all(p.grad is None for p in model.parameters())  # gradients with respect to the pixels only


def test_smoothadv_warmup_follows_salman_et_al():
    options = SmoothAdvOptions(epsilon=0.5, warmup_epochs=10)
    assert options.epsilon_at(0.0) == pytest.approx(0.05) and options.epsilon_at(0.99) == pytest.approx(0.05)
    assert options.epsilon_at(4.5) == pytest.approx(0.25) and options.epsilon_at(9.0) == 0.5
    assert options.epsilon_at(30.0) == 0.5 and SmoothAdvOptions(warmup_epochs=1).epsilon_at(0.0) == 0.5


# ---------------------------------------------------------------------------------------------- MACER, consistency


def loss_on(logits, labels, m, objective, options, sigma=0.5):
    logits = logits.clone().requires_grad_(True)
    model = lambda pixel_values: SimpleNamespace(logits=logits)  # noqa: E731 - a stand-in forward
    batch = TrainingBatch(model=model, attack_model=model, inputs={"pixel_values": logits, "labels": labels},
                          num_noise_samples=m, sigma=sigma, epoch=0.0)
    loss, _ = get_objective(objective).loss(batch, get_objective(objective).parse_options(options))
    return loss, logits


def test_macer_loss_is_the_soft_cross_entropy_plus_the_radius_hinge():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=generator) / 4  # B = 4 images, m = 3 copies
    logits[0:3, 2] += 30.0  # image 0: a margin beyond gamma (no hinge)
    labels = torch.tensor([2, 2, 2, 1, 1, 1, 3, 3, 3, 0, 0, 0])
    options = {"lbd": 2.0, "gamma": 3.0, "beta": 4.0}
    loss, leaf = loss_on(logits, labels, 3, "macer", options)
    mean = logits.softmax(-1).view(4, 3, 5).mean(1)
    classification = -mean.log()[torch.arange(4), labels[::3]].mean()
    tempered = (4.0 * logits).softmax(-1).view(4, 3, 5).mean(1)
    top, classes = tempered.topk(2)
    normal = torch.distributions.Normal(0.0, 1.0)
    margin = normal.icdf(top[:, 0]) - normal.icdf(top[:, 1])
    active = (classes[:, 0] == labels[::3]) & (margin <= 3.0)
    expected = classification + 2.0 * ((3.0 - margin[active]).sum() * 0.5 / 2) / 4
    assert 0 < active.sum() < 4  # some images in the hinge, image 0 out of it
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    # a margin that rounds to infinity (p1 = 1 in float32) has no hinge and leaves the gradient finite
    saturated = logits.clone()
    saturated[0:3, 2] += 1e4
    loss, leaf = loss_on(saturated, labels, 3, "macer", options)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()


def test_consistency_adds_the_kl_and_the_entropy_of_the_mean_prediction():
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, _ = loss_on(logits, labels, 2, "consistency", {"lbd": 3.0, "eta": 0.5})
    p = logits.softmax(-1).view(4, 2, 4)
    mean = p.mean(1, keepdim=True)
    kl = (mean * (mean.log() - p.log())).sum(-1).mean()
    entropy = -(mean * mean.log()).sum(-1).mean()
    expected = torch.nn.functional.cross_entropy(logits, labels) + 3.0 * kl + 0.5 * entropy
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"objective": "adversarial"}, ValueError, r"`objective` must be one of \['gaussian', 'consistency', "
         r"'smoothadv', 'macer'\], got 'adversarial'"),
        ({"objective": None}, ValueError, "`objective` must be one of"),
        ({"objective": "macer", "num_noise_samples": 2, "objective_options": {"epsilon": 0.5}}, ValueError,
         r"\['epsilon'\] do not belong to objective 'macer'; its options are \['lbd', 'gamma', 'beta'\]"),
        ({"objective": "gaussian", "objective_options": {"lbd": 1.0}}, ValueError, "its options are none"),
        ({"objective": "smoothadv", "objective_options": {"epsilon": 0.0}}, ValueError,
         r"objective 'smoothadv'.*`epsilon` must be a positive finite number \(l2 in \[0, 1\] pixel units\), got 0"),
        ({"objective": "smoothadv", "objective_options": {"epsilon": -0.5}}, ValueError, "`epsilon` must be"),
        ({"objective": "smoothadv", "objective_options": {"epsilon": math.nan}}, ValueError, "`epsilon` must be"),
        ({"objective": "smoothadv", "objective_options": {"epsilon": "0.5"}}, TypeError, "`epsilon` must be"),
        ({"objective": "smoothadv", "objective_options": {"steps": 0}}, ValueError, r"`steps` must be a positive int"),
        ({"objective": "smoothadv", "objective_options": {"steps": 1.5}}, TypeError, "`steps` must be"),
        ({"objective": "smoothadv", "objective_options": {"step_size": 0}}, ValueError, "`step_size` must be"),
        ({"objective": "smoothadv", "objective_options": {"warmup_epochs": 0}}, ValueError, "`warmup_epochs` must be"),
        ({"objective": "smoothadv", "objective_options": [0.5, 2]}, TypeError, "must be a dict"),
        ({"objective": "macer", "num_noise_samples": 1}, ValueError,
         r"objective 'macer' needs `num_noise_samples` >= 2 .*got num_noise_samples=1"),
        ({"objective": "consistency", "num_noise_samples": 1}, ValueError, "`num_noise_samples` >= 2"),
        ({"objective": "smoothadv", "num_noise_samples": 0}, ValueError, "`num_noise_samples` must be a positive int"),
        ({"objective": "macer", "num_noise_samples": 2, "objective_options": {"gamma": 0}}, ValueError, "`gamma`"),
        ({"objective": "macer", "num_noise_samples": 2, "objective_options": {"beta": -1}}, ValueError, "`beta`"),
        ({"objective": "macer", "num_noise_samples": 2, "objective_options": {"lbd": -1}}, ValueError, "`lbd`"),
        ({"objective": "consistency", "num_noise_samples": 2, "objective_options": {"eta": -1}}, ValueError, "`eta`"),
        ({"objective": "smoothadv", "consistency_weight": 1.0}, TypeError, "either it or `objective`"),
    ],
)
def test_bad_objectives_and_options_are_refused_by_name(tiny_vit_dir, tmp_path, kwargs, error, match):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    with pytest.raises(error, match=match):
        SmoothingTrainer(model, training_args(tmp_path), **kwargs)


def test_options_are_json_dataclasses_with_the_papers_defaults():
    assert json.loads(json.dumps(vars(MacerOptions()))) == {"lbd": 12.0, "gamma": 8.0, "beta": 16.0}
    assert get_objective("consistency").parse_options(None).__dict__ == {"lbd": 10.0, "eta": 0.5}
    smoothadv = get_objective("smoothadv").parse_options({"epsilon": 1, "steps": 4})
    assert (smoothadv.epsilon, smoothadv.steps, smoothadv.step_size, smoothadv.warmup_epochs) == (1.0, 4, None, 10)
    assert isinstance(smoothadv.epsilon, float)


# ---------------------------------------------------------------------------------------------- records


def test_the_objective_is_saved_in_the_config_and_card_and_old_records_still_load(tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25, method="lora")
    trainer_for(model, tmp_path / "trainer", "smoothadv", max_steps=1, train_dataset=brightness_dataset(8)).train()
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "smoothing_config.json").read_text())["training"]
    assert saved["objective"] == "smoothadv" and saved["num_noise_samples"] == 2
    assert saved["objective_options"] == {"epsilon": 0.5, "steps": 2, "step_size": None, "warmup_epochs": 1}
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "with the `smoothadv` training objective (`epsilon=0.5, step_size=None, steps=2, warmup_epochs=1`)" in card
    assert "| training objective | `smoothadv` (`epsilon=0.5, step_size=None, steps=2, warmup_epochs=1`) |" in card
    assert SmoothedImageClassifier.from_pretrained(tmp_path / "saved").config.training == saved

    # A folder saved before objectives were recorded: consistency_weight, no objective.
    config = SmoothingConfig.from_dict({**SmoothingConfig.from_json_file(tmp_path / "saved" / "smoothing_config.json")
                                        .to_dict(), "training": {"consistency_weight": 5.0, "num_noise_samples": 2}})
    old_card = str(model_card(config, "old"))
    assert "with cross-entropy on images" in old_card and "| consistency loss weight | 5.0 |" in old_card
    assert "training objective" not in old_card
    with pytest.raises(TypeError, match=r"`training\['objective_options'\]` must be a dict"):
        SmoothingConfig.from_dict({**config.to_dict(), "training": {"objective": "macer", "objective_options": [1]}})


def test_train_py_takes_the_objective_and_its_options(tiny_vit_gray_dir, tmp_path):
    output = tmp_path / "smoothadv"
    run_example("train.py", "--model_name_or_path", tiny_vit_gray_dir, "--dataset_name", "embedded:digits",
                "--method", "lora", "--sigma", 0.25, "--output_dir", output, "--max_steps", 1,
                "--per_device_train_batch_size", 4, "--objective", "smoothadv",
                "--objective_options", '{"epsilon": 0.5, "steps": 2}', "--num_noise_samples", 2, *QUIET)
    training = json.loads((output / "smoothing_config.json").read_text())["training"]
    assert training["objective"] == "smoothadv" and training["objective_options"]["steps"] == 2
    assert json.loads((output / "train_results.json").read_text())["objective"] == "smoothadv"
    shorthand = tmp_path / "consistency"
    run_example("train.py", "--model_name_or_path", tiny_vit_gray_dir, "--dataset_name", "embedded:digits",
                "--method", "linear", "--sigma", 0.25, "--output_dir", shorthand, "--max_steps", 1,
                "--per_device_train_batch_size", 4, "--consistency_weight", 2.0, "--num_noise_samples", 2, *QUIET)
    training = json.loads((shorthand / "smoothing_config.json").read_text())["training"]
    assert training["objective"] == "consistency" and training["objective_options"] == {"lbd": 2.0, "eta": 0.0}
    with pytest.raises(ValueError, match=r"\['epsilon'\] do not belong to objective 'macer'"):
        run_example("train.py", "--model_name_or_path", tiny_vit_gray_dir, "--dataset_name", "embedded:digits",
                    "--output_dir", tmp_path / "bad", "--objective", "macer", "--objective_options", '{"epsilon": 1}')
