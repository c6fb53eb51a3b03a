"""certify(): resumable, shardable, sample-parallel dataset certification with identical rows either way."""

import os

import numpy as np
import pytest
import torch

from smoothing_hf import SmoothedImageClassifier, derive_seed
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
    """A dataset that raises after ``limit`` items: a run killed midway."""

    def __init__(self, items, limit):
        self.items, self.limit, self.served = items, limit, 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
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
    assert lines[0].split("\t") == ["idx", "label", "predict", "correct", "time", "samples"] and len(lines) == 13
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
        ({"max_n": 500}, r"\['max_n'\] apply to mode 'adaptive' or 'fixed_radius' only"),
    ],
)
def test_bad_arguments(model, dataset, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        certify(model, dataset, output_dir=tmp_path, **{**SETTINGS, **kwargs})


@pytest.mark.parametrize("mode, option", [("fixed_radius", {"radius": 0.05}), ("adaptive", {"tolerance": 0.05})])
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
    else:
        answers = smoother.certify(pixels, n0=10, n=700, alpha=0.01, batch_size=256, seed=seeds, tolerance=0.05)
        expected = [(c.prediction, c.radius, c.samples) for c in answers]
    assert [(r["predict"], r["radius"], r["samples"]) for r in rows] == expected
    samples = [r["samples"] for r in rows]
    assert summary["samples_per_image"] == {"mean": pytest.approx(np.mean(samples)), "median": np.median(samples)}
    assert all(10 + 128 <= s <= 710 for s in samples)


def test_unlabelled_data_and_labels_outside_the_head_are_errors(model, dataset, tmp_path):
    unlabelled = [{"pixel_values": item["pixel_values"]} for item in dataset]
    with pytest.raises(ValueError, match="labelled examples"):
        certify(model, unlabelled, output_dir=tmp_path / "a", **SETTINGS)
    outside = [{**item, "labels": 12} for item in dataset]
    with pytest.raises(ValueError, match=r"outside the model's label range \[0, 10\)"):
        certify(model, outside, output_dir=tmp_path / "b", **SETTINGS)


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
