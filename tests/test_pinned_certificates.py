"""Certificates pinned before the package was reorganized (issue 15): the same tiny model, data and seeds must
give the same rows, radius to 1e-12, in every mode of the pipeline and in the statistics core. A change here
is a change of every published number: it needs a reason, not a new pin."""

import csv

import pytest
import torch
from conftest import tiny_vit
from transformers import ViTImageProcessorPil

import smoothing_hf
from smoothing_hf import SmoothedImageClassifier, Smoother

PINNED = {  # (idx, predict, radius, samples); predict mode has no radius
    "certify": [(0, 9, 0.396693528314313, 410), (1, 6, 0.12262969528639292, 410), (2, 9, 0.5331462218114755, 410),
                (3, 9, 0.5688005178061206, 410), (4, 9, 0.5091388909662032, 410), (5, 9, 0.5688005178061206, 410)],
    "predict": [(0, 9, None, 300), (1, 6, None, 300), (2, 9, None, 300), (3, 9, None, 300), (4, 9, None, 300),
                (5, 9, None, 300)],
    "fixed_radius": [(0, 9, 0.1, 138), (1, 6, 0.1, 522), (2, 9, 0.1, 138), (3, 9, 0.1, 138), (4, 9, 0.1, 138),
                     (5, 9, 0.1, 138)],
    "adaptive": [(0, 9, 0.4161165046763502, 522), (1, 6, 0.07395370324642755, 138), (2, 9, 0.5854477254335427, 2010),
                 (3, 9, 0.6912016275968795, 2010), (4, 9, 0.6200580478541193, 2010), (5, 9, 0.6912016275968795, 2010)],
    # Pinned when the betting confidence sequence and the radii mode came (issue 19).
    "adaptive-betting": [(0, 9, 0.36230605682461076, 394), (1, 6, 0.06742284890721292, 266),
                         (2, 9, 0.5086075888303582, 778), (3, 9, 0.6077862536421352, 1162),
                         (4, 9, 0.5379701689697711, 906), (5, 9, 0.6077862536421352, 1162)],
    "radii-betting": [(0, 9, 0.3, 2010), (1, 6, 0.1, 522), (2, 9, 0.5, 778), (3, 9, 0.5, 394), (4, 9, 0.5, 650),
                      (5, 9, 0.5, 394)],
    "radii-bonferroni": [(0, 9, 0.3, 2010), (1, 6, 0.1, 522), (2, 9, 0.5, 522), (3, 9, 0.5, 522), (4, 9, 0.5, 522),
                         (5, 9, 0.5, 522)],
}
RUNS = {  # name: (mode, its settings); the sequential modes' first pins were taken with the bonferroni sequence
    "certify": ("certify", dict(n0=10, n=400)),
    "predict": ("predict", dict(n=300)),
    "fixed_radius": ("fixed_radius", dict(n0=10, radius=0.1, max_n=2000, confidence="bonferroni")),
    "adaptive": ("adaptive", dict(n0=10, tolerance=0.05, max_n=2000, confidence="bonferroni")),
    "adaptive-betting": ("adaptive", dict(n0=10, tolerance=0.05, max_n=2000, confidence="betting")),
    "radii-betting": ("radii", dict(n0=10, radii=[0.0, 0.1, 0.3, 0.5], max_n=2000, confidence="betting")),
    "radii-bonferroni": ("radii", dict(n0=10, radii=[0.0, 0.1, 0.3, 0.5], max_n=2000, confidence="bonferroni")),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pinned-vit")
    tiny_vit(num_channels=1).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)
    return SmoothedImageClassifier.from_pretrained(folder, sigma=0.25)


@pytest.fixture(scope="module")
def dataset():
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.rand(1, 28, 28, generator=generator), "labels": i % 10} for i in range(6)]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pipeline_rows_are_the_pinned_ones(model, dataset, tmp_path, name, one_thread):
    mode, settings = RUNS[name]
    smoothing_hf.certify(model, dataset, output_dir=tmp_path, alpha=0.01, batch_size=100, seed=7, mode=mode,
                         **settings)
    with open(tmp_path / ("predict.tsv" if mode == "predict" else "certify.tsv"), newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [(int(r["idx"]), int(r["predict"]), int(r["samples"])) for r in rows] == [
        (idx, predict, samples) for idx, predict, _, samples in PINNED[name]
    ]
    if mode != "predict":
        assert [float(r["radius"]) for r in rows] == pytest.approx([p[2] for p in PINNED[name]], abs=1e-12)


def test_smoother_certificates_on_the_linear_boundary_are_the_pinned_ones(linear_boundary):
    images = torch.stack([linear_boundary.image_at(d) for d in (0.05, 0.3, -0.6, 1.0)])
    smoother = Smoother(linear_boundary, num_classes=2, sigma=0.5)
    certificates = smoother.certify(images, n0=20, n=1000, alpha=0.001, batch_size=300, seed=11)
    assert [(c.prediction, c.count) for c in certificates] == [(-1, 443), (1, 720), (0, 874), (1, 979)]
    assert [c.radius for c in certificates] == pytest.approx(
        [0.0, 0.2258199202582216, 0.49427157858044773, 0.8811258568592432], abs=1e-12
    )
