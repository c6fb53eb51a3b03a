"""Randomized smoothing: Cohen, Rosenfeld and Kolter's PREDICT and CERTIFY (ICML 2019).

The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), for any base classifier f
that maps a [B, C, H, W] batch of pixels (in [0, 1]; noisy pixels are passed unclipped) to [B, K]
logits. The noise lives in pixel space, so radii are l2 distances between [0, 1] images.

Where this improves on Cohen's ``core.py``: noise is seeded per (seed, example, phase, chunk) so results
do not depend on the batch size (``smoothing_hf.noise``); several images share a forward batch when n0
or n is small; counting is one ``torch.bincount`` per batch; the statistics are vectorized over images.
The sample-efficient modes (one radius, several radii, an adaptive radius) are in ``sequential.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch

from ..checks import check_alpha, check_number, check_pixel_range, check_positive_int, check_sigma
from ..noise import Phase, bound_uniforms, chunk_sizes, image_seeds, noisy_batches
from . import sequential
from .certificates import (
    Certificate,
    RadiiDecision,
    RadiusDecision,
    certificates_from_counts,
    check_radii_to_test,
    predictions_from_counts,
)
from .confidence import (
    DEFAULT_ADAPTIVE_CONFIDENCE,
    DEFAULT_CONFIDENCE,
    TWO_STAGE,
    ConfidenceSequence,
    check_confidence,
    check_futility,
    confidence_sequence,
)
from .forward import BaseForward, eval_mode
from .two_stage import certify_two_stage, check_two_stage_budget


class Smoother:
    """The smoothed version of ``base_classifier`` at noise level ``sigma``.

    Args:
        base_classifier: a ``torch.nn.Module`` or callable mapping a [B, C, H, W] float batch of pixels to
            [B, num_classes] logits (an output with a ``logits`` attribute, such as transformers'
            ``ImageClassifierOutput``, is accepted too). Noisy pixels reach it unclipped.
        num_classes: K, the number of classes (>= 2).
        sigma: noise standard deviation in [0, 1] pixel units.
        num_channels: if given, images must have this many channels.
        device: where noise is drawn and the classifier runs; by default the device of the module's first
            parameter, else the device of the input.
        precision, channels_last, compile: how the forward pass runs (``forward.BaseForward``): "fp32"
            (default), "bf16" or "fp16" autocast; channels-last memory format; ``torch.compile``. Noise is
            drawn and added in float32 whatever the precision.
    """

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        num_channels: int | None = None,
        device: torch.device | str | None = None,
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        if not callable(base_classifier):
            raise TypeError(
                f"`base_classifier` must be a torch.nn.Module or callable, got {type(base_classifier).__name__}"
            )
        if check_positive_int(num_classes, "num_classes") < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        self.base_classifier = base_classifier
        self.num_classes = int(num_classes)
        self.sigma = check_sigma(sigma)
        self.num_channels = None if num_channels is None else check_positive_int(num_channels, "num_channels")
        self.device = torch.device(device) if device is not None else None
        parameter = next(base_classifier.parameters(), None) if isinstance(base_classifier, torch.nn.Module) else None
        self.forward = BaseForward(
            base_classifier, self.num_classes, precision=precision, channels_last=channels_last, compile=compile,
            device=self.device if self.device is not None else getattr(parameter, "device", None),
        )

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int, seed: int | Sequence[int] = 0
    ) -> int | list[int]:
        """Cohen's PREDICT: the smoothed classifier's class for ``x``, or ``ABSTAIN``.

        Draws ``n`` noisy samples, takes the two most frequent classes (counts nA >= nB) and abstains unless
        a two-sided binomial test of nA successes in nA + nB trials at p = 0.5 has p-value <= ``alpha``.
        With probability at least 1 - alpha, a returned class is the smoothed classifier's prediction.

        Args:
            x: one image [C, H, W] or a batch [B, C, H, W], pixels in [0, 1].
            n: noisy samples per image.
            alpha: error probability, in (0, 1).
            batch_size: noisy samples per forward pass.
            seed: noise seed. A batch with an int seed gives image i the seed ``derive_seed(seed, i)``;
                a sequence gives one seed per image.

        Returns:
            The class index or ``ABSTAIN`` for one image; a list of them for a batch.
        """
        n, batch_size = check_positive_int(n, "n"), check_positive_int(batch_size, "batch_size")
        alpha = check_alpha(alpha)
        images, seeds, single = self.prepare(x, seed)
        if n < math.log2(2 / alpha):
            warnings.warn(
                f"n={n} is too small for alpha={alpha}: PREDICT abstains on every input unless n >= log2(2 / alpha) = "
                f"{math.log2(2 / alpha):.1f}",
                stacklevel=2,
            )
        counts = self.sample_counts(images, seeds, Phase.PREDICTION, n, batch_size)
        predictions = predictions_from_counts(counts, alpha)
        return predictions[0] if single else predictions

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        seed: int | Sequence[int] = 0,
        *,
        tolerance: float | None = None,
        growth: float = 4.0,
        confidence: str = DEFAULT_ADAPTIVE_CONFIDENCE,
        bound_seed: int | None = None,
    ) -> Certificate | list[Certificate]:
        """Cohen's CERTIFY: a class and an l2 radius within which the smoothed classifier is constant.

        ``n0`` selection draws choose the top class cA; ``n`` independent estimation draws count nA for cA;
        pA_lower is the one-sided (1 - alpha) Clopper-Pearson lower bound of nA / n. If pA_lower < 1/2 the
        answer is ``ABSTAIN`` with radius 0.0, else (cA, sigma * Phi^-1(pA_lower)). With probability at least
        1 - alpha over the noise, a non-abstaining certificate is correct: g(x + delta) = cA for all
        ||delta||_2 < radius.

        Args:
            x: one image [C, H, W] or a batch [B, C, H, W], pixels in [0, 1].
            n0: selection samples per image.
            n: estimation samples per image.
            alpha: error probability, in (0, 1).
            batch_size: noisy samples per forward pass; images are packed together when n0 or n is smaller.
            seed: noise seed, as in ``predict``.
            tolerance: None (the default) for Cohen's fixed n. A finite radius > 0 (l2, [0, 1] pixels) makes the
                sampling adaptive with ``n`` as its budget: pA_lower is the largest lower bound of the
                ``confidence`` sequence seen so far, and an image stops once looking further would raise its
                radius by less than ``tolerance`` (``sequential.certify_adaptive``). The (1 - alpha)
                guarantee is the same; ``Certificate.samples`` counts the draws made.
            growth: how far ahead the adaptive stopping rule looks (and, for "bonferroni", the factor between
                its round sizes; finite, > 1).
            confidence: the adaptive mode's bound (``ADAPTIVE_CONFIDENCES``): "two_stage", the default (a pilot
                picks each image's n, then Clopper-Pearson on fresh draws), or a sequence, "betting" or "bonferroni".
            bound_seed: None (the default) for the classical Clopper-Pearson bound; an int seed for the randomized
                one (never lower), its uniform for each image drawn from (bound_seed, the image's noise seed)
                (``noise.bound_uniforms``): fixed n and "two_stage" only.

        Returns:
            A ``Certificate`` for one image; a list of them for a batch.
        """
        n0, n = check_positive_int(n0, "n0"), check_positive_int(n, "n")
        alpha, batch_size = check_alpha(alpha), check_positive_int(batch_size, "batch_size")
        confidence = check_confidence(confidence, needs_bounds=True)  # checked even where unused, as is growth
        growth = check_number(growth, "growth", minimum=1, strict_minimum=True)
        if tolerance is not None:
            tolerance = check_number(
                tolerance, "tolerance", minimum=0, strict_minimum=True, unit="a radius: l2, pixels in [0, 1]"
            )
            if confidence == TWO_STAGE:
                check_two_stage_budget(n)
            elif bound_seed is not None:
                raise ValueError(f"`bound_seed` applies to fixed n and confidence={TWO_STAGE!r}, got {confidence!r}")
        images, seeds, single = self.prepare(x, seed)
        uniforms = bound_uniforms(bound_seed, seeds)
        if tolerance is not None:
            if confidence == TWO_STAGE:
                rule = partial(certify_two_stage, n=n, alpha=alpha, uniforms=uniforms)
            else:
                rule = partial(sequential.certify_adaptive, sequence=confidence_sequence(confidence, alpha, n, growth))
            certificates = rule(
                self.chunk_counts, self.sigma, images, seeds, n0=n0, batch_size=batch_size, tolerance=tolerance
            )
            return certificates[0] if single else certificates
        if n <= math.log2(1 / alpha):
            warnings.warn(
                f"n={n} is too small for alpha={alpha}: CERTIFY abstains on every input unless n > log2(1 / alpha) = "
                f"{math.log2(1 / alpha):.1f}",
                stacklevel=2,
            )
        selection = self.sample_counts(images, seeds, Phase.SELECTION, n0, batch_size)
        estimation = self.sample_counts(images, seeds, Phase.ESTIMATION, n, batch_size)
        certificates = certificates_from_counts(selection, estimation, alpha, self.sigma, uniforms)
        return certificates[0] if single else certificates

    def certify_at_radii(
        self,
        x: torch.Tensor,
        radii: Sequence[float],
        *,
        n0: int,
        max_n: int,
        alpha: float,
        batch_size: int,
        seed: int | Sequence[int] = 0,
        growth: float = 4.0,
        confidence: str = DEFAULT_CONFIDENCE,
        futility: float | None = None,
    ) -> RadiiDecision | list[RadiiDecision]:
        """Decide at several l2 radii at once whether the smoothed classifier is certifiably robust, with few
        samples: the paper's table (certified accuracy at r = 0, 0.25, ...) without fixed n = 100,000.

        ``n0`` selection draws choose cA as in ``certify``. Estimation draws then continue one noise stream per
        image (the draws ``certify`` makes with ``n = max_n``), and one ``confidence`` sequence for p_A serves
        every threshold p*_j = Phi(r_j / sigma): the image stops once no threshold is undecided (each is below
        the lower bound, certified, or above the upper bound, not certified, as is every threshold above one
        not certified), or at ``max_n``. With probability
        at least 1 - alpha, every True of an image is right at once: cA is the smoothed classifier's class and
        p_A >= Phi(r_j / sigma). ``prediction`` is cA where p_A > 1/2 was established, else ABSTAIN.

        Args:
            x: one image [C, H, W] or a batch [B, C, H, W], pixels in [0, 1].
            radii: l2 radii in [0, 1] pixel units, finite, >= 0, distinct, in any order (``certified`` follows it).
            n0: selection samples per image.
            max_n: most estimation samples per image (>= n0).
            alpha: error probability, in (0, 1).
            batch_size: noisy samples per forward pass; images at different stages share them.
            seed: noise seed, as in ``predict``.
            growth: the factor between round sizes of the "bonferroni" sequence (finite, > 1).
            confidence: "betting" (read after every 128 draws), "bonferroni" (Clopper-Pearson at alpha / K
                after each of K geometric rounds) or "one_sided" (a test per threshold, every 128 draws);
                ``confidence.CONFIDENCE_SEQUENCES``.
            futility: None (the default) samples every image until each threshold is decided or max_n. A level
                in (0, 1) also gives up on a threshold once certifying it by max_n is out of reach: all draws
                left cannot make it, or the one-sided (1 - futility) upper bound of p_A is under the share of
                cA that the test needs at max_n. Giving up never certifies, so the alpha guarantee is
                untouched; it may lose a True that max_n draws would have given (0.05 measured 10x fewer
                samples than fixed-n CERTIFY with the same decisions as None, ``benchmarks/sample_efficiency.py``).

        Returns:
            A ``RadiiDecision`` for one image; a list of them for a batch.
        """
        radii = check_radii_to_test(radii)
        n0, max_n, alpha, batch_size, sequence = _sequential_settings(n0, max_n, alpha, batch_size, growth, confidence)
        futility = check_futility(futility)
        images, seeds, single = self.prepare(x, seed)
        decisions = sequential.certify_at_radii(
            self.chunk_counts, self.sigma, images, seeds, radii, n0=n0, batch_size=batch_size, sequence=sequence,
            futility=futility,
        )
        return decisions[0] if single else decisions

    def certify_at_radius(
        self,
        x: torch.Tensor,
        radius: float,
        *,
        n0: int,
        max_n: int,
        alpha: float,
        batch_size: int,
        seed: int | Sequence[int] = 0,
        growth: float = 4.0,
        confidence: str = DEFAULT_CONFIDENCE,
        futility: float | None = None,
    ) -> RadiusDecision | list[RadiusDecision]:
        """``certify_at_radii`` at one l2 ``radius`` (finite, >= 0, [0, 1] pixel units): ``certified`` is True
        with probability at most alpha when p_A < Phi(radius / sigma) or cA is not the smoothed classifier's
        class. The arguments are those of ``certify_at_radii``.

        Returns:
            A ``RadiusDecision`` for one image; a list of them for a batch.
        """
        radius = check_number(radius, "radius", minimum=0, unit="l2, pixels in [0, 1]")
        n0, max_n, alpha, batch_size, sequence = _sequential_settings(n0, max_n, alpha, batch_size, growth, confidence)
        futility = check_futility(futility)
        images, seeds, single = self.prepare(x, seed)
        decisions = sequential.certify_at_radius(
            self.chunk_counts, self.sigma, images, seeds, radius, n0=n0, batch_size=batch_size, sequence=sequence,
            futility=futility,
        )
        return decisions[0] if single else decisions

    def sample_counts(
        self,
        images: torch.Tensor,
        seeds: Sequence[int],
        phase: Phase,
        num_samples: int,
        batch_size: int,
        chunks: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Class counts of the base classifier on ``num_samples`` noisy copies of each image.

        Args:
            images: [B, C, H, W] clean pixels on the sampling device (already checked).
            seeds: one noise-stream seed per image.
            phase: which of the image's independent streams to draw.
            num_samples: length of each image's stream.
            batch_size: noisy samples per forward pass.
            chunks: if given, only these chunk indices of each stream are drawn (sample-parallel work
                split); counts from disjoint chunk sets add up to the full counts.

        Returns:
            int64 array [B, num_classes].
        """
        chunk_ids = range(len(chunk_sizes(num_samples))) if chunks is None else chunks
        per_chunk = self.chunk_counts(images, seeds, phase, num_samples, batch_size, [chunk_ids] * len(images))
        return np.stack([counts.sum(axis=0) for counts in per_chunk])

    def chunk_counts(
        self,
        images: torch.Tensor,
        seeds: Sequence[int],
        phase: Phase,
        num_samples: int,
        batch_size: int,
        chunks: Sequence[Sequence[int]],
    ) -> list[np.ndarray]:
        """Class counts of each drawn chunk: ``chunks[i]`` are the chunk indices of image i's stream (of length
        ``num_samples``) to draw; image i gets an int64 array [len(chunks[i]), num_classes]. All images'
        chunks share forward batches of at most ``batch_size`` samples; one host sync at the end."""
        sizes = chunk_sizes(num_samples)
        work = [(owner, seeds[owner], c, sizes[c]) for owner in range(len(images)) for c in chunks[owner]]
        num_cells = len(work) * self.num_classes
        counts = torch.zeros(num_cells, dtype=torch.long, device=images.device)
        if work:
            with torch.inference_mode(), eval_mode(self.base_classifier):
                for noisy, items in noisy_batches(images, work, phase, batch_size, self.sigma):
                    predictions = self.forward(noisy, batch_size).argmax(dim=1)
                    counts += torch.bincount(items * self.num_classes + predictions, minlength=num_cells)
        counts = counts.view(len(work), self.num_classes).cpu().numpy()
        ends = np.cumsum([len(c) for c in chunks])
        return np.split(counts, ends[:-1])

    def prepare(self, x: torch.Tensor, seed: int | Sequence[int]) -> tuple[torch.Tensor, list[int], bool]:
        """Check ``x`` (pixels in [0, 1], [C, H, W] or [B, C, H, W]) and ``seed`` (``noise.image_seeds``); return the
        float [B, C, H, W] batch on the model's device, the per-image seeds, and whether ``x`` was a single image."""
        images = self.check_images(x)
        single = x.dim() == 3
        seeds = image_seeds(seed, len(images), single)
        return images.to(device=self._device(images), dtype=torch.float32), seeds, single

    def check_images(self, x: torch.Tensor) -> torch.Tensor:
        """Check that ``x`` is one image [C, H, W] or a batch [B, C, H, W] of finite pixels in [0, 1], with
        C, H and W >= 1; return it as a float [B, C, H, W] batch. An empty batch (B = 0) is an error, as in
        the dataset pipeline: there is nothing to certify, and an empty answer would hide a selection gone
        wrong."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a torch.Tensor of pixels in [0, 1], got {type(x).__name__}")
        if x.dim() not in (3, 4):
            raise ValueError(f"`x` must be one image [C, H, W] or a batch [B, C, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"`x` must be a float tensor of pixels in [0, 1], got dtype {x.dtype}")
        images = x.unsqueeze(0) if x.dim() == 3 else x
        if len(images) == 0:
            raise ValueError(f"`x` must hold at least one image, got an empty batch of shape {tuple(x.shape)}")
        if images.numel() == 0:
            raise ValueError(
                f"`x` must have channels, height and width >= 1 ([C, H, W] or [B, C, H, W]), got shape {tuple(x.shape)}"
            )
        if self.num_channels is not None and images.shape[1] != self.num_channels:
            raise ValueError(
                f"`x` must have {self.num_channels} channels (shape [B, {self.num_channels}, H, W]), got shape "
                f"{tuple(x.shape)}"
            )
        if torch.isnan(images).any():
            raise ValueError("`x` contains NaN pixels")
        check_pixel_range(images.min().item(), images.max().item(), "x")
        return images

    def _device(self, images: torch.Tensor) -> torch.device:
        if self.device is not None:
            return self.device
        if isinstance(self.base_classifier, torch.nn.Module):
            parameter = next(self.base_classifier.parameters(), None)
            if parameter is not None:
                return parameter.device
        return images.device


def _sequential_settings(
    n0: int, max_n: int, alpha: float, batch_size: int, growth: float, confidence: str
) -> tuple[int, int, float, int, ConfidenceSequence]:
    n0, max_n = check_positive_int(n0, "n0"), check_positive_int(max_n, "max_n")
    if max_n < n0:
        raise ValueError(f"`max_n` must be >= n0 = {n0}, got {max_n}")
    alpha, batch_size = check_alpha(alpha), check_positive_int(batch_size, "batch_size")
    return n0, max_n, alpha, batch_size, confidence_sequence(confidence, alpha, max_n, growth)
