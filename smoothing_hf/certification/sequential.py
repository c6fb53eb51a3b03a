"""Sample-efficient certification: sequential tests with the (1 - alpha) guarantee kept.

After the n0 selection draws choose cA, estimation draws continue each image's noise stream and a
confidence sequence for p_A (``confidence.py``) is read at its checkpoints; a mode's stop rule looks at the
bounds and says when an image is decided. The bounds hold at all checkpoints at once with probability
>= 1 - alpha, so every decision keeps the guarantee of Cohen's fixed-n CERTIFY whenever it is taken.

Three modes share one scheduler (``estimate_sequentially``):

- ``certify_at_radius``: is p_A >= Phi(r / sigma) at one radius r;
- ``certify_at_radii``: the same at several radii from one sequence: an image stops once every threshold is
  decided (its interval straddles none of them), or, with a ``futility`` level, given up as out of reach;
- ``certify_adaptive``: Cohen's radius from the largest lower bound seen, stopping once looking further
  would raise the radius by less than a tolerance.

The scheduler keeps forward batches full: every step gives each undecided image the draws up to its next
checkpoint, and when that is less than a whole batch it hands the rest out as draws beyond the next
checkpoint (images of different stages packed into one batch). Decisions are then read checkpoint by
checkpoint; an image's draws past the checkpoint where it stopped are discarded. So the answers and the
``samples`` counted are functions of each image's noise stream alone, whatever the batch size; only the
wall time depends on the packing.

The functions take the chunk sampler of a ``Smoother`` (``Smoother.chunk_counts``) and checked inputs;
``Smoother.certify_at_radius``, ``certify_at_radii`` and ``certify(..., tolerance=...)`` are their public form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..noise import NOISE_CHUNK_SIZE, Phase, chunk_sizes
from .bounds import clopper_pearson_upper, radius_from_bound, radius_threshold
from .certificates import ABSTAIN, Certificate, RadiiDecision, RadiusDecision
from .confidence import ConfidenceSequence

ChunkSampler = Callable[..., list]
"""``Smoother.chunk_counts(images, seeds, phase, num_samples, batch_size, chunks)``: per image, [len(chunks_i), K]
class counts of the given chunks of its stream."""
StopRule = Callable[[np.ndarray, np.ndarray, int, bool], np.ndarray]
"""``stop(image indices, their top-class counts, draws so far, is the last checkpoint)``: which are decided."""


def certify_at_radii(
    sample_chunks: ChunkSampler, sigma: float, images: torch.Tensor, seeds: Sequence[int], radii: Sequence[float],
    *, n0: int, batch_size: int, sequence: ConfidenceSequence, futility: float | None = None,
) -> list[RadiiDecision]:
    """``Smoother.certify_at_radii`` on checked inputs: at each checkpoint, a threshold p*_j = Phi(r_j / sigma)
    passes once the lower bound reaches it (or its one-sided test passes) and is refuted once the upper bound is
    under it, or (with ``futility``) once it is out of reach (``_out_of_reach``). Thresholds are claimed in
    increasing order only: p*_j once it and every smaller one have passed (for bounds this changes nothing; for
    "one_sided" it is what lets every test use the whole alpha), and none above a refuted one. An image stops
    when each of its thresholds is claimed or refuted, or at max_n."""
    thresholds = np.array([radius_threshold(r, sigma) for r in radii] + [0.5])  # the last: is cA established
    order = np.argsort(thresholds, kind="stable")
    max_n = sequence.checkpoints[-1]
    needed = None if futility is None else _successes_needed(sequence, thresholds)
    passed = np.zeros((len(images), len(thresholds)), dtype=bool)
    refuted = np.zeros_like(passed)

    def in_order(flags: np.ndarray, accumulate: np.ufunc) -> np.ndarray:
        """``accumulate`` (and, or) of [B, R] ``flags`` over increasing thresholds, in the thresholds' order."""
        result = np.empty_like(flags)
        result[:, order] = accumulate.accumulate(flags[:, order], axis=1)
        return result

    def stop(active: np.ndarray, count_a: np.ndarray, trials: int, last: bool) -> np.ndarray:
        above, below = sequence.decide(count_a, trials, thresholds)
        if needed is not None:
            below = below | _out_of_reach(count_a, trials, max_n, needed, futility)
        passed[active] |= above
        refuted[active] |= below & ~passed[active]
        settled = in_order(passed[active], np.logical_and) | in_order(refuted[active], np.logical_or)
        return settled[:, :-1].all(axis=1) | last

    top, _, _, used = estimate_sequentially(sample_chunks, images, seeds, n0, sequence, batch_size, stop)
    certified = in_order(passed, np.logical_and)
    return [
        RadiiDecision(
            int(top[i]) if certified[i, -1] else ABSTAIN, tuple(bool(c) for c in certified[i, :-1]), int(n0 + used[i])
        )
        for i in range(len(images))
    ]


