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
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .checks import check_pixel_range, check_positive_int, check_seed, check_sigma

NOISE_CHUNK_SIZE = 128
"""Samples per independently seeded noise chunk. Part of the reproducibility contract: changing it
changes every certificate."""


class Phase(enum.IntEnum):
    """The independent noise streams of one image."""

    SELECTION = 0  # CERTIFY's n0 draws that choose the top class
    ESTIMATION = 1  # CERTIFY's n fresh draws that bound its probability
    PREDICTION = 2  # PREDICT's n draws
    BOUND = 3  # not noise: the uniform of the randomized Clopper-Pearson bound (``bound_uniforms``)


def derive_seed(*entropy: int) -> int:
    """A 64-bit seed that is a well-mixed function of the non-negative ints ``entropy``.

    ``derive_seed(seed, i)`` is the seed of example ``i`` of a batch (or dataset) certified with ``seed``.
    """
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0])


def image_seeds(seed: int | Sequence[int], count: int, single: bool = False) -> list[int]:
    """The noise-stream seed of each of ``count`` images certified with ``seed``: a single image (``single``, a
    [C, H, W] input) gets ``seed`` itself, image i of a batch ``derive_seed(seed, i)``; a sequence is one seed per
    image, checked. The one rule of the smoother, the pipeline and the attacks."""
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        seeds = [check_seed(s, f"seed[{i}]") for i, s in enumerate(seed)]
        if len(seeds) != count:
            raise ValueError(f"`seed` must be an int or one int per image ({count}), got {len(seeds)} seeds")
        return seeds
    seed = check_seed(seed, "seed")
    return [seed] if single else [derive_seed(seed, i) for i in range(count)]


def bound_uniforms(bound_seed: int | None, seeds: Sequence[int]) -> np.ndarray | None:
    """One uniform in [0, 1) per image for the randomized Clopper-Pearson bound: image i's from (``bound_seed``,
    its noise-stream seed ``seeds[i]``), so it is independent of every noise stream and of the batch: float64 [B].
    None (the classical bound) where ``bound_seed`` is None."""
    if bound_seed is None:
        return None
    bound_seed = check_seed(bound_seed, "bound_seed")
    return np.array([np.random.default_rng([bound_seed, s, int(Phase.BOUND)]).random() for s in seeds])


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


