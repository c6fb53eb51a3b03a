"""Empirical robustness: the SmoothAdv l2 attack on a smoothed classifier, beside its certificate.

SmoothAdv (Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers",
NeurIPS 2019) attacks the soft smoothed classifier G(x) = E_e[softmax(f(x + e))], e ~ N(0, sigma^2 I):
projected gradient ascent on -log G(x')_y over the l2 ball of radius epsilon around x (and the [0, 1] pixel box), the
expectation estimated from m fresh noise draws at every step. ``attack_dataset`` then runs PREDICT on the
attacked images: the fraction still classified correctly is an upper bound on the smoothed classifier's
robust accuracy at epsilon, as the certified accuracy is a lower bound (with probability 1 - alpha each).

The PGD loop is written here rather than taken from torchattacks, whose package requires torchvision and
pins requests~=2.25 (a plain install pulls another torch build and downgrades requests), and whose PGDL2 would
need a stateful wrapper to draw the per-image seeded noise. All noise is seeded per image, so an attack is
reproducible and independent of PREDICT's noise.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..certification import eval_mode
from ..checks import (
    check_number,
    check_optional_positive_int,
    check_pixel_range,
    check_positive_int,
    check_sigma,
)
from ..data import labelled_batch
from ..files import read_rows, write_json, write_rows
from ..modeling import SmoothedImageClassifier
from ..noise import derive_seed, image_seeds
from ..space import describe
from .robustness import ROBUSTNESS_PLOT, plot_robustness, summarize_attack

ATTACK_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Default attack radii epsilon (l2, [0, 1] pixels); 0 is the clean image (PREDICT without attack)."""
ATTACK_STREAM = 1000
"""Tag of an image's attack noise stream, ``derive_seed(image seed, ATTACK_STREAM)``: a stream apart from
the selection, estimation and prediction streams (``noise.Phase``), so the attack never sees PREDICT's noise."""
RADIUS_UNIT = "l2 radius in [0, 1] pixel units"
ATTACK_COLUMNS = ("idx", "label", "epsilon", "distance", "predict", "correct", "time")
ATTACK_TSV = "attack.tsv"


