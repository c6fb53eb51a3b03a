"""A certification output folder and the proof that a resumed run is the same run.

A folder holds ``settings.json`` (the run's settings, the dataset's identity), the final TSV, and while a
run is going, one ``progress-<rank>.tsv`` per process. Every row carries what verifies it against the
dataset: its ``idx``, its ``label`` and ``pixel_digest``, a hash of the example's pixels. A run that resumes
into a folder must have the folder's settings and dataset, and every row already there must be a row of this
run: its idx among the examples this run selects, with that example's label and pixels. Anything else is an
error before anything is written, so a folder never mixes two runs.
"""

from __future__ import annotations

import glob
import hashlib
import os

import torch

from .files import read_json, read_rows, write_json

SETTINGS_NAME = "settings.json"
RESUME_KEYS = (
    "mode",
    "sigma",
    "n0",
    "n",
    "alpha",
    "precision",
    "seed",
    "skip",
    "num_shards",
    "shard_index",
    "model",
    "dataset",
    "space",
    "radius",
    "radii",
    "max_n",
    "tolerance",
    "growth",
    "confidence",
    "futility",
    "bound_seed",
)
"""Settings a resumed run must share with the folder's recorded ones. Batch size and process count may differ
(rows do not depend on them); ``max_examples`` may grow (a finished run is extended) but not drop examples the
folder already holds."""


def pixel_digest(pixels: torch.Tensor) -> str:
    """The first 16 hex digits of the SHA-256 of one image's shape and float32 pixel bytes ([C, H, W])."""
    image = pixels.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(repr(tuple(image.shape)).encode())
    digest.update(image.numpy().tobytes())
    return digest.hexdigest()[:16]


def read_settings(folder: str | os.PathLike) -> dict:
    """The recorded settings of a certification folder; a folder without them is a ValueError."""
    path = os.path.join(folder, SETTINGS_NAME)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: not a certification output folder")
    return read_json(path)


def done_rows(
    output_dir: str | os.PathLike, settings: dict, tsv_name: str, columns: tuple[str, ...],
    examples: dict[int, tuple[int, str]],
) -> dict[int, dict]:
    """The rows already in ``output_dir`` (its final TSV and progress files), by index, after proving the
    folder holds this run: the recorded settings equal ``settings`` on every ``RESUME_KEYS``, and each row's
    idx is one of ``examples`` (idx -> (label, pixel digest) of the examples this run selects) with that label
    and digest. Any mismatch is a ValueError naming the setting, or the file and line of the row. A folder
    without settings is a new run: no rows. Reads only."""
    if not os.path.exists(os.path.join(output_dir, SETTINGS_NAME)):
        return {}
    recorded = read_settings(output_dir)
    differing = sorted(key for key in RESUME_KEYS if recorded.get(key) != settings[key])
    if differing:
        raise ValueError(
            f"{output_dir} holds a run with other settings: "
            + ", ".join(f"{key}={recorded.get(key)!r} there, {settings[key]!r} now" for key in differing)
            + "; use another `output_dir`"
        )
    files = [os.path.join(output_dir, tsv_name), *sorted(glob.glob(os.path.join(output_dir, "progress-*.tsv")))]
    rows: dict[int, dict] = {}
    for file in files:
        if not os.path.isfile(file) or not os.path.getsize(file):  # a kill can leave a progress file empty
            continue
        for line, row in enumerate(read_rows(file, columns), start=2):
            _check_row(row, file, line, examples, settings)
            rows.setdefault(row["idx"], row)  # the final file and a progress file may both hold a row
    return dict(sorted(rows.items()))


def record_settings(output_dir: str | os.PathLike, settings: dict) -> None:
    """Create ``output_dir`` and write ``settings`` as its ``settings.json`` (atomically); for a run whose
    checks have all passed."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(settings, os.path.join(output_dir, SETTINGS_NAME))


def _check_row(row: dict, file: str, line: int, examples: dict[int, tuple[int, str]], settings: dict) -> None:
    where = f"{file}, line {line}"
    idx = row["idx"]
    if idx not in examples:
        raise ValueError(
            f"{where}: the folder holds a row for example {idx}, which this run does not select (skip="
            f"{settings['skip']}, max_examples={settings['max_examples']}, shard {settings['shard_index']} of "
            f"{settings['num_shards']}, {settings['dataset']['num_examples']} examples); select it (e.g. a larger "
            "`max_examples`) or use another `output_dir`"
        )
    label, digest = examples[idx]
    if row["label"] != label or str(row.get("pixel_digest")) != digest:
        found = f"label {row['label']}, pixel digest {row.get('pixel_digest')}"
        raise ValueError(
            f"{where}: the row of example {idx} ({found}) was not certified on this dataset's example {idx} "
            f"(label {label}, pixel digest {digest}): the folder holds another dataset's run; use another "
            "`output_dir`"
        )
