"""Datasets in one shape (splits train/validation, columns image/label) and the transform to model inputs."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from transformers import ViTImageProcessorPil, default_data_collator

from smoothing_hf import (
    EMBEDDED_DATASETS,
    ImageClassificationTransform,
    PixelTransform,
    SmoothedImageClassifier,
    check_labels,
    class_names,
    load_image_dataset,
    num_classes,
    prepare_columns,
)

COLORS = {"cat": 10, "dog": 120, "eel": 250}  # each class's images are filled with its own gray level


@pytest.fixture(scope="module")
def mnist() -> DatasetDict:
    return load_image_dataset("embedded:mnist")


@pytest.fixture(scope="module")
def digits() -> DatasetDict:
    return load_image_dataset("embedded:digits")


def make_image_folder(root, classes, per_class=4):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            PILImage.new("RGB", (6, 5), (COLORS[name],) * 3).save(root / name / f"{i}.png")
    return root


def assert_labels_match_pixels(split):
    names = class_names(split)
    for example in split:
        assert example["image"].getpixel((0, 0))[0] == COLORS[names[example["label"]]]


def test_embedded_mnist_is_a_fixed_stratified_4000_1000_split(mnist):
    assert EMBEDDED_DATASETS == ("embedded:mnist", "embedded:digits")
    assert list(mnist) == ["train", "validation"]
    assert (len(mnist["train"]), len(mnist["validation"])) == (4000, 1000)
    assert isinstance(mnist["train"].features["image"], Image)
    assert class_names(mnist) == [str(d) for d in range(10)] and num_classes(mnist["validation"]) == 10
    image = mnist["train"][0]["image"]
    assert (image.mode, image.size) == ("L", (28, 28))
    validation_labels = np.array(mnist["validation"]["label"])
    np.testing.assert_array_equal(np.bincount(validation_labels), [100] * 10)
    again = load_image_dataset("embedded:mnist", seed=123)  # the seed does not move the embedded split
    np.testing.assert_array_equal(np.array(again["validation"]["label"]), validation_labels)
    for index in (0, 999):
        np.testing.assert_array_equal(
            np.asarray(again["validation"][index]["image"]), np.asarray(mnist["validation"][index]["image"])
        )


def test_embedded_digits_are_8x8_grayscale_rescaled_to_0_255(digits):
    assert (len(digits["train"]), len(digits["validation"])) == (1437, 360)
    pixels = np.stack([np.asarray(image) for image in digits["train"][:300]["image"]])
    assert pixels.shape == (300, 8, 8) and pixels.dtype == np.uint8
    assert (pixels.min(), pixels.max()) == (0, 255)
    counts = np.bincount(digits["train"]["label"]) + np.bincount(digits["validation"]["label"])
    assert np.all(np.abs(np.bincount(digits["validation"]["label"]) - 0.2 * counts) <= 1)


def test_image_folders_with_a_validation_folder(tmp_path):
    train = make_image_folder(tmp_path / "train", ["cat", "dog", "eel"])
    validation = make_image_folder(tmp_path / "val", ["cat", "eel"], per_class=2)
    data = load_image_dataset(train_dir=train, validation_dir=validation, cache_dir=str(tmp_path / "cache"))
    assert (len(data["train"]), len(data["validation"])) == (12, 4)
    assert class_names(data["validation"]) == ["cat", "dog", "eel"]  # one label set for both folders
    assert_labels_match_pixels(data["train"])
    assert_labels_match_pixels(data["validation"])


def test_an_image_folder_alone_is_split_by_validation_fraction_and_seed(tmp_path):
    train = make_image_folder(tmp_path / "train", ["cat", "dog"], per_class=5)

    def load(seed):
        return load_image_dataset(
            train_dir=train, validation_fraction=0.4, seed=seed, cache_dir=str(tmp_path / "cache")
        )

    data = load(0)
    assert (len(data["train"]), len(data["validation"])) == (6, 4)
    assert sorted(data["validation"]["label"]) == [0, 0, 1, 1]  # stratified
    assert_labels_match_pixels(data["validation"])
    assert list(load(0)["validation"]["label"]) == list(data["validation"]["label"])
    flat = tmp_path / "flat"
    flat.mkdir()
    PILImage.new("RGB", (4, 4)).save(flat / "a.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        load_image_dataset(train_dir=flat, cache_dir=str(tmp_path / "cache"))


def test_a_dataset_name_goes_through_load_dataset_and_its_test_split_is_the_validation_set(tmp_path):
    make_image_folder(tmp_path / "repo" / "train", ["cat", "dog"], per_class=3)
    make_image_folder(tmp_path / "repo" / "test", ["cat", "dog"], per_class=1)
    data = load_image_dataset(
        "imagefolder", data_dir=str(tmp_path / "repo"), cache_dir=str(tmp_path / "cache"), revision=None
    )
    assert (len(data["train"]), len(data["validation"])) == (6, 2)
    assert_labels_match_pixels(data["validation"])


def test_columns_are_found_renamed_and_the_others_dropped():
    images = [PILImage.new("RGB", (4, 4))] * 4
    features = Features(
        {
            "id": Value("int64"),
            "img": Image(),
            "coarse_label": ClassLabel(names=["x", "y"]),
            "fine_label": ClassLabel(names=["a", "b", "c"]),
        }
    )
    raw = Dataset.from_dict(
        {"id": [0, 1, 2, 3], "img": images, "coarse_label": [0, 1, 0, 1], "fine_label": [2, 0, 1, 2]}, features=features
    )
    prepared = prepare_columns(DatasetDict(train=raw, test=raw))
    assert prepared["train"].column_names == ["image", "label"]
    assert class_names(prepared) == ["a", "b", "c"] and prepared["test"]["label"][:] == [2, 0, 1, 2]
    assert prepare_columns(raw, label_column="coarse_label").features["label"].names == ["x", "y"]


def test_integer_and_string_labels_become_one_class_label_for_all_splits():
    images = [PILImage.new("L", (4, 4))] * 3
    ints = DatasetDict(
        train=Dataset.from_dict(
            {"picture": images, "label": [0, 1, 1]}, features=Features({"picture": Image(), "label": Value("int64")})
        ),
        validation=Dataset.from_dict(
            {"picture": images, "label": [3, 0, 0]}, features=Features({"picture": Image(), "label": Value("int64")})
        ),
    )
    prepared = prepare_columns(ints)
    assert class_names(prepared["train"]) == ["0", "1", "2", "3"] and prepared["validation"]["label"][:] == [3, 0, 0]
    strings = {
        split: Dataset.from_dict(
            {"image": images, "target": names}, features=Features({"image": Image(), "target": Value("string")})
        )
        for split, names in (("train", ["dog", "cat", "dog"]), ("validation", ["eel", "cat", "cat"]))
    }
    prepared = prepare_columns(DatasetDict(strings))
    assert class_names(prepared) == ["cat", "dog", "eel"]
    assert prepared["train"]["label"][:] == [1, 0, 1] and prepared["validation"]["label"][:] == [2, 0, 0]


def test_missing_or_wrong_columns_raise_naming_the_columns_and_the_argument():
    no_image = Dataset.from_dict({"pixels": [[0.0]], "label": [0]})
    with pytest.raises(ValueError, match=r"no image column.*'pixels'.*image_column="):
        prepare_columns(no_image)
    no_label = Dataset.from_dict(
        {"img": [PILImage.new("L", (2, 2))], "caption": ["x"]},
        features=Features({"img": Image(), "caption": Value("string")}),
    )
    with pytest.raises(ValueError, match=r"no label column.*'img'.*'caption'.*label_column="):
        prepare_columns(no_label)
    with pytest.raises(ValueError, match=r"`label_column`='digit' is not a column"):
        prepare_columns(no_label, label_column="digit")
    with pytest.raises(ValueError, match=r"column 'pixels' holds .* not images.*cast_column"):
        prepare_columns(no_image, image_column="pixels")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one source.*embedded:mnist.*train_dir"),
        ({"dataset_name": "embedded:mnist", "train_dir": "x"}, "exactly one source"),
        ({"dataset_name": "cifar10", "validation_dir": "x"}, "`validation_dir` needs `train_dir`"),
        ({"dataset_name": "embedded:cifar"}, "unknown embedded dataset.*embedded:digits"),
        ({"dataset_name": "embedded:mnist", "dataset_config_name": "x"}, "takes no `dataset_config_name`"),
        ({"dataset_name": "embedded:mnist", "validation_fraction": 1.0}, r"`validation_fraction` must be in \(0, 1\)"),
        ({"train_dir": "/no/such/folder"}, "`train_dir` must be a folder"),
    ],
)
def test_bad_sources_raise_listing_the_allowed_forms(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_image_dataset(**kwargs)


def test_transform_gives_pixels_in_0_1_at_the_models_size_and_channels(tiny_vit_dir, digits):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_dir, sigma=0.25)  # 3 x 28 x 28
    data = digits["validation"].with_transform(ImageClassificationTransform.for_model(model))
    batch = data[:5]
    assert batch["pixel_values"].shape == (5, 3, 28, 28) and batch["pixel_values"].dtype == torch.float32
    assert (
        0.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0 and batch["pixel_values"].max() > 0.5
    )
    torch.testing.assert_close(batch["pixel_values"][:, 0], batch["pixel_values"][:, 2])  # gray made RGB
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == digits["validation"]["label"][:5]
    collated = default_data_collator([data[i] for i in range(4)])  # per example, as the Trainer reads it
    assert collated["pixel_values"].shape == (4, 3, 28, 28)
    assert model(**collated).logits.shape == (4, 10)


def test_transform_converts_rgb_rgba_and_palette_images_for_a_grayscale_model(tiny_vit_gray_dir):
    model = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.25)
    transform = ImageClassificationTransform.for_model(model)
    images = [
        PILImage.new("RGB", (5, 6), (255, 255, 255)),
        PILImage.new("RGBA", (9, 9), (0, 0, 0, 0)),
        PILImage.new("P", (3, 3)),
    ]
    output = transform({"image": images, "label": [1, 2, 3]})
    assert output["pixel_values"].shape == (3, 1, 28, 28)
    assert output["pixel_values"][0].min() == 1.0 and output["pixel_values"][1].max() == 0.0
    assert output["labels"].tolist() == [1, 2, 3]
    assert list(transform({"image": images[:1]})) == ["pixel_values"]  # unlabeled batches: pixels only


def test_a_model_without_an_image_processor_takes_an_explicit_pixel_transform(tiny_resnet_dir, digits):
    model = SmoothedImageClassifier.from_pretrained(tiny_resnet_dir, sigma=0.25, image_mean=[0.5], image_std=[0.5])
    with pytest.raises(ValueError, match="no image processor"):
        ImageClassificationTransform.for_model(model)
    transform = ImageClassificationTransform(
        PixelTransform(ViTImageProcessorPil(size={"height": 16, "width": 16})), model.num_channels
    )
    pixels = digits["train"].with_transform(transform)[:2]["pixel_values"]
    assert pixels.shape == (2, 1, 16, 16)
    assert model(pixels).logits.shape == (2, 10)
    with pytest.raises(ValueError, match="`num_channels` must be 1"):
        ImageClassificationTransform(transform.pixel_transform, num_channels=4)


def test_check_labels_reads_labels_without_running_the_transform(digits):
    def fails(batch):
        raise AssertionError("check_labels must not run the transform")

    data = DatasetDict({name: split.with_transform(fails) for name, split in digits.items()})
    check_labels(data, num_labels=10)
    with pytest.raises(
        ValueError, match=r"split 'train' \(column 'label'\) lie in \[0, 9\].*num_labels=5.*ignore_mismatched_sizes"
    ):
        check_labels(data, num_labels=5)
    with pytest.raises(ValueError, match=r"lie in \[-1, 1\]"):
        check_labels(Dataset.from_dict({"label": [0, 1, -1]}), num_labels=2)


def test_a_split_other_than_validation_or_train_is_refused_naming_the_allowed_ones():
    from smoothing_hf.data import EvaluationDatasetArguments

    with pytest.raises(ValueError, match=r"`split` must be one of \['validation', 'train'\], got 'test'.*'test' split"):
        EvaluationDatasetArguments(dataset_name="embedded:digits", split="test")
    arguments = EvaluationDatasetArguments(dataset_name="embedded:digits")
    arguments.split = "test"  # set after construction: load_split used to raise a bare KeyError
    with pytest.raises(ValueError, match="`split` must be one of"):
        arguments.load_split()


def test_a_dataset_without_examples_is_an_error_naming_it(monkeypatch):
    import datasets

    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    empty = Dataset.from_dict({"image": [], "label": []}, features=features)
    full = Dataset.from_dict({"image": [PILImage.new("L", (4, 4))] * 2, "label": [0, 1]}, features=features)
    for splits, name in [({"train": empty}, "train"), ({"train": full, "test": empty}, "test")]:
        monkeypatch.setattr(datasets, "load_dataset", lambda *args, splits=splits, **kwargs: DatasetDict(splits))
        with pytest.raises(ValueError, match=f"dataset 'some/dataset' has no examples in its '{name}' split"):
            load_image_dataset("some/dataset")
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: DatasetDict(train=full.select([0])))
    with pytest.raises(ValueError, match="'some/dataset' has no validation split .*cannot hold out 0.2 of 1 example"):
        load_image_dataset("some/dataset")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [({"validation_fraction": float("nan")}, ValueError, r"`validation_fraction` must be in \(0, 1\), got nan"),
     ({"validation_fraction": "0.2"}, TypeError, "`validation_fraction` must be in"),
     ({"seed": -1}, ValueError, "`seed` must be a non-negative int")],
)
def test_bad_split_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_image_dataset("embedded:digits", **kwargs)