def smooth_adv(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    epsilon: float,
    *,
    sigma: float | None = None,
    num_noise: int = 8,
    steps: int = 20,
    step_size: float | None = None,
    batch_size: int = 256,
    seed: int | Sequence[int] = 0,
) -> torch.Tensor:
    """SmoothAdv's l2 PGD against the smoothed version of ``model`` (Salman et al.'s ``SmoothAdv_PGD``).

    Maximizes L(x') = -log((1/m) sum_j softmax(f(x' + e_j))_y), e_j ~ N(0, sigma^2 I), over ||x' - x||_2 <=
    epsilon and x' in [0, 1]: from x' = x, each of ``steps`` steps moves x' by ``step_size`` along the
    normalized gradient of L (m = ``num_noise`` fresh draws), then clips x' to [0, 1] and scales x' - x
    back into the ball. Noise reaches ``model`` unclipped, as in certification.

    Args:
        model: a white-box ``torch.nn.Module`` mapping [B, C, H, W] pixels in [0, 1] to [B, K] logits (or an
            output with ``logits``), differentiable with respect to its input: a ``SmoothedImageClassifier``
            (denoiser composites included), a base classifier, any module.
        images: [B, C, H, W] clean pixels in [0, 1].
        labels: the B true classes, whose smoothed probability the attack lowers.
        epsilon: the l2 radius of the attack in [0, 1] pixel units (>= 0; 0 returns the images).
        sigma: noise std in [0, 1] pixel units; by default ``model.sigma``.
        num_noise: m, noise draws per image per step (>= 1).
        steps: gradient steps (>= 1).
        step_size: l2 length of each step; by default 2 * epsilon / steps (Salman et al.'s).
        batch_size: noisy samples per forward pass (images are attacked batch_size // m at a time).
        seed: noise seed; an int gives image i the seed ``derive_seed(seed, i)``, a sequence one per image.
            Image seed s draws its noise from ``derive_seed(s, ATTACK_STREAM)``, so the result does not
            depend on the other images (up to floating-point rounding).

    Returns:
        The attacked images [B, C, H, W], in [0, 1], each within l2 distance epsilon of its clean image.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module`` (a black-box callable), or its output has no
            gradient with respect to its input (its forward runs under ``torch.no_grad``, or it only queries).
        ValueError: epsilon < 0, num_noise, steps or batch_size < 1, step_size <= 0, no sigma, labels that do
            not match the images or the model's classes, images outside [0, 1].
    """
    _check_white_box(model)
    epsilon = check_number(epsilon, "epsilon", minimum=0, unit=RADIUS_UNIT)
    num_noise, steps = check_positive_int(num_noise, "num_noise"), check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    if step_size is not None:
        step_size = check_number(step_size, "step_size", minimum=0, strict_minimum=True, unit="l2 length of a step")
    if sigma is None:
        sigma = getattr(model, "sigma", None)
        if sigma is None:
            raise ValueError("`sigma` is required: `model` has no `sigma` attribute to take the noise level from")
    sigma = check_sigma(sigma)
    images = _check_images(images)
    labels = torch.as_tensor(labels, dtype=torch.long, device=images.device).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"`labels` must hold one class per image ({len(images)}), got {len(labels)}")
    seeds = image_seeds(seed, len(images))
    if epsilon == 0:
        return images.clone()

    step_size = step_size if step_size is not None else 2 * epsilon / steps
    group = max(1, batch_size // num_noise)
    attacked = [
        _attack_group(model, images[i : i + group], labels[i : i + group], seeds[i : i + group],
                      epsilon, sigma, num_noise, steps, step_size)
        for i in range(0, len(images), group)
    ]
    return torch.cat(attacked)


def _attack_group(
    model: torch.nn.Module, clean: torch.Tensor, labels: torch.Tensor, seeds: list[int],
    epsilon: float, sigma: float, num_noise: int, steps: int, step_size: float,
) -> torch.Tensor:
    """SmoothAdv on a few images together: [b, C, H, W] clean pixels -> attacked pixels, m fresh draws of each
    image's own seeded noise stream at every step."""
    generators = [torch.Generator(device=clean.device).manual_seed(derive_seed(s, ATTACK_STREAM)) for s in seeds]
    shape = (num_noise, *clean.shape[1:])

    def fresh_noise() -> torch.Tensor:
        return sigma * torch.cat([torch.randn(shape, generator=g, device=clean.device) for g in generators])

    return soft_smoothed_pgd(model, clean, labels, fresh_noise, epsilon=epsilon, steps=steps, step_size=step_size,
                             num_noise=num_noise)


def soft_smoothed_pgd(
    model: torch.nn.Module,
    clean: torch.Tensor,
    labels: torch.Tensor,
    noise: Callable[[], torch.Tensor],
    *,
    epsilon: float,
    steps: int,
    step_size: float,
    num_noise: int,
) -> torch.Tensor:
    """The l2 PGD of SmoothAdv on the soft smoothed classifier, shared by the attack (``smooth_adv``: fresh
    noise at every step) and by SmoothAdv training (``smoothing_hf.objectives``: the same noise at every step,
    then trained on, as in Salman et al.'s ``train_pgd.py``).

    From x' = x, each of ``steps`` steps moves x' by ``step_size`` (l2) along the normalized gradient of
    -log((1/m) sum_j softmax(f(x' + e_j))_y), then clips x' to [0, 1] and scales x' - x back into the l2 ball of
    radius ``epsilon``. ``model`` runs in eval mode (no dropout, BatchNorm running statistics) and only the
    gradient with respect to the pixels is computed, so no parameter gets a ``.grad``.

    Args:
        model: a ``torch.nn.Module`` mapping [b * m, C, H, W] pixels to [b * m, K] logits (or an output with
            ``logits``), differentiable with respect to its input.
        clean: [b, C, H, W] clean pixels in [0, 1] (checked by the callers).
        labels: [b] true classes (long, on ``clean``'s device).
        noise: called once per step; returns the [b * m, C, H, W] noise in [0, 1] pixel units, the m draws of
            image i in rows i * m .. i * m + m - 1.
        epsilon: l2 radius in [0, 1] pixel units (> 0).
        steps: gradient steps (>= 1); step_size: l2 length of a step (> 0); num_noise: m (>= 1).

    Returns:
        [b, C, H, W] attacked pixels in [0, 1], each within l2 distance ``epsilon`` of its clean image (detached).
    """
    delta = torch.zeros_like(clean)
    with torch.enable_grad(), eval_mode(model):
        for _ in range(steps):
            delta.requires_grad_(True)
            draws = noise()
            if draws.shape != (len(clean) * num_noise, *clean.shape[1:]):
                raise ValueError(
                    f"`noise` must return [b * m, C, H, W] = {[len(clean) * num_noise, *clean.shape[1:]]} draws, got "
                    f"{list(draws.shape)}"
                )
            noisy = (clean + delta).repeat_interleave(num_noise, dim=0) + draws
            logits = _logits(model(noisy), len(noisy))
            num_classes = logits.shape[1]
            if not (0 <= labels.min() and labels.max() < num_classes):
                raise ValueError(
                    f"`labels` must be classes of the model, in [0, {num_classes}), got {labels.tolist()}"
                )
            # log of the soft smoothed classifier, log mean_j softmax(f(x' + e_j)), computed stably
            log_probabilities = logits.float().log_softmax(dim=1).view(len(clean), num_noise, -1)
            log_smoothed = torch.logsumexp(log_probabilities, dim=1) - math.log(num_noise)
            loss = -log_smoothed.gather(1, labels[:, None]).sum()  # a sum: each image gets its own gradient
            gradient = torch.autograd.grad(loss, delta, allow_unused=True)[0] if loss.requires_grad else None
            if gradient is None:
                raise TypeError(
                    "the output of `model` has no gradient with respect to its input (is its forward run under "
                    "torch.no_grad, or is it a black-box that only answers queries?); SmoothAdv is a white-box attack"
                )
            norms = gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta.detach() + step_size * gradient / norms
            delta = (clean + delta).clamp(0, 1) - clean  # into the pixel box, then into the l2 ball
            delta = delta.renorm(p=2, dim=0, maxnorm=epsilon)
    return (clean + delta).clamp(0, 1).detach()


def attack_dataset(
    model: SmoothedImageClassifier,
    dataset: Any,
    *,
    output_dir: str | os.PathLike,
    radii: Sequence[float] = ATTACK_RADII,
    num_noise: int = 8,
    steps: int = 20,
    step_size: float | None = None,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 256,
    seed: int = 0,
    max_examples: int | None = None,
    skip: int = 1,
    certified: str | os.PathLike | Sequence[dict] | None = None,
    precision: str = "fp32",
) -> dict:
    """Empirical robust accuracy of the smoothed classifier at each radius, beside its certified accuracy.

    For every selected example (every ``skip``-th, at most ``max_examples``, as ``pipeline.certify`` picks
    them) and every epsilon in ``radii``: SmoothAdv (``smooth_adv``) at epsilon, then PREDICT (n, alpha)
    on the attacked image. Example idx uses the image seed ``derive_seed(seed, idx)``, so at epsilon 0 the
    answer is that of ``certify(..., mode="predict")`` with the same seed.

    Writes into ``output_dir``, atomically: ``attack.tsv`` (columns idx, label, epsilon, distance = the
    attack's l2 norm, predict, correct, time in seconds), ``summary.json`` and ``robustness.png`` (empirical
    and certified accuracy against radius).

    Args:
        model: the smoothed classifier (its sigma is the noise level).
        dataset: indexable; item i is a dict with "pixel_values" [C, H, W] in [0, 1] and "labels" or "label".
        radii: attack radii epsilon (l2, [0, 1] pixels), each >= 0.
        num_noise, steps, step_size: as in ``smooth_adv``.
        n, alpha, batch_size: PREDICT's, as in ``Smoother.predict``; batch_size also bounds the attack's
            forward passes.
        certified: the certification rows of the same examples (a ``certify.tsv`` path or rows with Cohen's
            columns), e.g. from ``pipeline.certify`` with the same ``skip``; the summary then holds their
            certified accuracy at each radius, the gap (empirical - certified) and certificate violations
            (examples certified correct at a radius > epsilon whose attacked image PREDICT gives another class).
        precision: PREDICT's forward-pass precision ("fp32", "bf16", "fp16"; ``Smoother``), recorded in the
            summary's settings; the attack's gradients are taken in float32.

    Returns:
        The summary written to ``summary.json``: per radius (keys ``f"{r:g}"``) ``empirical_accuracy`` and
        ``abstain_rate``, with ``certified`` also ``certified_accuracy``, ``gap`` and ``certificate_violations``.
    """
    if not isinstance(model, SmoothedImageClassifier):
        raise TypeError(f"`model` must be a SmoothedImageClassifier, got {type(model).__name__}")
    if not isinstance(radii, Sequence) or isinstance(radii, str) or not radii:
        raise ValueError(f"`radii` must be a non-empty sequence of floats >= 0 ({RADIUS_UNIT}), got {radii!r}")
    radii = sorted({check_number(r, "radii", minimum=0, unit=RADIUS_UNIT) for r in radii})
    skip, num_noise = check_positive_int(skip, "skip"), check_positive_int(num_noise, "num_noise")
    batch_size = check_positive_int(batch_size, "batch_size")
    max_examples = check_optional_positive_int(max_examples, "max_examples")
    selected = list(range(0, len(dataset), skip))[:max_examples]
    certified_rows = _certified_rows(certified, selected)
    smoother = model.smoother(precision=precision)  # over the merged model: the attack differentiates that function
    device = next(smoother.base_classifier.parameters()).device
    settings = {
        "sigma": model.sigma, "radii": radii, "num_noise": num_noise, "steps": steps, "step_size": step_size,
        "n": n, "alpha": alpha, "precision": precision, "seed": seed, "skip": skip, "max_examples": max_examples,
        "num_dataset_examples": len(dataset),
        "model": {"base_model_name_or_path": model.config.base_model_name_or_path, "method": model.config.peft_method},
    }
    shape = labelled_batch(dataset, selected[:1], model.num_labels, "the attack")[0].shape
    settings["space"] = describe(shape[-2:], shape[1])  # where epsilon and the distances are measured

    rows = []
    group = max(1, batch_size // num_noise)
    for start in tqdm(range(0, len(selected), group), desc="attack", unit="batch"):
        indices = selected[start : start + group]
        pixels, labels = labelled_batch(dataset, indices, model.num_labels, "the attack")
        pixels = pixels.to(device)
        if certified_rows is not None:
            _check_same_labels(certified_rows, indices, labels)
        seeds = [derive_seed(seed, idx) for idx in indices]
        for epsilon in radii:
            tic = time.perf_counter()
            attacked = smooth_adv(
                smoother.base_classifier, pixels, labels, epsilon, sigma=model.sigma, num_noise=num_noise,
                steps=steps, step_size=step_size, batch_size=batch_size, seed=seeds,
            )
            predictions = smoother.predict(attacked, n=n, alpha=alpha, batch_size=batch_size, seed=seeds)
            seconds = (time.perf_counter() - tic) / len(indices)
            distances = (attacked - pixels).flatten(1).norm(dim=1).tolist()
            rows.extend(
                {"idx": i, "label": y, "epsilon": float(epsilon), "distance": d, "predict": p, "correct": int(p == y),
                 "time": seconds}
                for i, y, d, p in zip(indices, labels, distances, predictions)
            )
    rows.sort(key=lambda row: (row["idx"], row["epsilon"]))

    summary = summarize_attack(rows, certified_rows)
    summary["settings"], summary["space"] = settings, settings["space"]
    os.makedirs(output_dir, exist_ok=True)
    write_rows(rows, os.path.join(output_dir, ATTACK_TSV), ATTACK_COLUMNS)
    write_json(summary, os.path.join(output_dir, "summary.json"))
    plot_robustness(summary, os.path.join(output_dir, ROBUSTNESS_PLOT))
    return summary


# ---------------------------------------------------------------------------------------------- helpers


def _check_white_box(model: object) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"`model` must be a torch.nn.Module whose output is differentiable with respect to its input pixels "
            f"(SmoothAdv is a white-box attack), got {type(model).__name__}; a black-box model that only answers "
            "queries cannot be attacked with gradients"
        )


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"`images` must be a float torch.Tensor of pixels in [0, 1], got {type(images).__name__}")
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"`images` must be a non-empty batch [B, C, H, W], got shape {tuple(images.shape)}")
    check_pixel_range(float(images.min()), float(images.max()), "images")
    return images.detach().float().clamp(0, 1)


