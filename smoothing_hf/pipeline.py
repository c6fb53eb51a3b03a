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

from .certification import ABSTAIN, Smoother
from .checks import check_choice, check_number, check_optional_positive_int, check_positive_int, is_number
from .data import labelled_batch
from .files import appending_rows, read_json, read_rows, write_json, write_rows
from .modeling import SmoothedImageClassifier
from .modes import MODE_OPTIONS, MODES, Mode
from .noise import chunk_sizes, derive_seed
from .reporting import DEFAULT_RADII, plot_certified_accuracy

SETTINGS_NAME = "settings.json"
RESUME_KEYS = (
    "mode",
    "sigma",
    "n0",
    "n",
    "alpha",
    "seed",
    "skip",
    "num_shards",
    "shard_index",
    "model",
    "num_dataset_examples",
    "radius",
    "max_n",
    "tolerance",
    "growth",
)
"""Settings a resumed run must share with the folder's recorded ones (batch size and process count may differ)."""


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
    radii: Sequence[float] = DEFAULT_RADII,
    evaluate_metric: Any = None,
) -> dict:
    """Certify (or PREDICT, or test a radius) examples of ``dataset`` into ``output_dir``.

    Rerunning with the same ``output_dir`` resumes: examples already done are skipped; settings that
    differ from the folder's (sigma, n0, n, alpha, seed, model, skip, shard) are an error.

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
            ``max_n`` estimation samples, ``certify.tsv``) or "adaptive" (``Smoother.certify`` with
            ``tolerance``, up to ``max_n`` estimation samples, ``certify.tsv``); ``growth`` is the round-size
            factor of both. The sequential modes split images, not samples, over processes.
        evaluate_metric: optionally, the certified accuracy ``evaluate`` module
            (``evaluate.load(smoothing_hf.reporting.certified_accuracy_metric_path())``); its result goes
            into the summary under "evaluate".

    Returns:
        The summary written to ``summary.json``.
    """
    chosen = _check_mode(mode, n0, n, radius, max_n, tolerance, growth, sample_parallel)
    _check_selection(skip, max_examples, num_shards, shard_index)
    state = PartialState(cpu=not torch.cuda.is_available())
    given = {"n0": n0, "n": n, "radius": radius, "max_n": max_n, "tolerance": tolerance, "growth": growth}
    settings = {
        "mode": mode,
        "sigma": model.sigma,
        **{key: value if key in chosen.takes else None for key, value in given.items()},
        "alpha": alpha,
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
        "num_dataset_examples": len(dataset),
    }
    selected = list(range(0, len(dataset), skip))[:max_examples][shard_index::num_shards]
    done = _resume(output_dir, settings, chosen, state)
    remaining = [idx for idx in selected if idx not in done]
    smoother = model.to(state.device).smoother()

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
    with appending_rows(progress_path, chosen.columns) if writes_rows else no_rows as append:
        if sample_parallel:
            work = [[idx] for idx in remaining]
        else:
            with state.split_between_processes(remaining) as mine:
                group = max(1, math.ceil(batch_size / chosen.fewest_samples(settings)))  # pack small images
                work = [mine[i : i + group] for i in range(0, len(mine), group)]
        for indices in work:
            tic = time.perf_counter()
            pixels, labels = labelled_batch(dataset, indices, model.num_labels, mode)
            decisions = _decide(chosen, smoother, pixels, indices, settings, batch_size, sample_parallel, state)
            seconds = (time.perf_counter() - tic) / len(indices)
            rows = [{"idx": idx, "label": label, **chosen.row(decision, settings), "time": seconds}
                    for idx, label, decision in zip(indices, labels, decisions)]
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
    settings = [_read_settings(folder) for folder in shard_dirs]
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
    rows = [row for folder in shard_dirs for row in read_rows(os.path.join(folder, chosen.tsv_name), chosen.columns)]
    indices = [row["idx"] for row in rows]
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise ValueError(f"example indices {repeated[:10]} appear in more than one shard")
    expected = list(range(0, first["num_dataset_examples"], first["skip"]))[: first["max_examples"]]
    missing = sorted(set(expected) - set(indices))
    if missing:
        raise ValueError(f"example indices {missing[:10]} ({len(missing)} in all) are missing from the shards")
    os.makedirs(output_dir, exist_ok=True)
    merged = {**first, "num_shards": 1, "shard_index": 0}
    write_json(merged, os.path.join(output_dir, SETTINGS_NAME))
    return _finish(sorted(rows, key=lambda r: r["idx"]), merged, output_dir, chosen, radii, None)


# ---------------------------------------------------------------------------------------------- steps