def certify_at_radius(
    sample_chunks: ChunkSampler, sigma: float, images: torch.Tensor, seeds: Sequence[int], radius: float, *,
    n0: int, batch_size: int, sequence: ConfidenceSequence, futility: float | None = None,
) -> list[RadiusDecision]:
    """``Smoother.certify_at_radius`` on checked inputs: ``certify_at_radii`` at the one radius."""
    decisions = certify_at_radii(
        sample_chunks, sigma, images, seeds, [radius], n0=n0, batch_size=batch_size, sequence=sequence,
        futility=futility,
    )
    return [RadiusDecision(d.prediction, d.certified[0], d.samples) for d in decisions]


def _successes_needed(sequence: ConfidenceSequence, thresholds: np.ndarray) -> np.ndarray:
    """[R]: the fewest top-class draws among max_n with which ``sequence`` certifies each threshold at its last
    look (max_n + 1 where none does)."""
    max_n = sequence.checkpoints[-1]
    above, _ = sequence.decide(np.arange(max_n + 1), max_n, thresholds)
    return np.where(above.any(axis=0), above.argmax(axis=0), max_n + 1)


def _out_of_reach(
    count_a: np.ndarray, trials: int, max_n: int, needed: np.ndarray, futility: float
) -> np.ndarray:
    """[B, R]: thresholds to give up on after [B] ``count_a`` of ``trials`` draws: max_n draws cannot reach the
    ``needed`` [R] count even if every draw left is cA, or the one-sided (1 - futility) Clopper-Pearson upper
    bound of p_A is under the share needed, needed / max_n (certifying by max_n would then take more luck
    than ``futility`` allows). Giving up never certifies anything, so it leaves the alpha guarantee whole;
    it only loses a certificate that max_n draws would, against those odds, have given."""
    count_a = np.asarray(count_a, dtype=np.float64)[:, None]
    upper = clopper_pearson_upper(count_a, trials, futility)
    return (count_a + (max_n - trials) < needed[None, :]) | (upper * max_n < needed[None, :])


def certify_adaptive(
    sample_chunks: ChunkSampler, sigma: float, images: torch.Tensor, seeds: Sequence[int], *,
    n0: int, batch_size: int, tolerance: float, sequence: ConfidenceSequence,
) -> list[Certificate]:
    """``Smoother.certify`` with a ``tolerance``, on checked inputs: the certificate uses the largest lower
    bound of p_A seen at any checkpoint (all hold at once with probability >= 1 - alpha, so it is as valid as
    fixed-n CERTIFY's). An image stops once the sequence's next look (``sequence.horizon``), at its current
    share of top-class draws, would raise its radius by less than ``tolerance`` (only once p_A > 1/2 is
    established: from abstaining to a class is not a small gain, however small the radius), once its upper
    bound falls below 1/2 (it will abstain), or at max_n."""
    best = np.zeros(len(images))

    def stop(active: np.ndarray, count_a: np.ndarray, trials: int, last: bool) -> np.ndarray:
        lower, upper = sequence.bounds(count_a, trials)
        best[active] = np.maximum(best[active], lower)
        horizon = sequence.horizon(trials)
        if last or horizon is None:
            return np.ones(len(active), dtype=bool)
        projected, _ = sequence.bounds(count_a / trials * horizon, horizon)
        gain = radius_from_bound(projected, sigma) - radius_from_bound(best[active], sigma)
        return (upper < 0.5) | ((best[active] >= 0.5) & (gain < tolerance))

    top, selection, counts, used = estimate_sequentially(sample_chunks, images, seeds, n0, sequence, batch_size, stop)
    radii = radius_from_bound(best, sigma)
    return [
        Certificate(
            prediction=int(top[i]) if best[i] >= 0.5 else ABSTAIN, radius=float(radii[i]), pa_lower=float(best[i]),
            count=int(counts[i]), selection_count=int(selection[i]), samples=int(n0 + used[i]),
        )
        for i in range(len(images))
    ]


