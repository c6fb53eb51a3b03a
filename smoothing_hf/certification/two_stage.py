"""The two-stage adaptive radius: a pilot chooses each image's sample size, and fresh draws bound p_A at that n.

A confidence sequence (``confidence.py``) pays for being read at every look: its bound at the stopping time
is looser than the exact Clopper-Pearson bound at the same count (a union bound over K looks, or about
0.5 log(pi t) nats of a mixture). Cohen's CERTIFY already splits its draws in two (n0 choose the class, n
fresh ones bound it); the two-stage rule carries the split one step on, so the bound is Clopper-Pearson's at
the whole alpha again:

1. pilot: the first ``pilot_size(n)`` estimation draws give a share of cA, (k + 1/2) / (m + 1);
2. at that share it predicts the Clopper-Pearson radius for every size on the chunk grid up to the n - m
   draws left, and takes the smallest size whose predicted radius is within ``tolerance`` of the largest;
   where the largest names the class, the size must name it too even at a cautious share, the pilot's
   (1 - ``CAUTION``) lower bound (from abstaining to a class is no small gain, and a size that names it only
   at the point estimate loses it on half the images);
3. the next draws of the stream, as many as chosen, give pA_lower by exact one-sided Clopper-Pearson at alpha
   (or its randomized form, given one uniform per image).

The size depends on the pilot draws alone, and those are independent of the fresh ones, so given the size the
bound holds with probability >= 1 - alpha: the certificate has CERTIFY's guarantee. Measured against the
sequences (``benchmarks/sample_efficiency.py``), it loses less radius at the same savings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..noise import NOISE_CHUNK_SIZE, Phase, chunk_sizes
from .bounds import clopper_pearson_lower, lower_bound, radius_from_bound
from .certificates import ABSTAIN, Certificate
from .confidence import TWO_STAGE
from .sequential import ChunkSampler, select_top_class

PILOT_SHARE = 0.005
"""The share of the budget n the pilot draws: 512 of n = 100,000 (on the benchmark, pilots of 128 to 1,024 draws
traded samples for radius alike)."""
CAUTION = 0.1
"""The level of the pilot's lower bound at which a chosen size must still name the class (see step 2)."""


def pilot_size(n: int) -> int:
    """Pilot draws for a budget of ``n`` estimation draws: ``PILOT_SHARE`` of it in whole noise chunks (128
    draws), at least one chunk."""
    chunks = max(1, math.ceil(n * PILOT_SHARE / NOISE_CHUNK_SIZE))
    return chunks * NOISE_CHUNK_SIZE


def check_two_stage_budget(n: int, name: str = "n") -> int:
    """``n`` if it leaves fresh draws after its pilot (n > ``pilot_size(n)``)."""
    if n <= pilot_size(n):
        raise ValueError(
            f"`{name}` must be > {pilot_size(n)} for confidence={TWO_STAGE!r}: its pilot draws {pilot_size(n)} "
            f"and the bound needs fresh draws after them; got {name}={n}"
        )
    return n


def certify_two_stage(
    sample_chunks: ChunkSampler, sigma: float, images: torch.Tensor, seeds: Sequence[int], *,
    n0: int, n: int, alpha: float, batch_size: int, tolerance: float, uniforms: np.ndarray | None = None,
) -> list[Certificate]:
    """``Smoother.certify(..., tolerance=t, confidence="two_stage")`` on checked inputs (the module docstring;
    ``check_two_stage_budget`` passed).
    ``Certificate.count`` is cA's count among the fresh draws; ``samples`` is n0 + pilot + fresh draws. The
    draws are chunks of each image's estimation stream of length n, so they depend neither on the other images
    nor on the batch size. ``uniforms`` (one per image) make the bound randomized Clopper-Pearson."""
    everyone = len(images)
    top, selection = select_top_class(sample_chunks, images, seeds, n0, batch_size)
    pilot_draws = pilot_size(n)
    pilot_chunks = pilot_draws // NOISE_CHUNK_SIZE
    pilot = np.array([c[:, top[i]].sum() for i, c in enumerate(sample_chunks(
        images, seeds, Phase.ESTIMATION, n, batch_size, [range(pilot_chunks)] * everyone
    ))])
    share = (pilot + 0.5) / (pilot_draws + 1)
    cautious = clopper_pearson_lower(pilot, pilot_draws, CAUTION)
    sizes = np.cumsum(chunk_sizes(n)[pilot_chunks:])  # fresh draws after each further chunk
    predicted = clopper_pearson_lower(share[:, None] * sizes, sizes[None, :], alpha)  # [B, sizes]
    radii = radius_from_bound(predicted, sigma)
    names_class = clopper_pearson_lower(cautious[:, None] * sizes, sizes[None, :], alpha) >= 0.5
    enough = (radii >= radii[:, -1:] - tolerance) & (names_class | (predicted[:, -1:] < 0.5))
    enough[:, -1] = True  # all the draws left
    fresh_chunks = enough.argmax(axis=1) + 1
    fresh = sample_chunks(
        images, seeds, Phase.ESTIMATION, n, batch_size,
        [range(pilot_chunks, pilot_chunks + int(c)) for c in fresh_chunks],
    )
    counts = np.array([c[:, top[i]].sum() for i, c in enumerate(fresh)])
    trials = sizes[fresh_chunks - 1]
    pa_lower = lower_bound(counts, trials, alpha, uniforms)
    radius = radius_from_bound(pa_lower, sigma)
    return [
        Certificate(
            prediction=int(top[i]) if pa_lower[i] >= 0.5 else ABSTAIN, radius=float(radius[i]),
            pa_lower=float(pa_lower[i]), count=int(counts[i]), selection_count=int(selection[i, top[i]]),
            samples=int(n0 + pilot_draws + trials[i]),
        )
        for i in range(everyone)
    ]
