"""Reproducible Gaussian noise in pixel space (DESIGN.md contract 3).

Every noisy sample is drawn from a generator whose seed is a function of (seed, example, phase, chunk)
alone. The samples of one image in one phase (selection, estimation, prediction) form a stream cut into
chunks of ``NOISE_CHUNK_SIZE`` samples; chunk ``c`` is drawn by its own generator. A certificate therefore
does not depend on the batch size, on which other images share a forward batch, or on how many
processes share the chunks. Numbers are reproducible on the same device type (CPU and CUDA generators
differ).

Seeds are mixed with ``numpy.random.SeedSequence`` so that nearby integers give unrelated streams.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

NOISE_CHUNK_SIZE = 128
"""Samples per independently seeded noise chunk. Part of the reproducibility contract: changing it
changes every certificate."""


class Phase(enum.IntEnum):
    """The independent noise streams of one image."""

    SELECTION = 0  # CERTIFY's n0 draws that choose the top class
    ESTIMATION = 1  # CERTIFY's n fresh draws that bound its probability
    PREDICTION = 2  # PREDICT's n draws


def check_seed(seed: int, name: str = "seed") -> int:
    """Return ``seed`` if it is a non-negative Python int, else raise ``TypeError``/``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`{name}` must be a non-negative int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"`{name}` must be a non-negative int, got {seed}")
    return int(seed)


def derive_seed(*entropy: int) -> int:
    """A 64-bit seed that is a well-mixed function of the non-negative ints ``entropy``.

    ``derive_seed(seed, i)`` is the seed of example ``i`` of a batch (or dataset) certified with ``seed``.
    """
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0])


def chunk_sizes(num_samples: int) -> list[int]:
    """Sizes of the noise chunks that make up a stream of ``num_samples`` samples."""
    full, rest = divmod(num_samples, NOISE_CHUNK_SIZE)
    return [NOISE_CHUNK_SIZE] * full + ([rest] if rest else [])


def noise_chunk(
    stream_seed: int,
    phase: Phase,
    chunk: int,
    size: int,
    shape: tuple[int, ...],
    sigma: float,
    device: torch.device,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Chunk ``chunk`` of the noise stream (``stream_seed``, ``phase``): ``size`` draws of N(0, sigma^2 I).

    Returns a tensor [size, *shape] on ``device`` (written into ``out`` when given, which must have that
    shape). The values depend only on the arguments and the device type.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(stream_seed, int(phase), chunk))
    if out is None:
        out = torch.empty((size, *shape), device=device)
    return out.normal_(0.0, sigma, generator=generator)