def estimate_sequentially(
    sample_chunks: ChunkSampler,
    images: torch.Tensor,
    seeds: Sequence[int],
    n0: int,
    sequence: ConfidenceSequence,
    batch_size: int,
    stop: StopRule,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Selection, then estimation draws read at ``sequence.checkpoints`` until ``stop`` decides every image.

    ``stop`` sees each image's checkpoints in order, and all images at one checkpoint in one call. Returns the
    selected class cA [B], its selection count [B], the top-class estimation count at each image's stopping
    checkpoint [B] and the estimation draws to it [B]. Image i's estimation draws are the chunks of its stream
    of length max_n (``sequence.checkpoints[-1]``), so they depend neither on the other images nor on the
    batch size.
    """
    max_n, last = sequence.checkpoints[-1], len(sequence.checkpoints) - 1
    num_chunks = len(chunk_sizes(max_n))
    checkpoint_chunks = [len(chunk_sizes(c)) for c in sequence.checkpoints]  # chunks drawn at each checkpoint
    top, selection = select_top_class(sample_chunks, images, seeds, n0, batch_size)
    hits = [np.zeros(1, dtype=np.int64) for _ in images]  # top-class count after 0, 1, 2, ... estimation chunks
    level = np.zeros(len(images), dtype=np.int64)  # index of each image's next checkpoint
    counts = np.zeros(len(images), dtype=np.int64)
    used = np.zeros(len(images), dtype=np.int64)
    active = list(range(len(images)))
    while active:
        drawn = [len(hits[i]) - 1 for i in active]
        due = [checkpoint_chunks[level[i]] - d for i, d in zip(active, drawn)]
        take = _fill_batches(due, [num_chunks - d for d in drawn], batch_size)
        new = sample_chunks(
            images[active], [seeds[i] for i in active], Phase.ESTIMATION, max_n, batch_size,
            [range(d, d + t) for d, t in zip(drawn, take)],
        )
        for i, chunk_counts in zip(active, new):
            hits[i] = np.concatenate([hits[i], hits[i][-1] + np.cumsum(chunk_counts[:, top[i]])])
        readable = set(active)  # images whose next checkpoint may be among the chunks just drawn
        while readable:
            at = min(level[i] for i in readable)
            group = sorted(i for i in readable if level[i] == at)
            ready = np.array([i for i in group if len(hits[i]) > checkpoint_chunks[at]], dtype=np.int64)
            readable -= set(group) - set(ready.tolist())  # not drawn that far yet: the next step reads it
            if not len(ready):
                continue
            trials = sequence.checkpoints[at]
            counts[ready] = [hits[i][checkpoint_chunks[at]] for i in ready]
            used[ready] = trials
            level[ready] += 1
            decided = set(ready[stop(ready, counts[ready], trials, at == last)].tolist())
            readable -= decided
            active = [i for i in active if i not in decided]
    return top, selection[np.arange(len(images)), top], counts, used


def select_top_class(
    sample_chunks: ChunkSampler, images: torch.Tensor, seeds: Sequence[int], n0: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """CERTIFY's selection: the top class cA [B] among each image's n0 selection draws, and all class counts
    [B, K] of those draws."""
    counts = sample_chunks(images, seeds, Phase.SELECTION, n0, batch_size, [range(len(chunk_sizes(n0)))] * len(images))
    selection = np.stack([c.sum(axis=0) for c in counts])
    return selection.argmax(axis=1), selection


def _fill_batches(due: list[int], left: list[int], batch_size: int) -> list[int]:
    """Chunks to draw per image this step: those up to its next checkpoint (``due``), then, round robin, chunks
    beyond it (at most ``left`` in all per image) until the step's last forward batch is full."""
    take = list(due)
    target = max(sum(due), math.ceil(sum(due) * NOISE_CHUNK_SIZE / batch_size) * batch_size // NOISE_CHUNK_SIZE)
    spare = sum(left) - sum(due)
    extra = min(target - sum(due), spare)
    while extra > 0:
        for j in range(len(take)):
            if extra > 0 and take[j] < left[j]:
                take[j] += 1
                extra -= 1
    return take
