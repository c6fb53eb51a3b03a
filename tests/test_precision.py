"""Reduced precision, channels-last and a compiled forward (issue 20), on CPU: bf16 certificates valid on the
closed-form linear classifier, precision recorded and checked on resume, compiled = eager, bad input refused;
the GPU benchmark's --tiny run, so that it cannot rot."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import binom

from smoothing_hf import ABSTAIN, SmoothedImageClassifier, Smoother
from smoothing_hf.pipeline import certify

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
SIGMA = 0.25


def test_bf16_certificates_are_valid_on_the_linear_classifier(linear_boundary):
    """Evaluated in bf16 the boundary moves by bf16 rounding (about 0.004 in margin here): a certified radius may
    exceed the distance to the float32 boundary plus that slack, or name the wrong class, only for alpha of the
    points."""
    smoother = Smoother(linear_boundary, num_classes=2, sigma=SIGMA, precision="bf16")
    alpha, points = 0.05, 200
    distances = np.linspace(-0.6, 0.6, points)
    images = torch.stack([linear_boundary.image_at(float(d)) for d in distances])
    certificates = smoother.certify(images, n0=32, n=1024, alpha=alpha, batch_size=4096, seed=5)
    predictions = np.array([c.prediction for c in certificates])
    radii = np.array([c.radius for c in certificates])
    answered = predictions != ABSTAIN
    wrong = answered & ((predictions != (distances > 0)) | (radii > np.abs(distances) + 0.01))
    assert wrong.sum() <= binom.ppf(0.999, points, alpha)
    assert answered[np.abs(distances) > 0.2].all()  # and it certifies where it should
    assert smoother.forward(images[:2], None).dtype == torch.float32  # bf16 logits come back as float32


def test_the_forward_pass_runs_in_the_precision_asked_for(linear_boundary):
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, pixels):
            seen.append((pixels.dtype, torch.get_autocast_dtype("cpu"), torch.is_autocast_enabled("cpu")))
            return torch.nn.functional.linear(pixels.flatten(1), torch.ones(2, 16))

    for precision, expected in (("fp32", False), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        seen.clear()
        Smoother(Recording(), num_classes=2, sigma=SIGMA, precision=precision).certify(
            linear_boundary.image_at(0.1), n0=8, n=16, alpha=0.1, batch_size=64
        )
        pixels_dtype, dtype, enabled = seen[0]
        assert pixels_dtype == torch.float32  # noise drawn and added in float32
        assert (enabled, dtype if enabled else False) == (expected is not False, expected)


def test_compiled_forward_gives_the_eager_certificates(linear_boundary, one_thread):
    images = torch.stack([linear_boundary.image_at(d) for d in (0.05, -0.3, 0.6)])
    kwargs = dict(n0=20, n=300, alpha=0.01, batch_size=128, seed=2)  # 300 = 2 full batches + one padded
    eager = Smoother(linear_boundary, num_classes=2, sigma=SIGMA).certify(images, **kwargs)
    compiled = Smoother(linear_boundary, num_classes=2, sigma=SIGMA, compile=True).certify(images, **kwargs)
    assert [(c.prediction, c.count) for c in compiled] == [(c.prediction, c.count) for c in eager]
    last = Smoother(linear_boundary, num_classes=2, sigma=SIGMA, channels_last=True).certify(images, **kwargs)
    assert last == eager


def test_precision_is_recorded_and_checked_on_resume(tiny_vit_gray_dir, tmp_path, one_thread):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25)
    generator = torch.Generator().manual_seed(0)
    dataset = [{"pixel_values": torch.rand(1, 28, 28, generator=generator), "labels": i % 10} for i in range(3)]
    settings = dict(n0=10, n=100, alpha=0.01, batch_size=64, seed=1, max_examples=2)
    summary = certify(model, dataset, output_dir=tmp_path, precision="bf16", **settings)
    assert summary["settings"]["precision"] == "bf16"
    assert json.loads((tmp_path / "settings.json").read_text())["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision='bf16' there, 'fp32' now"):
        certify(model, dataset, output_dir=tmp_path, **settings)
    from smoothing_hf.hub import certification_record

    assert certification_record(model.config, summary)["precision"] == "bf16"


def test_bad_precision_settings_are_refused(linear_boundary, tiny_vit_gray_dir, tmp_path):
    with pytest.raises(ValueError, match=r"`precision` must be one of \['bf16', 'fp16', 'fp32'\], got 'int8'"):
        Smoother(linear_boundary, num_classes=2, sigma=SIGMA, precision="int8")
    with pytest.raises(ValueError, match="needs autocast, which device type 'meta' lacks"):
        Smoother(linear_boundary, num_classes=2, sigma=SIGMA, precision="bf16", device="meta")
    with pytest.raises(TypeError, match="`compile` must be True or False"):
        Smoother(linear_boundary, num_classes=2, sigma=SIGMA, compile="yes")
    with pytest.raises(TypeError, match="need a torch.nn.Module"):
        Smoother(lambda x: x, num_classes=2, sigma=SIGMA, channels_last=True)
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25)
    with pytest.raises(ValueError, match="`precision` must be one of"):
        certify(model, [{"pixel_values": torch.rand(1, 28, 28), "labels": 0}], output_dir=tmp_path / "run",
                precision="half", n0=10, n=50)
    assert not (tmp_path / "run").exists()


def test_training_in_bf16_runs_with_the_noise_collator(tiny_vit_dir, tmp_path):
    from transformers import TrainingArguments

    from smoothing_hf import SmoothingTrainer

    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)
    data = [{"pixel_values": torch.rand(3, 28, 28), "labels": i % 3} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, bf16=True)
    trainer = SmoothingTrainer(model, args, train_dataset=data)
    assert trainer.train().global_step == 2 and np.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_the_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    output = tmp_path / "gpu.json"
    subprocess.run(
        [sys.executable, "benchmarks/gpu_certify.py", "--tiny", "--rounds", "1", "--models", "resnet-tiny",
         "--output", str(output)],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, check=True, capture_output=True,
        timeout=600,
    )
    results = json.loads(output.read_text())
    variants = results["models"]["resnet-tiny"]
    assert set(variants) == {"fp32", "bf16", "bf16+channels_last", "bf16+compile", "bf16_over_fp32"}
    for variant in ("fp32", "bf16", "bf16+channels_last", "bf16+compile"):
        row = variants[variant]
        assert row["certify_samples_per_second"] > 0 and 0 <= row["share_of_rows_identical"] <= 1
        assert row["sampling_only_samples_per_second"] > 0 and row["sampling_share_of_certify_time"] > 0
    assert results["device"]
