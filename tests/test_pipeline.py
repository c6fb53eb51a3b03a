"""certify(): resumable, shardable, sample-parallel dataset certification with identical rows either way."""

import os

import numpy as np
import pytest
import torch

from smoothing_hf import SmoothedImageClassifier, derive_seed
from smoothing_hf.certification import DEFAULT_ADAPTIVE_CONFIDENCE, DEFAULT_CONFIDENCE
from smoothing_hf.files import read_rows
from smoothing_hf.pipeline import certify, merge_shards

SETTINGS = dict(n0=10, n=300, alpha=0.01, batch_size=128, seed=3)


@pytest.fixture(scope="module")
def model(tiny_vit_gray_dir):
    return SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.5)


@pytest.fixture(scope="module")
def dataset():
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.rand(1, 28, 28, generator=generator), "labels": i % 10} for i in range(12)]


def rows_without_time(path):
    return [{k: v for k, v in row.items() if k != "time"} for row in read_rows(path)]


@pytest.fixture(scope="module")
def reference(model, dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    certify(model, dataset, output_dir=folder, **SETTINGS)
    return rows_without_time(folder / "certify.tsv")


def test_a_run_writes_cohens_columns_summary_and_settings(model, dataset, reference, tmp_path):
    summary = certify(model, dataset, output_dir=tmp_path, max_examples=5, skip=2, **SETTINGS)
    rows = read_rows(tmp_path / "certify.tsv")
    assert [r["idx"] for r in rows] == [0, 2, 4, 6, 8]
    assert rows_without_time(tmp_path / "certify.tsv") == [r for r in reference if r["idx"] in (0, 2, 4, 6, 8)]
    assert summary["num_examples"] == 5 and summary["settings"]["n"] == 300
    assert sorted(os.listdir(tmp_path)) == [
        "certified_accuracy.png",
        "certify.log",
        "certify.tsv",
        "settings.json",
        "summary.json",
    ]
    assert (tmp_path / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_rows_do_not_depend_on_the_batch_size_or_sample_parallel_mode(model, dataset, reference, tmp_path, batch_size):
    certify(model, dataset, output_dir=tmp_path / "a", **{**SETTINGS, "batch_size": batch_size})
    assert rows_without_time(tmp_path / "a" / "certify.tsv") == reference
    certify(model, dataset, output_dir=tmp_path / "b", sample_parallel=True, **{**SETTINGS, "batch_size": batch_size})
    assert rows_without_time(tmp_path / "b" / "certify.tsv") == reference


class FailsAfter:
    """A dataset that raises once ``limit`` items have been read for certification: a run killed midway.
    (The run first reads every selected example once to check it; those reads are not counted.)"""

    def __init__(self, items, limit):
        self.items, self.limit, self.served, self.checked = items, limit, 0, set()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        if index not in self.checked:
            self.checked.add(index)
            return self.items[index]
        self.served += 1
        if self.served > self.limit:
            raise RuntimeError("killed")
        return self.items[index]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(model, dataset, reference, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        certify(model, FailsAfter(dataset, 5), output_dir=tmp_path, **{**SETTINGS, "batch_size": 300})
    assert not (tmp_path / "certify.tsv").exists()  # nothing final is half-written
    progress = tmp_path / "progress-0.tsv"
    assert 1 <= len(progress.read_text().splitlines()) - 1 <= 5  # the header, then a row per finished image
    with open(progress, "a") as handle:  # a kill in the middle of a line leaves a torn row: ignored
        handle.write("11\t1\t")
    resumed = FailsAfter(dataset, 100)
    certify(model, resumed, output_dir=tmp_path, **SETTINGS)
    assert resumed.served < len(dataset)  # the rows already done were not certified again
    assert rows_without_time(tmp_path / "certify.tsv") == reference
    assert not progress.exists()


def test_a_finished_run_is_extended_not_redone(model, dataset, reference, tmp_path):
    certify(model, dataset, output_dir=tmp_path, max_examples=4, **SETTINGS)
    counting = FailsAfter(dataset, 100)
    certify(model, counting, output_dir=tmp_path, **SETTINGS)
    assert counting.served == len(dataset) - 4
    assert rows_without_time(tmp_path / "certify.tsv") == reference


def test_resuming_with_other_settings_is_an_error(model, dataset, tmp_path):
    certify(model, dataset, output_dir=tmp_path, max_examples=2, **SETTINGS)
    for change in ({"n": 301}, {"n0": 11}, {"alpha": 0.02}, {"seed": 4}):
        with pytest.raises(ValueError, match=f"{next(iter(change))}="):
            certify(model, dataset, output_dir=tmp_path, max_examples=2, **{**SETTINGS, **change})
    other_sigma = SmoothedImageClassifier(
        model.model, model.config.__class__(**{**model.config.to_dict(), "sigma": 0.25})
    )
    with pytest.raises(ValueError, match="sigma=0.5 there, 0.25 now"):
        certify(other_sigma, dataset, output_dir=tmp_path, max_examples=2, **SETTINGS)


def test_resuming_radii_mode_with_other_radii_or_another_confidence_sequence_is_an_error(model, dataset, tmp_path):
    radii = dict(SETTINGS, mode="radii", max_n=400, radii=[0.0, 0.05])
    certify(model, dataset, output_dir=tmp_path, max_examples=2, **radii)
    for change in ({"radii": [0.0, 0.02]}, {"radii": [0.05, 0.0]}, {"confidence": "betting"}, {"max_n": 500},
                   {"futility": 0.05}):
        with pytest.raises(ValueError, match=f"{next(iter(change))}="):
            certify(model, dataset, output_dir=tmp_path, max_examples=2, **{**radii, **change})
    certify(model, dataset, output_dir=tmp_path, max_examples=3, **radii)  # the same run extends
    assert [r["idx"] for r in read_rows(tmp_path / "certify.tsv")] == [0, 1, 2]


def test_the_randomized_bound_gives_the_smoothers_rows_whatever_the_batch_and_is_checked_on_resume(
    model, dataset, reference, tmp_path
):
    summary = certify(model, dataset, output_dir=tmp_path / "a", bound_seed=4, **SETTINGS)
    rows = rows_without_time(tmp_path / "a" / "certify.tsv")
    certify(model, dataset, output_dir=tmp_path / "b", bound_seed=4, sample_parallel=True,
            **{**SETTINGS, "batch_size": 50})
    assert rows_without_time(tmp_path / "b" / "certify.tsv") == rows
    pixels = torch.stack([item["pixel_values"] for item in dataset])
    seeds = [derive_seed(SETTINGS["seed"], idx) for idx in range(len(dataset))]
    answers = model.smoother().certify(pixels, n0=10, n=300, alpha=0.01, batch_size=256, seed=seeds, bound_seed=4)
    assert [(r["predict"], r["radius"]) for r in rows] == [(c.prediction, c.radius) for c in answers]
    assert all(r["radius"] >= classical["radius"] for r, classical in zip(rows, reference))
    assert summary["settings"]["bound_seed"] == 4
    assert summary["acr"] > np.mean([r["radius"] * r["correct"] for r in reference])
    with pytest.raises(ValueError, match="bound_seed=4 there, 5 now"):
        certify(model, dataset, output_dir=tmp_path / "a", bound_seed=5, **SETTINGS)
    with pytest.raises(ValueError, match="bound_seed=4 there, None now"):
        certify(model, dataset, output_dir=tmp_path / "a", **SETTINGS)


def test_three_shards_merge_into_the_single_run(model, dataset, reference, tmp_path):
    shards = [tmp_path / f"shard-{i}" for i in range(3)]
    for index, folder in enumerate(shards):
        certify(model, dataset, output_dir=folder, num_shards=3, shard_index=index, **SETTINGS)
    merge_shards(shards, tmp_path / "merged")
    assert rows_without_time(tmp_path / "merged" / "certify.tsv") == reference

    with pytest.raises(ValueError, match="shards 0..2 once each"):
        merge_shards(shards[:2], tmp_path / "bad")
    with pytest.raises(ValueError, match="shards 0..2 once each"):
        merge_shards([shards[0], shards[0], shards[2]], tmp_path / "bad")
    rows = (shards[1] / "certify.tsv").read_text().splitlines()
    (shards[1] / "certify.tsv").write_text("\n".join(rows[:-1]) + "\n")  # drop one example
    with pytest.raises(ValueError, match="missing from the shards"):
        merge_shards(shards, tmp_path / "bad")
    (shards[1] / "certify.tsv").write_text(
        "\n".join(rows + [(shards[0] / "certify.tsv").read_text().splitlines()[1]]) + "\n"
    )
    with pytest.raises(ValueError, match="appear in more than one shard"):
        merge_shards(shards, tmp_path / "bad")
    other = tmp_path / "other"
    certify(model, dataset, output_dir=other, num_shards=3, shard_index=1, **{**SETTINGS, "n": 200})
    with pytest.raises(ValueError, match=r"different settings \['n'\]"):
        merge_shards([shards[0], other, shards[2]], tmp_path / "bad")


def test_predict_mode_writes_predictions_with_abstentions(model, dataset, tmp_path):
    summary = certify(model, dataset, output_dir=tmp_path, mode="predict", n=200, alpha=0.01, batch_size=256)
    lines = (tmp_path / "predict.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["idx", "label", "predict", "correct", "time", "samples", "pixel_digest"]
    assert len(lines) == 13
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["abstain_rate"] <= 1
    parallel = certify(
        model,
        dataset,
        output_dir=tmp_path / "p",
        mode="predict",
        n=200,
        alpha=0.01,
        batch_size=64,
        sample_parallel=True,
    )
    assert (parallel["accuracy"], parallel["abstain_rate"]) == (summary["accuracy"], summary["abstain_rate"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n0": 0}, "`n0` must be a positive int"),
        ({"n": 0}, "`n` must be a positive int"),
        ({"mode": "attack"}, "`mode` must be one of"),
        ({"skip": 0}, "`skip` must be a positive int"),
        ({"shard_index": 3, "num_shards": 3}, r"`shard_index` must be an int in \[0, num_shards=3\)"),
        ({"max_examples": 0}, "`max_examples`"),
        ({"mode": "fixed_radius", "radius": 0.25}, "needs `max_n`"),
        ({"mode": "fixed_radius", "radius": 0.25, "max_n": 5}, r"needs `max_n`.*>= n0 = 10"),
        ({"mode": "fixed_radius", "radius": -0.25, "max_n": 500}, "needs `radius`"),
        ({"mode": "fixed_radius", "max_n": 500}, "needs `radius`"),
        ({"mode": "adaptive", "max_n": 500, "tolerance": 0.0}, "needs `tolerance`"),
        (
            {"mode": "adaptive", "max_n": 500, "tolerance": 0.1, "radius": 0.2},
            r"\['radius'\] apply to mode 'fixed_radius' only",
        ),
        ({"mode": "adaptive", "max_n": 500, "tolerance": 0.1, "sample_parallel": True}, "splits images over processes"),
        ({"radius": 0.25}, r"\['radius'\] apply to mode 'fixed_radius' only"),
        ({"max_n": 500}, r"\['max_n'\] apply to mode 'adaptive' or 'fixed_radius' or 'radii' only"),
        ({"confidence": "betting"}, r"\['confidence'\] apply to mode 'adaptive' or 'fixed_radius' or 'radii' only"),
        ({"mode": "radii", "radii": [0.25]}, "needs `max_n`"),
        ({"mode": "radii", "max_n": 5, "radii": [0.25]}, r"needs `max_n`.*>= n0 = 10"),
        ({"mode": "radii", "max_n": 500, "radii": []}, "`radii` must be a non-empty sequence"),
        ({"mode": "radii", "max_n": 500, "radii": [0.25, 0.5, 0.25]}, "`radii` must not repeat a radius"),
        ({"mode": "radii", "max_n": 500, "radii": [0.25, -0.5]}, r"`radii\[1\]` must be a finite number >= 0"),
        ({"mode": "radii", "max_n": 500, "radii": [float("nan")]}, r"`radii\[0\]` must be a finite number >= 0"),
        ({"mode": "radii", "max_n": 500, "confidence": "wald"}, "`confidence` must be one of"),
        ({"mode": "radii", "max_n": 500, "futility": 1.0}, "`futility` must be"),
        ({"mode": "radii", "max_n": 500, "confidence": "two_stage"}, "the adaptive mode's two-stage radius"),
        ({"mode": "adaptive", "max_n": 100, "tolerance": 0.1, "confidence": "two_stage"},
         r"`max_n` must be > 128 for confidence='two_stage'"),
        ({"mode": "adaptive", "max_n": 100, "tolerance": 0.1}, r"`max_n` must be > 128 for confidence='two_stage'"),
        ({"mode": "adaptive", "max_n": 500, "tolerance": 0.1, "confidence": "one_sided"},
         "decides radius thresholds only"),
        ({"mode": "adaptive", "max_n": 500, "tolerance": 0.1, "futility": 0.05},
         r"\['futility'\] apply to mode 'fixed_radius' or 'radii' only"),
        ({"mode": "radii", "max_n": 500, "sample_parallel": True}, "splits images over processes"),
        ({"bound_seed": -1}, "`bound_seed`"),
        ({"mode": "radii", "max_n": 500, "bound_seed": 1},
         r"\['bound_seed'\] apply to mode 'adaptive' or 'certify' only"),
        ({"mode": "adaptive", "max_n": 500, "tolerance": 0.1, "confidence": "bonferroni", "bound_seed": 1},
         "`bound_seed` .* applies to mode 'certify' and to mode='adaptive' with confidence='two_stage'"),
        ({"alpha": float("nan")}, "`alpha`"),
        ({"alpha": 1.0}, "`alpha`"),
        ({"seed": -1}, "`seed`"),
        ({"batch_size": 0}, "`batch_size` must be a positive int"),
        ({"mode": "adaptive", "max_n": 500, "tolerance": float("inf")}, "needs `tolerance`"),
        ({"mode": "adaptive", "max_n": 500, "tolerance": 0.1, "growth": 1.0}, "`growth`"),
        ({"skip": 5, "num_shards": 4, "shard_index": 3}, r"no examples to certify: the dataset has 12, and skip=5"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(model, dataset, tmp_path, kwargs, message):
    folder = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        certify(model, dataset, output_dir=folder, **{**SETTINGS, **kwargs})
    assert not folder.exists()
    certify(model, dataset, output_dir=folder, max_examples=1, **SETTINGS)  # the corrected command runs there


@pytest.mark.parametrize(
    "mode, option",
    [("fixed_radius", {"radius": 0.05}), ("adaptive", {"tolerance": 0.05}),
     ("adaptive", {"tolerance": 0.05, "confidence": "bonferroni"}), ("adaptive", {"tolerance": 0.05, "bound_seed": 9}),
     ("radii", {"radii": [0.05, 0.0, 0.02]}), ("radii", {"radii": [0.02], "confidence": "bonferroni"}),
     ("radii", {"radii": [0.0, 0.02], "confidence": "one_sided", "futility": 0.1})],
)
def test_sequential_modes_give_the_smoothers_answers_whatever_the_batch_size(model, dataset, tmp_path, mode, option):
    settings = dict(n0=10, max_n=700, alpha=0.01, seed=3, mode=mode, **option)
    summary = certify(model, dataset, output_dir=tmp_path / "a", batch_size=128, **settings)
    rows = rows_without_time(tmp_path / "a" / "certify.tsv")
    certify(model, dataset, output_dir=tmp_path / "b", batch_size=50, **settings)
    assert rows_without_time(tmp_path / "b" / "certify.tsv") == rows
    pixels = torch.stack([item["pixel_values"] for item in dataset])
    seeds = [derive_seed(3, idx) for idx in range(len(dataset))]
    smoother = model.smoother()
    if mode == "fixed_radius":
        answers = smoother.certify_at_radius(pixels, 0.05, n0=10, max_n=700, alpha=0.01, batch_size=256, seed=seeds)
        expected = [(d.prediction, 0.05 if d.certified else 0.0, d.samples) for d in answers]
        assert set(summary["certified_accuracy"]) == {"0", "0.05"} and "acr" not in summary
    elif mode == "radii":
        radii, confidence = option["radii"], option.get("confidence", DEFAULT_CONFIDENCE)
        answers = smoother.certify_at_radii(
            pixels, radii, n0=10, max_n=700, alpha=0.01, batch_size=256, seed=seeds, confidence=confidence,
            futility=option.get("futility"),
        )
        expected = [(d.prediction, max([r for r, c in zip(radii, d.certified) if c], default=0.0), d.samples)
                    for d in answers]
        assert [tuple(r[f"certified_{radius:g}"] for radius in radii) for r in rows] == [
            tuple(map(int, d.certified)) for d in answers
        ]
        assert set(summary["certified_accuracy"]) == {f"{r:g}" for r in radii} and "acr" not in summary
        assert summary["settings"]["radii"] == radii and summary["settings"]["confidence"] == confidence
        assert summary["settings"]["futility"] == option.get("futility")
        assert list(rows[0]) == ["idx", "label", "predict", "radius", "correct",
                                 *(f"certified_{r:g}" for r in radii), "samples", "pixel_digest"]
    else:
        answers = smoother.certify(pixels, n0=10, n=700, alpha=0.01, batch_size=256, seed=seeds, tolerance=0.05,
                                   confidence=option.get("confidence", DEFAULT_ADAPTIVE_CONFIDENCE),
                                   bound_seed=option.get("bound_seed"))
        assert summary["settings"]["confidence"] == option.get("confidence", DEFAULT_ADAPTIVE_CONFIDENCE)
        assert summary["settings"]["bound_seed"] == option.get("bound_seed")
        expected = [(c.prediction, c.radius, c.samples) for c in answers]
    assert [(r["predict"], r["radius"], r["samples"]) for r in rows] == expected
    samples = [r["samples"] for r in rows]
    assert summary["samples_per_image"] == {"mean": pytest.approx(np.mean(samples)), "median": np.median(samples)}
    assert all(10 + 128 <= s <= 710 for s in samples)


def test_an_empty_dataset_is_refused_before_anything_is_written(model, tmp_path):
    with pytest.raises(ValueError, match="no examples to certify: the dataset has 0"):
        certify(model, [], output_dir=tmp_path / "run", **SETTINGS)
    assert not (tmp_path / "run").exists()


def test_bad_examples_anywhere_in_the_selection_are_refused_before_anything_is_written(model, dataset, tmp_path):
    unlabelled = [*dataset[:11], {"pixel_values": dataset[11]["pixel_values"]}]
    with pytest.raises(ValueError, match="labelled examples"):
        certify(model, unlabelled, output_dir=tmp_path / "a", **SETTINGS)
    outside = [*dataset[:11], {**dataset[11], "labels": 12}]
    with pytest.raises(ValueError, match=r"outside the model's label range \[0, 10\)"):
        certify(model, outside, output_dir=tmp_path / "b", **SETTINGS)
    bright = [*dataset[:11], {**dataset[11], "pixel_values": dataset[11]["pixel_values"] * 255}]
    with pytest.raises(ValueError, match=r"dataset example 11: .*\[0, 1\]"):
        certify(model, bright, output_dir=tmp_path / "c", **SETTINGS)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_random_transform_is_an_error_not_a_wrong_row(model, dataset, tmp_path):
    class Jittered(FailsAfter):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return {**item, "pixel_values": (item["pixel_values"] + 0.01 * torch.rand(1)).clamp(0, 1)}

    with pytest.raises(ValueError, match="changed between two reads.*deterministic transform"):
        certify(model, Jittered(dataset, 100), output_dir=tmp_path, **SETTINGS)


def test_resuming_on_another_dataset_of_the_same_size_is_an_error(model, dataset, tmp_path):
    certify(model, dataset, output_dir=tmp_path, max_examples=6, **SETTINGS)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    other = [{**item, "pixel_values": item["pixel_values"].flip(-1)} for item in dataset]  # same size and labels
    with pytest.raises(ValueError, match=r"certify.tsv, line 2: the row of example 0 .*not certified on this "
                                         r"dataset's example 0"):
        certify(model, other, output_dir=tmp_path, **SETTINGS)
    relabelled = [{**item, "labels": (item["labels"] + 1) % 10} for item in dataset]
    with pytest.raises(ValueError, match="the row of example 0 .label 0"):
        certify(model, relabelled, output_dir=tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match=r"dataset=\{.*'name': None.*there, \{.*'name': 'embedded:mnist'"):
        certify(model, dataset, output_dir=tmp_path, dataset_name="embedded:mnist", **SETTINGS)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # untouched


def test_a_smaller_selection_than_the_folder_holds_is_an_error(model, dataset, tmp_path):
    certify(model, dataset, output_dir=tmp_path, max_examples=10, **SETTINGS)
    with pytest.raises(ValueError, match=r"row for example 4, which this run does not select .*max_examples=4"):
        certify(model, dataset, output_dir=tmp_path, max_examples=4, **SETTINGS)
    summary = certify(model, dataset, output_dir=tmp_path, max_examples=10, **SETTINGS)
    assert summary["num_examples"] == 10 and summary["settings"]["max_examples"] == 10


def test_a_row_whose_idx_does_not_match_its_image_is_an_error(model, dataset, reference, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        certify(model, FailsAfter(dataset, 3), output_dir=tmp_path, **SETTINGS)
    progress = tmp_path / "progress-0.tsv"
    lines = progress.read_text().splitlines()
    lines[2] = "\t".join(["7", *lines[2].split("\t")[1:]])  # the row of example 1 under idx 7
    progress.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="progress-0.tsv, line 3: the row of example 7"):
        certify(model, dataset, output_dir=tmp_path, **SETTINGS)


def test_merging_shards_into_one_of_them_is_refused(model, dataset, tmp_path):
    shards = [tmp_path / f"shard-{i}" for i in range(2)]
    for index, folder in enumerate(shards):
        certify(model, dataset, output_dir=folder, num_shards=2, shard_index=index, max_examples=4, **SETTINGS)
    before = (shards[1] / "certify.tsv").read_bytes()
    with pytest.raises(ValueError, match="is one of the shard folders"):
        merge_shards(shards, shards[1])
    assert (shards[1] / "certify.tsv").read_bytes() == before


def test_certify_reports_through_the_evaluate_metric(model, dataset, tmp_path):
    import evaluate

    from smoothing_hf.reporting import certified_accuracy_metric_path

    metric = evaluate.load(certified_accuracy_metric_path())
    summary = certify(model, dataset, output_dir=tmp_path, evaluate_metric=metric, **SETTINGS)
    assert summary["evaluate"]["acr"] == pytest.approx(summary["acr"])
    assert summary["evaluate"]["certified_accuracy@0.5"] == pytest.approx(summary["certified_accuracy"]["0.5"])


def test_a_row_appended_after_a_torn_line_does_not_join_it(model, dataset, reference, tmp_path):
    # A torn progress line followed by a second interruption used to join the next row ("11\t1\t" + "4\t...").
    with pytest.raises(RuntimeError, match="killed"):
        certify(model, FailsAfter(dataset, 2), output_dir=tmp_path, **SETTINGS)
    progress = tmp_path / "progress-0.tsv"
    with open(progress, "a") as handle:
        handle.write("11\t1\t")
    with pytest.raises(RuntimeError, match="killed"):
        certify(model, FailsAfter(dataset, 2), output_dir=tmp_path, **SETTINGS)
    assert [row["idx"] for row in read_rows(progress, ("idx", "label", "predict", "radius"))] == [0, 1, 2, 3]
    certify(model, dataset, output_dir=tmp_path, **SETTINGS)
    assert rows_without_time(tmp_path / "certify.tsv") == reference


KILLED_RUN = """
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from smoothing_hf import SmoothedImageClassifier
from smoothing_hf.pipeline import certify
torch.set_num_threads(1)
model = SmoothedImageClassifier.from_pretrained(sys.argv[1], sigma=0.5)
generator = torch.Generator().manual_seed(0)
dataset = [{"pixel_values": torch.rand(1, 28, 28, generator=generator), "labels": i % 10} for i in range(12)]
print("certifying", flush=True)
certify(model, dataset, output_dir=sys.argv[2], n0=10, n=20000, alpha=0.01, batch_size=200, seed=3)
"""


def test_runs_killed_at_random_points_resume_to_the_uninterrupted_rows(model, dataset, tiny_vit_gray_dir, tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    settings = dict(n0=10, n=20000, alpha=0.01, batch_size=200, seed=3)
    certify(model, dataset, output_dir=tmp_path / "reference", **settings)
    reference = rows_without_time(tmp_path / "reference" / "certify.tsv")
    folder, chooser, kills = tmp_path / "killed", random.Random(0), 0
    for _ in range(5):  # kill -9 after a random delay; after a kill, sometimes tear the last row as a torn write does
        child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, tiny_vit_gray_dir, str(folder)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert child.stdout.readline().strip() == "certifying"
        time.sleep(chooser.uniform(0.2, 2.0))
        if child.poll() is not None:
            break
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
        progress = folder / "progress-0.tsv"
        if progress.exists() and chooser.random() < 0.5:
            data = progress.read_bytes()
            start = data.rfind(b"\n", 0, len(data) - 1) + 1  # the last line's first byte
            if start > data.find(b"\n") + 1:  # a row, not the header
                progress.write_bytes(data[: chooser.randrange(start + 1, len(data))])  # cut inside the row
    subprocess.run([sys.executable, "-c", KILLED_RUN, tiny_vit_gray_dir, str(folder)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert kills >= 3
    rows = rows_without_time(folder / "certify.tsv")
    assert rows == reference  # nothing missing, nothing repeated, each idx with its own label and image
    assert [row["label"] for row in rows] == [item["labels"] for item in dataset]
