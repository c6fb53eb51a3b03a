"""``certify()``: Cohen's CERTIFY over a dataset, spread over processes with Accelerate.

Read top to bottom: pick example indices -> split them over processes -> certify each process's share in
packed groups (noise seeded by (seed, dataset index), so the result does not depend on the number of
processes or the batch size) -> gather on the main process -> write ``certify.tsv`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .core import ABSTAIN
from .modeling import SmoothedImageClassifier
from .noise import derive_seed
from .reporting import DEFAULT_RADII, summarize, write_tsv


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
    radii: Sequence[float] = DEFAULT_RADII,
) -> dict:
    """Certify examples of ``dataset`` and write ``certify.tsv`` and ``summary.json`` in ``output_dir``.

    Args:
        model: the smoothed classifier (its sigma is the noise level).
        dataset: indexable; item i is a dict with "pixel_values" [C, H, W] in [0, 1] and "labels" (or
            "label"), e.g. a ``datasets.Dataset`` with the transform of ``smoothing_hf.data``.
        n0, n, alpha, batch_size: as in ``Smoother.certify``.
        seed: example ``idx`` is certified with noise seed ``derive_seed(seed, idx)``.
        max_examples: certify at most this many examples (after ``skip``).
        skip: certify every ``skip``-th example (Cohen's ``--skip``).

    Returns:
        The summary (also written to ``summary.json`` by the main process).
    """
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"`skip` must be a positive int, got {skip!r}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"`max_examples` must be a positive int or None, got {max_examples!r}")
    state = PartialState(cpu=not torch.cuda.is_available())
    model = model.to(state.device)
    smoother = model.smoother()
    indices = list(range(0, len(dataset), skip))[:max_examples]
    group = max(1, math.ceil(batch_size / n))  # images per call: pack when n is below the batch size

    rows = []
    started = time.perf_counter()
    with state.split_between_processes(indices) as mine:
        progress = tqdm(total=len(indices), desc="certify", unit="img", disable=not state.is_main_process)
        for start in range(0, len(mine), group):
            chunk = mine[start : start + group]
            items = [dataset[i] for i in chunk]
            pixels = torch.stack([item["pixel_values"] for item in items])
            labels = [int(item["labels"] if "labels" in item else item["label"]) for item in items]
            if any(not 0 <= label < model.num_labels for label in labels):
                raise ValueError(f"labels {labels} are outside the model's label range [0, {model.num_labels})")
            tic = time.perf_counter()
            certificates = smoother.certify(
                pixels, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=[derive_seed(seed, i) for i in chunk]
            )
            elapsed = (time.perf_counter() - tic) / len(chunk)
            for idx, label, certificate in zip(chunk, labels, certificates):
                rows.append(
                    {
                        "idx": idx, "label": label, "predict": certificate.prediction, "radius": certificate.radius,
                        "correct": int(certificate.prediction == label and certificate.prediction != ABSTAIN),
                        "time": elapsed,
                    }
                )
            progress.update(len(chunk) * state.num_processes)
            progress.set_postfix(samples_per_s=f"{len(rows) * (n0 + n) * state.num_processes / (time.perf_counter() - started):.0f}")
        progress.close()
    rows = sorted(gather_object(rows), key=lambda row: row["idx"])
    wall = time.perf_counter() - started
    summary = {
        **summarize(rows, radii),
        "settings": {"sigma": model.sigma, "n0": n0, "n": n, "alpha": alpha, "seed": seed, "skip": skip,
                     "max_examples": max_examples, "batch_size": batch_size, "num_processes": state.num_processes},
        "model": {"base_model_name_or_path": model.config.base_model_name_or_path,
                  "base_model_revision": model.config.base_model_revision, "method": model.config.peft_method},
        "samples_per_second": len(rows) * (n0 + n) / wall,
    }
    if state.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        write_tsv(rows, os.path.join(output_dir, "certify.tsv"))
        temporary = os.path.join(output_dir, "summary.json.tmp")
        with open(temporary, "w") as handle:
            json.dump(summary, handle, indent=2)
        os.replace(temporary, os.path.join(output_dir, "summary.json"))
    state.wait_for_everyone()
    return summary