def noisy_batches(
    images: torch.Tensor, work: list[tuple[int, int, int, int]], phase: Phase, batch_size: int, sigma: float
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (noisy [b, C, H, W], work item index [b]) forward batches of at most ``batch_size`` samples.

    ``work`` lists items (image index into ``images`` [B, C, H, W], stream seed, chunk index, chunk size);
    each chunk is drawn by ``noise_chunk`` straight into a reused batch buffer (split across two batches
    when it straddles a boundary), so the draws are the same whatever the batch size and the packing.
    The buffer is reused: consume each batch before asking for the next.
    """
    shape = tuple(images.shape[1:])
    device = images.device
    buffer = torch.empty((min(batch_size, sum(w[3] for w in work)), *shape), device=device)
    pieces: list[tuple[int, int]] = []  # (work item, samples of it) in buffer order
    filled = 0
    for item, (owner, seed, chunk, size) in enumerate(work):
        if size <= len(buffer) - filled:  # common case: draw the chunk straight into the batch buffer
            chunk_view = buffer[filled : filled + size]
            noise_chunk(seed, phase, chunk, size, shape, sigma, device, out=chunk_view).add_(images[owner])
            pieces.append((item, size))
            filled += size
        else:  # the chunk straddles a batch boundary: draw it whole, copy it in pieces
            noise = noise_chunk(seed, phase, chunk, size, shape, sigma, device)
            start = 0
            while start < size:
                take = min(size - start, len(buffer) - filled)
                torch.add(noise[start : start + take], images[owner], out=buffer[filled : filled + take])
                pieces.append((item, take))
                filled += take
                start += take
                if filled == len(buffer) and start < size:
                    yield buffer, _expand(pieces, device)
                    pieces, filled = [], 0
        if filled == len(buffer):
            yield buffer, _expand(pieces, device)
            pieces, filled = [], 0
    if filled:
        yield buffer[:filled], _expand(pieces, device)


def _expand(pieces: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Expand (work item, count) runs into one work item index per sample."""
    items, counts = zip(*pieces)
    return torch.repeat_interleave(torch.tensor(items, device=device), torch.tensor(counts, device=device))


class NoiseCollator:
    """Data collator for training under Gaussian noise: stacks examples and adds N(0, sigma^2 I) in pixel space.

    Each example is a dict with ``"pixel_values"`` (float [C, H, W], pixels in [0, 1], un-normalized) and
    ``"labels"`` or ``"label"`` (int). The batch is ``{"pixel_values": [B * m, C, H, W], "labels": [B * m]}``
    with m = ``num_noise_samples`` noisy copies per example, the copies of example i contiguous (rows
    i * m .. i * m + m - 1) and its label repeated alongside. The noise is exact: noisy pixels are not
    clipped (DESIGN.md contract 1). Examples without labels (all of them) give a batch without ``"labels"``.

    Reproducible: one ``torch.Generator`` seeded with ``seed`` draws the noise, so the same sequence of
    batches gets the same noise; ``reset()`` starts the stream again (the trainer resets its evaluation
    collator before every evaluation). In a ``DataLoader`` worker process the generator is reseeded from
    (``seed``, the worker's seed), so workers do not repeat each other's noise and each epoch differs; with
    ``deterministic=True`` it is reseeded from (``seed``, worker id) instead, so that every pass over the
    data after ``reset()`` draws the same noise, with or without workers (persistent workers excepted: they
    do not see ``reset()``).

    Args:
        sigma: noise standard deviation in [0, 1] pixel units.
        num_noise_samples: noisy copies of each example (m >= 1).
        seed: seed of the noise stream (>= 0).
        deterministic: the same noise on every pass (evaluation) rather than fresh noise (training).
    """

    def __init__(self, sigma: float, num_noise_samples: int = 1, seed: int = 0, *, deterministic: bool = False) -> None:
        self.sigma = check_sigma(sigma)
        self.num_noise_samples = check_positive_int(num_noise_samples, "num_noise_samples")
        self.seed = check_seed(seed, "seed")
        self.deterministic = bool(deterministic)
        self.reset()

    def reset(self) -> None:
        """Start the noise stream again from ``seed``."""
        self._generator: torch.Generator | None = None
        self._stream: int | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma={self.sigma}, num_noise_samples={self.num_noise_samples}, seed={self.seed}, "
            f"deterministic={self.deterministic})"
        )

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        clean = self._stack_pixels(examples)
        labels = self._labels(examples)
        m = self.num_noise_samples
        noisy = clean.repeat_interleave(m, dim=0) if m > 1 else clean.clone()
        noise = torch.empty_like(noisy).normal_(0.0, self.sigma, generator=self._current_generator())
        batch = {"pixel_values": noisy.add_(noise)}
        if labels is not None:
            batch["labels"] = labels.repeat_interleave(m)
        return batch

    def _current_generator(self) -> torch.Generator:
        """The generator of this process: seeded from ``seed`` in the main process, from (``seed``, worker) in
        a DataLoader worker (whose copy of this collator would otherwise repeat the main stream)."""
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            stream, seed = -1, self.seed
        else:
            stream = worker.id if self.deterministic else worker.seed
            seed = derive_seed(self.seed, stream % 2**63)
        if self._generator is None or stream != self._stream:
            self._generator = torch.Generator().manual_seed(seed)
            self._stream = stream
        return self._generator

    @staticmethod
    def _stack_pixels(examples: list[dict]) -> torch.Tensor:
        if not isinstance(examples, (list, tuple)) or not examples:
            raise ValueError("the collator needs a non-empty list of examples")
        try:
            pixels = [torch.as_tensor(example["pixel_values"]) for example in examples]
        except KeyError:
            raise KeyError(
                "each example must have 'pixel_values' (float [C, H, W] in [0, 1]); with `datasets`, produce it with "
                "`set_transform`/`with_transform` (e.g. the model's `image_transform()`)"
            ) from None
        shapes = {tuple(p.shape) for p in pixels}
        if len(shapes) > 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"'pixel_values' must be [C, H, W] images of one shape, got shapes {sorted(shapes)}")
        if not all(p.is_floating_point() for p in pixels):
            raise TypeError("'pixel_values' must be float pixels in [0, 1] (rescale 0-255 images by 1/255)")
        clean = torch.stack(pixels).float()
        check_pixel_range(clean.min().item(), clean.max().item(), "pixel_values")
        return clean

    @staticmethod
    def _labels(examples: list[dict]) -> torch.Tensor | None:
        keys = ["labels" if "labels" in e else "label" if "label" in e else None for e in examples]
        if all(key is None for key in keys):
            return None
        if any(key is None for key in keys):
            raise ValueError("either every example or none must have 'labels' (or 'label')")
        labels = torch.as_tensor([int(e[key]) for e, key in zip(examples, keys)], dtype=torch.long)
        return labels