def _logits(output: Any, batch: int) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != batch:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"`model` must return logits of shape [batch, num_classes] (batch {batch}), got {got}")
    return logits


def _certified_rows(certified: str | os.PathLike | Sequence[dict] | None, selected: list[int]) -> list[dict] | None:
    """The certification rows of the ``selected`` examples, in their order; every one must be there."""
    if certified is None:
        return None
    rows = read_rows(certified) if isinstance(certified, (str, os.PathLike)) else list(certified)
    by_index = {row["idx"]: row for row in rows}
    missing = [idx for idx in selected if idx not in by_index]
    if missing:
        raise ValueError(
            f"`certified` has no row for example indices {missing[:10]} ({len(missing)} of {len(selected)} attacked); "
            "certify the same examples (the same split, `skip` and `max_examples`, or a superset)"
        )
    return [by_index[idx] for idx in selected]


def _check_same_labels(certified_rows: list[dict], indices: list[int], labels: list[int]) -> None:
    certified_labels = {row["idx"]: row["label"] for row in certified_rows}
    differing = [idx for idx, label in zip(indices, labels) if certified_labels[idx] != label]
    if differing:
        raise ValueError(
            f"`certified` gives other labels than the dataset for example indices {differing[:10]}: it certified "
            "another dataset or split"
        )