def _check_mode(
    mode: str,
    n0: int,
    n: int,
    radius: float | None,
    max_n: int | None,
    tolerance: float | None,
    growth: float,
    sample_parallel: bool,
) -> Mode:
    """The ``MODES`` row of ``mode``, after checking the settings it takes; a setting without a default
    (radius, max_n, tolerance) given to a mode that does not take it is an error."""
    chosen = MODES[check_choice(mode, "mode", MODES)]
    given = {"radius": radius, "max_n": max_n, "tolerance": tolerance}
    unused = [name for name in MODE_OPTIONS if given[name] is not None and name not in chosen.takes]
    if unused:
        takers = sorted(m.name for m in MODES.values() if set(unused) & set(m.takes))
        raise ValueError(f"{unused} apply to mode {' or '.join(repr(t) for t in takers)} only, got mode={mode!r}")
    if sample_parallel and chosen.from_counts is None:
        raise ValueError(
            f"mode={mode!r} decides after each round of samples: it splits images over processes, not samples"
        )
    if "n0" in chosen.takes:
        check_positive_int(n0, "n0")
    if "n" in chosen.takes:
        check_positive_int(n, "n")
    if "max_n" in chosen.takes and (max_n is None or check_positive_int(max_n, "max_n") < n0):
        raise ValueError(
            f"mode={mode!r} needs `max_n`, the most estimation samples per image, an int >= n0 = {n0}; got {max_n!r}"
        )
    if "radius" in chosen.takes and not (is_number(radius) and radius >= 0):
        raise ValueError(
            f"mode={mode!r} needs `radius`, the l2 radius to test (>= 0, pixels in [0, 1]); got {radius!r}"
        )
    if "tolerance" in chosen.takes and not (is_number(tolerance) and tolerance > 0):
        raise ValueError(f"mode={mode!r} needs `tolerance`, a radius > 0 (l2, pixels in [0, 1]); got {tolerance!r}")
    if "growth" in chosen.takes:
        check_number(growth, "growth", minimum=1, strict_minimum=True)
    return chosen


def _check_selection(skip: int, max_examples: int | None, num_shards: int, shard_index: int) -> None:
    check_positive_int(skip, "skip")
    check_optional_positive_int(max_examples, "max_examples")
    num_shards = check_positive_int(num_shards, "num_shards")
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
        raise ValueError(f"`shard_index` must be an int in [0, num_shards={num_shards}), got {shard_index!r}")


def _resume(output_dir: str | os.PathLike, settings: dict, chosen: Mode, state: PartialState) -> dict[int, dict]:
    """Record the settings in a new folder, or check them against an existing one; return the rows
    already done (final file and progress files), by index."""
    path = os.path.join(output_dir, SETTINGS_NAME)
    if state.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        if not os.path.exists(path):
            write_json(settings, path)
    state.wait_for_everyone()
    recorded = _read_settings(output_dir)
    differing = sorted(k for k in RESUME_KEYS if recorded.get(k) != settings[k])
    if differing:
        raise ValueError(
            f"{output_dir} holds a run with other settings: "
            + ", ".join(f"{k}={recorded.get(k)!r} there, {settings[k]!r} now" for k in differing)
            + "; use another `output_dir`"
        )
    files = [os.path.join(output_dir, chosen.tsv_name), *sorted(glob.glob(os.path.join(output_dir, "progress-*.tsv")))]
    # A progress file a kill left before its header was flushed is empty: it holds no rows.
    rows = [
        row
        for file in files
        if os.path.isfile(file) and os.path.getsize(file)
        for row in read_rows(file, chosen.columns)
    ]
    state.wait_for_everyone()  # every process has read the folder before any appends to it
    return {row["idx"]: row for row in _merge_rows(rows)}


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
    return chosen.from_counts(counts, settings, smoother.sigma)


def _finish(
    rows: list[dict],
    settings: dict,
    output_dir: str | os.PathLike,
    chosen: Mode,
    radii: Sequence[float],
    samples_per_second: float | None,
) -> dict:
    """Write the final TSV, summary and plot; remove the progress files."""
    write_rows(rows, os.path.join(output_dir, chosen.tsv_name), chosen.columns)
    summary = chosen.summarize(rows, settings, radii)
    if chosen.plots:
        plot_certified_accuracy(
            {f"sigma = {settings['sigma']:g}": rows}, os.path.join(output_dir, "certified_accuracy.png")
        )
    samples = [row["samples"] for row in rows]
    summary.update(
        samples_per_image={"mean": float(np.mean(samples)), "median": float(np.median(samples))} if rows else None,
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


def _read_settings(folder: str | os.PathLike) -> dict:
    path = os.path.join(folder, SETTINGS_NAME)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: not a certification output folder")
    return read_json(path)
