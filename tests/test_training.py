"""NoiseCollator and SmoothingTrainer on a tiny ViT and a tiny in-memory dataset (CPU, a few steps)."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import TrainingArguments

from smoothing_hf import NoiseCollator, SmoothedImageClassifier, SmoothingTrainer
from smoothing_hf.objectives import consistency_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def brightness_dataset(n: int = 32, seed: int = 0) -> Dataset:
    """n 3 x 28 x 28 images in [0, 1]: label 1 bright (mean 0.75), label 0 dark (mean 0.25)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    pixels = np.where(labels[:, None, None, None] == 1, 0.75, 0.25) + rng.uniform(-0.2, 0.2, (n, 3, 28, 28))
    return Dataset.from_dict(
        {"pixel_values": pixels.astype(np.float32), "labels": labels, "idx": np.arange(n)}
    ).with_format("torch")


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def examples(n: int = 4, key: str = "labels", size: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(123)
    return [{"pixel_values": torch.rand(3, size, size, generator=generator), key: i % 3} for i in range(n)]


# ---------------------------------------------------------------------------------------------- collator


def test_collator_repeats_each_example_and_adds_exact_unclipped_gaussian_noise():
    batch_examples = examples(4)
    clean = torch.stack([e["pixel_values"] for e in batch_examples])
    batch = NoiseCollator(sigma=0.5, num_noise_samples=3, seed=1)(batch_examples)
    assert batch["pixel_values"].shape == (12, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    noise = batch["pixel_values"] - clean.repeat_interleave(3, dim=0)  # copies of example i are rows 3i..3i+2
    assert noise.std().item() == pytest.approx(0.5, rel=0.05) and abs(noise.mean().item()) < 0.03
    assert not torch.equal(noise[0], noise[1])  # each copy has its own noise
    assert batch["pixel_values"].min() < -0.5 and batch["pixel_values"].max() > 1.5  # not clipped
    assert NoiseCollator(0.5, 2)(examples(2, key="label"))["labels"].tolist() == [0, 0, 1, 1]
    assert "labels" not in NoiseCollator(0.5)([{"pixel_values": clean[0]}])


def test_collator_noise_is_reproducible_from_its_seed():
    first, second = examples(4), examples(4)
    collator = NoiseCollator(0.25, 2, seed=7)
    stream = [collator(first)["pixel_values"], collator(second)["pixel_values"]]
    assert not torch.equal(stream[0], stream[1])  # the stream moves on
    again = NoiseCollator(0.25, 2, seed=7)
    assert all(torch.equal(again(b)["pixel_values"], s) for b, s in zip((first, second), stream))
    collator.reset()
    assert torch.equal(collator(first)["pixel_values"], stream[0])
    assert not torch.equal(NoiseCollator(0.25, 2, seed=8)(first)["pixel_values"], stream[0])


def test_collator_in_dataloader_workers_draws_different_noise_per_worker():
    same_image = [{"pixel_values": torch.full((1, 4, 4), 0.5), "labels": 0}] * 4
    collator = NoiseCollator(0.25, seed=3)
    loader = torch.utils.data.DataLoader(same_image, batch_size=1, num_workers=2, collate_fn=collator)
    batches = [b["pixel_values"] for b in loader]  # batch k comes from worker k % 2
    assert not torch.equal(batches[0], batches[1])  # a worker's copy of the collator does not repeat another's
    assert not torch.equal(batches[0], batches[2])
    evaluation = NoiseCollator(0.25, seed=3, deterministic=True)
    loader = torch.utils.data.DataLoader(same_image, batch_size=2, num_workers=2, collate_fn=evaluation)
    first, second = [b["pixel_values"] for b in loader], [b["pixel_values"] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and not torch.equal(first[0], first[1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma"),
        ({"sigma": -0.25}, ValueError, "sigma"),
        ({"sigma": math.nan}, ValueError, "sigma"),
        ({"sigma": math.inf}, ValueError, "sigma"),
        ({"sigma": "0.25"}, TypeError, "sigma"),
        ({"sigma": 0.25, "num_noise_samples": 0}, ValueError, "num_noise_samples"),
        ({"sigma": 0.25, "num_noise_samples": 1.5}, TypeError, "num_noise_samples"),
        ({"sigma": 0.25, "seed": -1}, ValueError, "seed"),
        ({"sigma": 0.25, "seed": 0.5}, TypeError, "seed"),
    ],
)
def test_collator_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        NoiseCollator(**kwargs)


def test_collator_rejects_pixels_outside_unit_range_and_integer_pixels():
    collator = NoiseCollator(0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        collator([{"pixel_values": torch.full((3, 4, 4), 255.0), "labels": 0}])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        collator([{"pixel_values": torch.full((3, 4, 4), -0.5), "labels": 0}])
    with pytest.raises(TypeError, match="float"):
        collator([{"pixel_values": torch.zeros((3, 4, 4), dtype=torch.uint8), "labels": 0}])
    collator([{"pixel_values": torch.full((3, 4, 4), 1 + 5e-5), "labels": 0}])  # rounding within tolerance


# ---------------------------------------------------------------------------------------------- trainer


def test_training_updates_only_trainable_parameters_and_lowers_the_loss(tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("model.classifier.")  # stands in for a PEFT adapter
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = brightness_dataset(32)
    trainer = SmoothingTrainer(
        model,
        training_args(tmp_path, max_steps=12, learning_rate=0.05),
        num_noise_samples=2,
        train_dataset=data,
        eval_dataset=data,
    )
    loss_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] < 0.5 * loss_before
    assert metrics["eval_accuracy"] >= 0.9
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == parameter.requires_grad, name
    counts = next(entry for entry in trainer.state.log_history if "trainable_parameters" in entry)
    total = sum(p.numel() for p in model.parameters())
    assert counts["trainable_parameters"] == 32 * 10 + 10 and counts["total_parameters"] == total
    assert counts["trainable_share"] == pytest.approx(330 / total)
    assert sum("loss" in entry for entry in trainer.state.log_history) == 12


def test_set_transform_dataset_with_an_image_column_and_processing_class(tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    data = Dataset.from_dict({"image": images, "label": [0, 1] * 4})
    transform = model.image_transform()  # resize to 28 x 28, rescale to [0, 1], no normalization
    data.set_transform(lambda batch: {"pixel_values": list(transform(batch["image"])), "labels": batch["label"]})
    args = training_args(tmp_path, per_device_train_batch_size=4)
    assert args.remove_unused_columns  # the default that would drop "image"
    trainer = SmoothingTrainer(
        model, args, train_dataset=data, eval_dataset=data, processing_class=model.image_processor
    )
    assert not trainer.args.remove_unused_columns and args.remove_unused_columns  # on a copy
    assert trainer.processing_class is model.image_processor
    assert trainer.train().global_step == 2
    assert 0.0 <= trainer.evaluate()["eval_accuracy"] <= 1.0


class PerExampleNoise(NoiseCollator):
    """Noise seeded per (example, copy), so a batch's noise does not depend on which examples share it."""

    def __call__(self, examples):
        batch = super().__call__(examples)
        clean = torch.stack([e["pixel_values"] for e in examples]).repeat_interleave(self.num_noise_samples, dim=0)
        seeds = [int(e["idx"]) * 100 + copy for e in examples for copy in range(self.num_noise_samples)]
        noise = torch.stack([torch.randn(clean.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
        batch["pixel_values"] = clean + self.sigma * noise
        return batch


def one_sgd_step(tiny_vit_dir, tmp_path, trainer_class, batch_size, accumulation):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = trainer_class(
        model,
        training_args(
            tmp_path / f"{batch_size}x{accumulation}",
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,  # no clipping: it would hide a scaling error
        ),
        num_noise_samples=2,
        consistency_weight=1.0,
        data_collator=PerExampleNoise(0.25, 2),
        train_dataset=brightness_dataset(8),
    )
    result = trainer.train()
    update = torch.cat([(p.detach() - before[name]).flatten() for name, p in model.named_parameters()])
    return update, result.training_loss


class ClaimsScaledLoss(SmoothingTrainer):
    loss_is_scaled_for_ga = True  # wrong for this loss: the accumulated gradient is a sum of micro-batch means


def test_gradient_accumulation_gives_the_same_update_as_one_large_batch(tiny_vit_dir, tmp_path):
    large, large_loss = one_sgd_step(tiny_vit_dir, tmp_path, SmoothingTrainer, batch_size=8, accumulation=1)
    accumulated, accumulated_loss = one_sgd_step(tiny_vit_dir, tmp_path, SmoothingTrainer, batch_size=4, accumulation=2)
    assert large.norm() > 1e-3
    torch.testing.assert_close(accumulated, large, rtol=1e-4, atol=1e-6)
    assert accumulated_loss == pytest.approx(large_loss, rel=1e-5)
    # the comparison is sensitive: scaling the loss a second time (or not at all) changes the update 2-fold
    unscaled, _ = one_sgd_step(tiny_vit_dir, tmp_path, ClaimsScaledLoss, batch_size=4, accumulation=2)
    assert (unscaled.norm() / large.norm()).item() == pytest.approx(2.0, rel=1e-3)


def test_consistency_loss_adds_the_kl_to_the_mean_prediction_across_copies(tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=1.0)
    trainer = SmoothingTrainer(model, training_args(tmp_path), num_noise_samples=4, consistency_weight=2.0)
    batch = NoiseCollator(1.0, 4, seed=0)(examples(3, size=28))
    model.train()
    with torch.no_grad():
        logits = model(batch["pixel_values"]).logits
        cross_entropy = torch.nn.functional.cross_entropy(logits, batch["labels"])
        loss = trainer.compute_loss(model, batch)
    p = logits.softmax(-1).view(3, 4, -1)
    mean = p.mean(1, keepdim=True)
    kl = (mean * (mean.log() - p.log())).sum(-1).mean()  # KL(mean softmax || softmax of each copy)
    assert kl > 1e-5  # the noisy copies disagree (a little: the tiny random ViT is nearly uniform)
    torch.testing.assert_close(loss, cross_entropy + 2.0 * kl)
    assert loss > cross_entropy
    model.eval()  # evaluation: cross-entropy alone
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(model, batch), cross_entropy)
    same = logits.view(3, 4, -1)[:, :1].expand(3, 4, -1).reshape(12, -1)
    assert consistency_loss(same, batch["labels"], 4).abs() < 1e-6  # identical copies: no penalty
    with pytest.raises(ValueError, match="num_noise_samples"):
        consistency_loss(logits, torch.arange(12), 4)  # labels not in runs of m


def test_evaluate_reports_accuracy_under_reproducible_noise(tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.5)
    data = brightness_dataset(16)
    trainer = SmoothingTrainer(model, training_args(tmp_path, max_steps=1), train_dataset=data, eval_dataset=data)
    first = trainer.evaluate()
    second = trainer.evaluate()
    assert 0.0 <= first["eval_accuracy"] <= 1.0
    assert (first["eval_accuracy"], first["eval_loss"]) == (second["eval_accuracy"], second["eval_loss"])
    trainer.train()  # training draws from its own stream and leaves the evaluation noise alone
    assert trainer.data_collator is not trainer.eval_data_collator
    output = trainer.predict(data)
    assert output.predictions.shape == (16, 10) and output.metrics["test_accuracy"] == pytest.approx(
        float(np.mean(output.predictions.argmax(-1) == np.arange(16) % 2))
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_noise_samples": 0}, ValueError, "num_noise_samples"),
        ({"num_noise_samples": 2.0}, TypeError, "num_noise_samples"),
        ({"consistency_weight": -0.1}, ValueError, "consistency_weight"),
        ({"consistency_weight": math.nan}, ValueError, "consistency_weight"),
        ({"consistency_weight": 0.5, "num_noise_samples": 1}, ValueError, "num_noise_samples"),
        ({"compute_loss_func": lambda *a, **k: 0}, TypeError, "compute_loss_func"),
    ],
)
def test_trainer_rejects_bad_arguments(tiny_vit_dir, tmp_path, kwargs, error, match):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    with pytest.raises(error, match=match):
        SmoothingTrainer(model, training_args(tmp_path), **kwargs)


def test_trainer_needs_a_smoothed_model_and_a_positive_sigma(tiny_vit_dir, tmp_path):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    with pytest.raises(TypeError, match="SmoothedImageClassifier"):
        SmoothingTrainer(model.model, training_args(tmp_path))
    with pytest.raises(ValueError, match="sigma"):
        SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.0)
