"""``certify()``: Cohen's CERTIFY (or PREDICT, a fixed-radius test, adaptive CERTIFY) over a dataset, spread
over processes with Accelerate.

Read top to bottom: pick example indices (``skip``, ``max_examples``, shard) -> drop those already done in
``output_dir`` -> split the rest over processes (or, sample-parallel, split each image's noise chunks) ->
certify, appending each finished row to the process's progress file -> gather on the main process ->
write ``certify.tsv`` (or ``predict.tsv``), ``summary.json`` and ``certified_accuracy.png`` atomically.
What differs between the modes (the settings they take, their columns, how a group of images is certified,
what the summary holds) is one row of ``smoothing_hf.modes.MODES``.

Noise for dataset example ``idx`` is seeded by ``derive_seed(seed, idx)`` and drawn in fixed chunks, so
the rows do not depend on the number of processes, the batch size, or whether the run was resumed.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object, reduce
from tqdm.auto import tqdm

from .certification import ABSTAIN, Smoother, check_radii_to_test
from .certification.forward import PRECISIONS
from .checks import (
    check_alpha,
    check_choice,
    check_optional_positive_int,
    check_positive_int,
    check_seed,
)
from .data import labelled_batch
from .files import appending_rows, read_json, read_rows, write_json, write_rows
from .modeling import SmoothedImageClassifier
from .modes import MODES, Mode, check_mode, default_confidence
from .noise import chunk_sizes, derive_seed
from .reporting import DEFAULT_RADII, plot_certified_accuracy
from .run_folder import SETTINGS_NAME, done_rows, pixel_digest, read_settings, record_settings
from .space import describe


def certify(
    model: SmoothedImageClassifier,
    dataset: Any,
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    output_dir: str | os.PathLike,
    max_examples: int | None = None,
    skip: int = 1,
    num_shards: int = 1,
    shard_index: int = 0,
    sample_parallel: bool = False,
    mode: str = "certify",
    radius: float | None = None,
    max_n: int | None = None,
    tolerance: float | None = None,
    growth: float = 4.0,
    confidence: str | None = None,
    futility: float | None = None,
    bound_seed: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    radii: Sequence[float] = DEFAULT_RADII,
    evaluate_metric: Any = None,
    dataset_name: str | None = None,
    split: str | None = None,
) -> dict:
    """Certify (or PREDICT, or test a radius) examples of ``dataset`` into ``output_dir``.

    Every argument and every selected example (its label and pixels) is checked before anything is written.
    Rerunning with the same ``output_dir`` resumes: examples already done are skipped, after proving the
    folder holds this run (``smoothing_hf.run_folder``): the same settings (sigma, n0, n, alpha, seed, model,
    skip, shard, dataset), and each row done already is one of the selected examples, with its label and
    pixels. Anything else is an error, and the folder is left as it was.

    Args:
        model: the smoothed classifier (its sigma is the noise level, in [0, 1] pixel units).
        dataset: indexable; item i is a dict with "pixel_values" [C, H, W] in [0, 1] and "labels" (or
            "label"), e.g. a ``datasets.Dataset`` with ``smoothing_hf.data.ImageClassificationTransform``.
        n0, n, alpha, batch_size: as in ``Smoother.certify`` (predict mode uses ``n`` and ``alpha``).
        seed: example ``idx`` gets noise seed ``derive_seed(seed, idx)``.
        max_examples: at most this many examples (after ``skip``); ``skip``: every skip-th example.
        num_shards, shard_index: certify only shard ``shard_index`` of ``num_shards`` (job arrays); merge
            the shard folders with ``merge_shards``. ``max_examples`` counts the whole run, not a shard.
        sample_parallel: split each image's noise chunks over the processes instead of the images (few
            images, huge n); the rows are the same either way.
        mode: a ``MODES`` name: "certify" (Cohen's CERTIFY, ``certify.tsv``), "predict" (PREDICT,
            ``predict.tsv``), "fixed_radius" (``Smoother.certify_at_radius`` at ``radius`` with up to
            ``max_n`` estimation samples, ``certify.tsv``), "adaptive" (``Smoother.certify`` with
            ``tolerance``, up to ``max_n`` estimation samples, ``certify.tsv``) or "radii"
            (``Smoother.certify_at_radii`` at every one of ``radii`` with up to ``max_n`` estimation samples,
            ``certify.tsv`` with a 0/1 column per radius). ``growth`` and ``confidence`` (the confidence sequence,
            ``smoothing_hf.certification.CONFIDENCE_SEQUENCES``, for "adaptive" one of ``ADAPTIVE_CONFIDENCES``, the
            sequences with bounds or the two-stage rule; default ``DEFAULT_CONFIDENCE``, for "adaptive"
            ``DEFAULT_ADAPTIVE_CONFIDENCE``) are those of the sequential modes, which split images, not samples,
            over processes. ``futility`` (fixed_radius and radii modes): give up on a radius once certifying it by
            max_n is out of reach at that level (``Smoother.certify_at_radii``). ``bound_seed`` (certify mode, and
            adaptive mode with the two-stage rule): the randomized Clopper-Pearson bound in place of the classical
            one, each example's uniform drawn from (bound_seed, its noise seed) (``Smoother.certify``).
        precision: the forward pass's precision, "fp32", "bf16" or "fp16" (``Smoother``): the certificates are for
            the classifier evaluated so; recorded in ``settings.json`` and checked on resume.
        channels_last, compile: how the forward pass runs (``Smoother``); like the batch size, not recorded.
        radii: the l2 radii (pixels in [0, 1]) the summary reports certified accuracy at; in radii mode, the
            radii tested (any order, no repeats), and the summary reports those only.
        dataset_name, split: the dataset's identity (Hub id, ``embedded:<name>`` or folder; its split), recorded
            in ``settings.json`` and checked on resume.
        evaluate_metric: optionally, the certified accuracy ``evaluate`` module
            (``evaluate.load(smoothing_hf.reporting.certified_accuracy_metric_path())``); its result goes
            into the summary under "evaluate".

    Returns:
        The summary written to ``summary.json``.
    """
    chosen = check_mode(
        mode, n0, n, radius, max_n, tolerance, growth, confidence, radii, sample_parallel, futility, bound_seed
    )
    _check_selection(skip, max_examples, num_shards, shard_index)
    alpha, seed, batch_size = check_alpha(alpha), check_seed(seed), check_positive_int(batch_size, "batch_size")
    for name, value in (("dataset_name", dataset_name), ("split", split)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str or None, got {type(value).__name__}")
    state = PartialState(cpu=not torch.cuda.is_available())
    given = {"n0": n0, "n": n, "radius": radius, "radii": check_radii_to_test(radii), "max_n": max_n,
             "tolerance": tolerance, "growth": growth, "confidence": confidence or default_confidence(chosen),
             "futility": futility, "bound_seed": bound_seed}
    settings = {
        "mode": mode,
        "sigma": model.sigma,
        **{key: value if key in chosen.takes else None for key, value in given.items()},
        "alpha": alpha,
        "precision": check_choice(precision, "precision", PRECISIONS),
        "seed": seed,
        "skip": skip,
        "max_examples": max_examples,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "model": {
            "base_model_name_or_path": model.config.base_model_name_or_path,
            "base_model_revision": model.config.base_model_revision,
            "method": model.config.peft_method,
            "input_module": (model.config.input_module or {}).get("type"),
        },
        "dataset": {"name": dataset_name, "split": split, "num_examples": len(dataset)},
        "certify_size": model.config.certify_size,
    }
    selected = list(range(0, len(dataset), skip))[:max_examples][shard_index::num_shards]
    if not selected:
        raise ValueError(
            f"no examples to certify: the dataset has {len(dataset)}, and skip={skip}, max_examples={max_examples}, "
            f"shard {shard_index} of {num_shards} select none of them"
        )
    smoother = model.to(state.device).smoother(precision=precision, channels_last=channels_last, compile=compile)
    examples, shape = _read_examples(dataset, selected, smoother, model.num_labels, mode)
    settings["space"] = describe(shape[1:], shape[0])  # where the radii live: l2 in [0, 1] pixels of H x W x C
    columns = chosen.columns_for(settings)
    done = done_rows(output_dir, settings, chosen.tsv_name, columns, examples)  # every check before a write
    state.wait_for_everyone()
    if state.is_main_process:
        record_settings(output_dir, settings)
    state.wait_for_everyone()  # every process has read the folder before any appends to it
    remaining = [idx for idx in selected if idx not in done]

    started = time.perf_counter()
    progress = tqdm(
        total=len(selected),
        initial=len(selected) - len(remaining),
        desc=mode,
        unit="img",
        disable=not state.is_main_process,
    )
    new_rows: list[dict] = []
    spent = 0  # samples drawn by all processes in this run (estimated from this one's progress)
    writes_rows = state.is_main_process or not sample_parallel
    progress_path = os.path.join(output_dir, f"progress-{state.process_index}.tsv")
    no_rows = contextlib.nullcontext(lambda row: None)
    with appending_rows(progress_path, columns) if writes_rows else no_rows as append:
        if sample_parallel:
            work = [[idx] for idx in remaining]
        else:
            with state.split_between_processes(remaining) as mine:
                group = max(1, math.ceil(batch_size / chosen.fewest_samples(settings)))  # pack small images
                work = [mine[i : i + group] for i in range(0, len(mine), group)]
        for indices in work:
            tic = time.perf_counter()
            pixels, labels = labelled_batch(dataset, indices, model.num_labels, mode)
            digests = [pixel_digest(image) for image in pixels]
            changed = [idx for idx, label, digest in zip(indices, labels, digests) if examples[idx] != (label, digest)]
            if changed:
                raise ValueError(
                    f"dataset examples {changed[:5]} changed between two reads (other pixels or label): "
                    "certification needs a deterministic transform (no random augmentation)"
                )
            decisions = _decide(chosen, smoother, pixels, indices, settings, batch_size, sample_parallel, state)
            seconds = (time.perf_counter() - tic) / len(indices)
            rows = [{"idx": idx, "label": label, **chosen.row(decision, settings), "time": seconds,
                     "pixel_digest": digest}
                    for idx, label, decision, digest in zip(indices, labels, decisions, digests)]
            for row in rows:
                row["correct"] = int(row["predict"] == row["label"] and row["predict"] != ABSTAIN)
            if writes_rows:  # sample-parallel: the main process writes each row
                for row in rows:
                    append(row)
                new_rows.extend(rows)
            spent += sum(row["samples"] for row in rows) * (1 if sample_parallel else state.num_processes)
            progress.update(len(indices) * (1 if sample_parallel else state.num_processes))
            progress.set_postfix(samples_per_s=f"{spent / (time.perf_counter() - started):.0f}")
    progress.close()
    with open(os.path.join(output_dir, "certify.log"), "a") as log:
        log.write(f"rank {state.process_index} of {state.num_processes} on {state.device}: {len(new_rows)} new rows\n")
    new_rows = gather_object(new_rows)
    wall = time.perf_counter() - started
    state.wait_for_everyone()
    summary = None
    if state.is_main_process:
        rows = _merge_rows([*done.values(), *new_rows])
        rate = sum(r["samples"] for r in new_rows) / wall if new_rows else None
        summary = _finish(rows, settings, output_dir, chosen, radii, rate)
        if evaluate_metric is not None and chosen.plots:
            summary["evaluate"] = evaluate_metric.compute(
                predictions=[r["predict"] for r in rows],
                radii=[r["radius"] for r in rows],
                references=[r["label"] for r in rows],
            )
            write_json(summary, os.path.join(output_dir, "summary.json"))
    state.wait_for_everyone()
    return summary if summary is not None else read_json(os.path.join(output_dir, "summary.json"))


def merge_shards(
    shard_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, radii: Sequence[float] = DEFAULT_RADII
) -> dict:
    """Merge the folders of a sharded run (``num_shards`` > 1) into the files one run would have written.

    Checks that the shards' settings agree, that every shard index appears once, and that no example index
    is missing or repeated; writes ``certify.tsv`` (or ``predict.tsv``), ``summary.json`` and the plot."""
    if not shard_dirs:
        raise ValueError("`shard_dirs` must list at least one shard folder")
    target = os.path.realpath(output_dir)
    if any(os.path.realpath(folder) == target for folder in shard_dirs):
        raise ValueError(f"`output_dir` {os.fspath(output_dir)!r} is one of the shard folders: its files would be "
                         "overwritten; merge into a new folder")
    settings = [read_settings(folder) for folder in shard_dirs]
    first = settings[0]
    for folder, other in zip(shard_dirs, settings):
        differing = sorted(k for k in first if k != "shard_index" and other.get(k) != first[k])
        if differing:
            raise ValueError(f"shard {folder} was run with different settings {differing} than {shard_dirs[0]}")
    shard_indices = sorted(s["shard_index"] for s in settings)
    if shard_indices != list(range(first["num_shards"])):
        raise ValueError(
            f"`shard_dirs` must hold shards 0..{first['num_shards'] - 1} once each, got shard indices {shard_indices}"
        )
    chosen = MODES[first["mode"]]
    columns = chosen.columns_for(first)
    rows = [row for folder in shard_dirs for row in read_rows(os.path.join(folder, chosen.tsv_name), columns)]
    indices = [row["idx"] for row in rows]
    repeated = sorted(i for i, count in collections.Counter(indices).items() if count > 1)
    if repeated:
        raise ValueError(f"example indices {repeated[:10]} appear in more than one shard")
    expected = list(range(0, first["dataset"]["num_examples"], first["skip"]))[: first["max_examples"]]
    missing = sorted(set(expected) - set(indices))
    if missing:
        raise ValueError(f"example indices {missing[:10]} ({len(missing)} in all) are missing from the shards")
    os.makedirs(output_dir, exist_ok=True)
    merged = {**first, "num_shards": 1, "shard_index": 0}
    write_json(merged, os.path.join(output_dir, SETTINGS_NAME))
    return _finish(sorted(rows, key=lambda r: r["idx"]), merged, output_dir, chosen, radii, None)


# ---------------------------------------------------------------------------------------------- steps


def _check_selection(skip: int, max_examples: int | None, num_shards: int, shard_index: int) -> None:
    check_positive_int(skip, "skip")
    check_optional_positive_int(max_examples, "max_examples")
    num_shards = check_positive_int(num_shards, "num_shards")
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
        raise ValueError(f"`shard_index` must be an int in [0, num_shards={num_shards}), got {shard_index!r}")


def _read_examples(
    dataset: Any, selected: list[int], smoother: Smoother, num_labels: int, task: str
) -> tuple[dict[int, tuple[int, str]], tuple[int, ...]]:
    """idx -> (label, pixel digest) of each selected example, read once and checked before anything is
    written (a label in [0, ``num_labels``), pixels [C, H, W] in [0, 1] with the model's channels, all of one
    shape: one space for every radius of the run), and that shape [C, H, W]."""
    examples, shape = {}, None
    for idx in selected:
        pixels, labels = labelled_batch(dataset, [idx], num_labels, task)
        try:
            smoother.check_images(pixels)
        except (TypeError, ValueError) as error:
            raise type(error)(f"dataset example {idx}: {error}") from None
        if shape is not None and tuple(pixels.shape[1:]) != shape:
            raise ValueError(
                f"dataset example {idx} has shape {tuple(pixels.shape[1:])}, example {selected[0]} {shape}: radii are "
                "l2 distances at one image size, so every example must have the same one (resize them in the transform)"
            )
        shape = tuple(pixels.shape[1:])
        examples[idx] = (labels[0], pixel_digest(pixels[0]))
    return examples, shape


def _decide(
    chosen: Mode,
    smoother: Smoother,
    pixels: torch.Tensor,
    indices: list[int],
    settings: dict,
    batch_size: int,
    sample_parallel: bool,
    state: PartialState,
) -> list:
    """The mode's decisions for one group of images (seeds ``derive_seed(seed, idx)``). Sample-parallel: this
    process draws every num_processes-th noise chunk of each phase, and the counts are summed over processes."""
    seeds = [derive_seed(settings["seed"], idx) for idx in indices]
    if not sample_parallel:
        return chosen.decide(smoother, pixels, seeds, settings, batch_size)
    images = smoother.check_images(pixels).to(state.device)
    counts = []
    for phase, setting in chosen.phases:
        mine = range(state.process_index, len(chunk_sizes(settings[setting])), state.num_processes)
        local = smoother.sample_counts(images, seeds, phase, settings[setting], batch_size, chunks=mine)
        counts.append(reduce(torch.from_numpy(local).to(state.device), reduction="sum").cpu().numpy())
    return chosen.from_counts(counts, settings, smoother.sigma, seeds)


def _finish(
    rows: list[dict],
    settings: dict,
    output_dir: str | os.PathLike,
    chosen: Mode,
    radii: Sequence[float],
    samples_per_second: float | None,
) -> dict:
    """Write the final TSV, summary and plot; remove the progress files."""
    write_rows(rows, os.path.join(output_dir, chosen.tsv_name), chosen.columns_for(settings))
    summary = chosen.summarize(rows, settings, radii)
    if chosen.plots:
        plot_certified_accuracy(
            {f"sigma = {settings['sigma']:g}": rows}, os.path.join(output_dir, "certified_accuracy.png")
        )
    samples = [row["samples"] for row in rows]
    summary.update(
        samples_per_image={"mean": float(np.mean(samples)), "median": float(np.median(samples))} if rows else None,
        space=settings["space"],
        settings=settings,
        samples_per_second=samples_per_second,
    )
    write_json(summary, os.path.join(output_dir, "summary.json"))
    for file in glob.glob(os.path.join(output_dir, "progress-*.tsv")):
        os.remove(file)
    return summary


def _merge_rows(rows: list[dict]) -> list[dict]:
    """Rows by example index, in index order; an index seen twice (a row written both to the final file
    and a progress file) keeps its first row."""
    by_index: dict[int, dict] = {}
    for row in rows:
        by_index.setdefault(row["idx"], row)
    return [by_index[i] for i in sorted(by_index)]
