"""``certify()``: Cohen's CERTIFY (or PREDICT, a fixed-radius test, adaptive CERTIFY) over a dataset, spread
over processes with Accelerate.

Read top to bottom: pick example indices (``skip``, ``max_examples``, shard) -> drop those already done in
``output_dir`` -> split the rest over processes (or, sample-parallel, split each image's noise chunks) ->
certify, appending each finished row to the process's progress file -> gather on the main process ->
write ``certify.tsv`` (or ``predict.tsv``), ``summary.json`` and ``certified_accuracy.png`` atomically.

Noise for dataset example ``idx`` is seeded by ``derive_seed(seed, idx)`` and drawn in fixed chunks, so
the rows do not depend on the number of processes, the batch size, or whether the run was resumed.
"""

from __future__ import annotations

import csv
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

from .config import read_json_object
from .certification import ABSTAIN, Smoother, certificates_from_counts, predictions_from_counts
from .files import atomic_path, write_json
from .modeling import SmoothedImageClassifier
from .noise import Phase, chunk_sizes, derive_seed
from .reporting import DEFAULT_RADII, plot_certified_accuracy, summarize

COLUMNS = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time", "samples"),
    "fixed_radius": ("idx", "label", "predict", "radius", "correct", "time", "samples"),
    "adaptive": ("idx", "label", "predict", "radius", "correct", "time", "samples"),
    "predict": ("idx", "label", "predict", "correct", "time", "samples"),
}
"""Columns of each mode's TSV: Cohen's, then the noisy samples spent on the example. In fixed_radius mode
``radius`` is the radius tested where certified, else 0.0, so certified accuracy reads the same way."""
SEQUENTIAL_MODES = ("fixed_radius", "adaptive")
SETTINGS_NAME = "settings.json"
RESUME_KEYS = (
    "mode", "sigma", "n0", "n", "alpha", "seed", "skip", "num_shards", "shard_index", "model", "num_dataset_examples",
    "radius", "max_n", "tolerance", "growth",
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
        mode: "certify" (Cohen's CERTIFY, ``certify.tsv``), "predict" (PREDICT, ``predict.tsv``),
            "fixed_radius" (``Smoother.certify_at_radius`` at ``radius`` with up to ``max_n`` estimation
            samples, ``certify.tsv``) or "adaptive" (``Smoother.certify`` with ``tolerance``, up to ``max_n``
            estimation samples, ``certify.tsv``); ``growth`` is the round-size factor of both. The sequential
            modes split images, not samples, over processes.
        evaluate_metric: optionally, the certified accuracy ``evaluate`` module
            (``evaluate.load(smoothing_hf.reporting.certified_accuracy_metric_path())``); its result goes
            into the summary under "evaluate".

    Returns:
        The summary written to ``summary.json``.
    """
    _check_arguments(mode, skip, max_examples, num_shards, shard_index)
    _check_sequential_arguments(mode, n0, max_n, radius, tolerance, sample_parallel)
    state = PartialState(cpu=not torch.cuda.is_available())
    sequential = mode in SEQUENTIAL_MODES
    settings = {
        "mode": mode, "sigma": model.sigma, "n0": None if mode == "predict" else n0, "n": None if sequential else n,
        "alpha": alpha, "radius": radius if mode == "fixed_radius" else None, "max_n": max_n if sequential else None,
        "tolerance": tolerance if mode == "adaptive" else None, "growth": growth if sequential else None,
        "seed": seed, "skip": skip, "max_examples": max_examples, "num_shards": num_shards, "shard_index": shard_index,
        "model": {"base_model_name_or_path": model.config.base_model_name_or_path,
                  "base_model_revision": model.config.base_model_revision, "method": model.config.peft_method,
                  "input_module": (model.config.input_module or {}).get("type")},
        "num_dataset_examples": len(dataset),
    }
    selected = list(range(0, len(dataset), skip))[:max_examples][shard_index::num_shards]
    done = _resume(output_dir, settings, mode, state)
    remaining = [idx for idx in selected if idx not in done]
    smoother = model.to(state.device).smoother()

    started = time.perf_counter()
    progress = tqdm(total=len(selected), initial=len(selected) - len(remaining), desc=mode, unit="img",
                    disable=not state.is_main_process)
    new_rows: list[dict] = []
    spent = 0  # samples drawn by all processes in this run (estimated from this one's progress)
    with open(os.path.join(output_dir, f"progress-{state.process_index}.tsv"), "a", newline="") as progress_file:
        writer = csv.writer(progress_file, delimiter="\t", lineterminator="\n")
        if sample_parallel:
            work = [[idx] for idx in remaining]
        else:
            with state.split_between_processes(remaining) as mine:
                fewest = n0 if sequential else (n0 + n if mode == "certify" else n)
                group = max(1, math.ceil(batch_size / fewest))  # pack images when few samples fill a batch
                work = [mine[i : i + group] for i in range(0, len(mine), group)]
        for chunk in work:
            tic = time.perf_counter()
            pixels, labels = _load(dataset, chunk, model.num_labels, mode)
            rows = _run(smoother, pixels, labels, chunk, settings, batch_size, sample_parallel, state)
            for row in rows:
                row["time"] = (time.perf_counter() - tic) / len(rows)
                if state.is_main_process or not sample_parallel:
                    writer.writerow([_format(row[column]) for column in COLUMNS[mode]])
                    new_rows.append(row)
            progress_file.flush()
            spent += sum(row["samples"] for row in rows) * (1 if sample_parallel else state.num_processes)
            progress.update(len(chunk) * (1 if sample_parallel else state.num_processes))
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
        summary = _finish(rows, settings, output_dir, mode, radii, sum(r["samples"] for r in new_rows) / wall if new_rows else None)
        if evaluate_metric is not None and mode == "certify":
            summary["evaluate"] = evaluate_metric.compute(
                predictions=[r["predict"] for r in rows], radii=[r["radius"] for r in rows],
                references=[r["label"] for r in rows],
            )
            write_json(summary, os.path.join(output_dir, "summary.json"))
    state.wait_for_everyone()
    return summary if summary is not None else _read_json(os.path.join(output_dir, "summary.json"))


def merge_shards(shard_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, radii: Sequence[float] = DEFAULT_RADII) -> dict:
    """Merge the folders of a sharded run (``num_shards`` > 1) into the files one run would have written.

    Checks that the shards' settings agree, that every shard index appears once, and that no example index
    is missing or repeated; writes ``certify.tsv`` (or ``predict.tsv``), ``summary.json`` and the plot."""
    if not shard_dirs:
        raise ValueError("`shard_dirs` must list at least one shard folder")
    settings = [_read_json(os.path.join(folder, SETTINGS_NAME)) for folder in shard_dirs]
    first = settings[0]
    for folder, other in zip(shard_dirs, settings):
        differing = sorted(k for k in first if k != "shard_index" and other.get(k) != first[k])
        if differing:
            raise ValueError(f"shard {folder} was run with different settings {differing} than {shard_dirs[0]}")
    shard_indices = sorted(s["shard_index"] for s in settings)
    if shard_indices != list(range(first["num_shards"])):
        raise ValueError(f"`shard_dirs` must hold shards 0..{first['num_shards'] - 1} once each, got shard indices {shard_indices}")
    mode = first["mode"]
    rows = [row for folder in shard_dirs for row in _read_rows(os.path.join(folder, _tsv_name(mode)), mode)]
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
    return _finish(sorted(rows, key=lambda r: r["idx"]), merged, output_dir, mode, radii, None)


# ---------------------------------------------------------------------------------------------- steps


def _check_arguments(mode: str, skip: int, max_examples: int | None, num_shards: int, shard_index: int) -> None:
    if mode not in COLUMNS:
        raise ValueError(f"`mode` must be one of {sorted(COLUMNS)}, got {mode!r}")
    for name, value in (("skip", skip), ("num_shards", num_shards)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"`max_examples` must be a positive int or None, got {max_examples!r}")
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
        raise ValueError(f"`shard_index` must be an int in [0, num_shards={num_shards}), got {shard_index!r}")


def _check_sequential_arguments(
    mode: str, n0: int, max_n: int | None, radius: float | None, tolerance: float | None, sample_parallel: bool
) -> None:
    """The settings the sequential modes need (and only they take)."""
    if mode not in SEQUENTIAL_MODES:
        given = [name for name, value in (("radius", radius), ("max_n", max_n), ("tolerance", tolerance)) if value is not None]
        if given:
            raise ValueError(f"{given} apply to mode 'fixed_radius' or 'adaptive' only, got mode={mode!r}")
        return
    if sample_parallel:
        raise ValueError(f"mode={mode!r} decides after each round of samples: it splits images over processes, not samples")
    if max_n is None or isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < n0:
        raise ValueError(f"mode={mode!r} needs `max_n`, the most estimation samples per image, an int >= n0 = {n0}; got {max_n!r}")
    if mode == "fixed_radius" and (not _is_number(radius) or radius < 0):
        raise ValueError(f"mode='fixed_radius' needs `radius`, the l2 radius to test (>= 0, pixels in [0, 1]); got {radius!r}")
    if mode == "adaptive" and (not _is_number(tolerance) or tolerance <= 0):
        raise ValueError(f"mode='adaptive' needs `tolerance`, a radius > 0 (l2, pixels in [0, 1]); got {tolerance!r}")
    if mode == "fixed_radius" and tolerance is not None or mode == "adaptive" and radius is not None:
        raise ValueError(f"mode={mode!r} takes {'`radius`' if mode == 'fixed_radius' else '`tolerance`'}, not both `radius` and `tolerance`")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tsv_name(mode: str) -> str:
    return "predict.tsv" if mode == "predict" else "certify.tsv"


def _resume(output_dir: str | os.PathLike, settings: dict, mode: str, state: PartialState) -> dict[int, dict]:
    """Record the settings in a new folder, or check them against an existing one; return the rows
    already done (final file and progress files), by index."""
    path = os.path.join(output_dir, SETTINGS_NAME)
    if state.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        if not os.path.exists(path):
            write_json(settings, path)
    state.wait_for_everyone()
    recorded = _read_json(path)
    differing = sorted(k for k in RESUME_KEYS if recorded.get(k) != settings[k])
    if differing:
        raise ValueError(
            f"{output_dir} holds a run with other settings: "
            + ", ".join(f"{k}={recorded.get(k)!r} there, {settings[k]!r} now" for k in differing)
            + "; use another `output_dir`"
        )
    files = [os.path.join(output_dir, _tsv_name(mode)), *sorted(glob.glob(os.path.join(output_dir, "progress-*.tsv")))]
    rows = [row for file in files if os.path.exists(file) for row in _read_rows(file, mode)]
    return {row["idx"]: row for row in _merge_rows(rows)}


def _load(dataset: Any, indices: list[int], num_labels: int, mode: str) -> tuple[torch.Tensor, list[int]]:
    items = [dataset[i] for i in indices]
    if any("labels" not in item and "label" not in item for item in items):
        raise ValueError(f"{mode} needs labelled examples: dataset items must have a 'labels' or 'label' entry")
    labels = [int(item["labels"] if "labels" in item else item["label"]) for item in items]
    outside = [label for label in labels if not 0 <= label < num_labels]
    if outside:
        raise ValueError(f"labels {outside} are outside the model's label range [0, {num_labels})")
    return torch.stack([item["pixel_values"] for item in items]), labels


def _run(
    smoother: Smoother, pixels: torch.Tensor, labels: list[int], indices: list[int], settings: dict, batch_size: int,
    sample_parallel: bool, state: PartialState,
) -> list[dict]:
    mode, n0, n, alpha = settings["mode"], settings["n0"], settings["n"], settings["alpha"]
    seeds = [derive_seed(settings["seed"], idx) for idx in indices]
    if sample_parallel:  # this process draws every num_processes-th noise chunk; the counts are summed
        images = smoother.check_images(pixels).to(state.device)
        phases = ((Phase.PREDICTION, n),) if mode == "predict" else ((Phase.SELECTION, n0), (Phase.ESTIMATION, n))
        counts = []
        for phase, num in phases:
            mine = range(state.process_index, len(chunk_sizes(num)), state.num_processes)
            local = smoother.sample_counts(images, seeds, phase, num, batch_size, chunks=mine)
            counts.append(reduce(torch.from_numpy(local).to(state.device), reduction="sum").cpu().numpy())
    if mode == "predict":
        predictions = (
            predictions_from_counts(counts[0], alpha) if sample_parallel
            else smoother.predict(pixels, n=n, alpha=alpha, batch_size=batch_size, seed=seeds)
        )
        return [
            {"idx": i, "label": y, "predict": p, "correct": int(p == y), "samples": n}
            for i, y, p in zip(indices, labels, predictions)
        ]
    if mode == "fixed_radius":
        decisions = smoother.certify_at_radius(
            pixels, settings["radius"], n0=n0, max_n=settings["max_n"], alpha=alpha, batch_size=batch_size, seed=seeds,
            growth=settings["growth"],
        )
        return [
            {"idx": i, "label": y, "predict": d.prediction, "radius": settings["radius"] if d.certified else 0.0,
             "correct": int(d.prediction == y and d.prediction != ABSTAIN), "samples": d.samples}
            for i, y, d in zip(indices, labels, decisions)
        ]
    if sample_parallel:
        certificates = certificates_from_counts(counts[0], counts[1], alpha, smoother.sigma)
    elif mode == "adaptive":
        certificates = smoother.certify(
            pixels, n0=n0, n=settings["max_n"], alpha=alpha, batch_size=batch_size, seed=seeds,
            tolerance=settings["tolerance"], growth=settings["growth"],
        )
    else:
        certificates = smoother.certify(pixels, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seeds)
    return [
        {"idx": i, "label": y, "predict": c.prediction, "radius": c.radius,
         "correct": int(c.prediction == y and c.prediction != ABSTAIN), "samples": c.samples}
        for i, y, c in zip(indices, labels, certificates)
    ]


def _finish(rows: list[dict], settings: dict, output_dir: str | os.PathLike, mode: str, radii: Sequence[float], samples_per_second: float | None) -> dict:
    """Write the final TSV, summary and plot; remove the progress files."""
    _write_rows(rows, os.path.join(output_dir, _tsv_name(mode)), mode)
    if mode in ("certify", "adaptive"):
        summary = summarize(rows, radii)
        plot_certified_accuracy({f"sigma = {settings['sigma']:g}": rows}, os.path.join(output_dir, "certified_accuracy.png"))
    elif mode == "fixed_radius":  # radii other than 0 and the one tested are not known; neither is the ACR
        summary = {key: value for key, value in summarize(rows, sorted({0.0, settings["radius"]})).items() if key != "acr"}
    else:
        summary = {"num_examples": len(rows), "accuracy": float(np.mean([r["correct"] for r in rows])),
                   "abstain_rate": float(np.mean([r["predict"] == ABSTAIN for r in rows]))}
    samples = [row["samples"] for row in rows]
    summary.update(
        samples_per_image={"mean": float(np.mean(samples)), "median": float(np.median(samples))} if rows else None,
        settings=settings, samples_per_second=samples_per_second,
    )
    write_json(summary, os.path.join(output_dir, "summary.json"))
    for file in glob.glob(os.path.join(output_dir, "progress-*.tsv")):
        os.remove(file)
    return summary


# ---------------------------------------------------------------------------------------------- files


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _write_rows(rows: list[dict], path: str, mode: str) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS[mode])
        writer.writerows([_format(row[column]) for column in COLUMNS[mode]] for row in rows)


def _read_rows(path: str, mode: str) -> list[dict]:
    """Rows of a final or progress TSV; a progress file's last line may be torn by a kill: only complete
    lines (newline-terminated, all columns) count."""
    columns = COLUMNS[mode]
    rows = []
    with open(path, newline="") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if not line.endswith("\n") or len(fields) != len(columns) or fields[0] == "idx":
                continue
            row = dict(zip(columns, fields))
            rows.append({k: float(v) if k in ("radius", "time") else int(v) for k, v in row.items()})
    return rows


def _merge_rows(rows: list[dict]) -> list[dict]:
    """Rows by example index, in index order; an index seen twice (a row written both to the final file
    and a progress file) keeps its first row."""
    by_index: dict[int, dict] = {}
    for row in rows:
        by_index.setdefault(row["idx"], row)
    return [by_index[i] for i in sorted(by_index)]


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: not a certification output folder")
    return read_json_object(path)
