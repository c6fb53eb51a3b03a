"""examples/certify.py in two real processes (torchrun on CPU) gives the single-process rows."""

import os
import shutil
import subprocess
import sys

import pytest

from smoothing_hf.files import read_rows

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))


def run_certify(output_dir, model_dir, processes: int, *extra: str) -> None:
    arguments = [
        "examples/certify.py",
        "--model_name_or_path",
        model_dir,
        "--sigma",
        "0.5",
        "--dataset_name",
        "embedded:digits",
        "--n0",
        "10",
        "--n",
        "300",
        "--alpha",
        "0.01",
        "--batch_size",
        "64",
        "--max_examples",
        "8",
        "--skip",
        "5",
        "--output_dir",
        str(output_dir),
        *extra,
    ]
    # torchrun would read a script flag such as --n as an abbreviation of its own options without the "--".
    launcher = (
        [sys.executable] if processes == 1 else [TORCHRUN, "--standalone", "--nproc_per_node", str(processes), "--"]
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, *arguments], cwd=ROOT, env=environment, check=True, capture_output=True, timeout=300)


def without_time(path):
    return [{k: v for k, v in row.items() if k != "time"} for row in read_rows(path)]


ADAPTIVE = ["--mode", "adaptive", "--max_n", "600", "--tolerance", "0.05"]
ADAPTIVE_BONFERRONI = [*ADAPTIVE, "--confidence", "bonferroni"]  # the default is the two-stage rule
RADII = ["--mode", "radii", "--max_n", "600", "--radii", "0", "0.02", "0.05"]


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")
@pytest.mark.parametrize(
    "options, parallel_options",
    [([], []), ([], ["--sample_parallel", "true"]), (ADAPTIVE, ADAPTIVE), (ADAPTIVE_BONFERRONI, ADAPTIVE_BONFERRONI),
     (RADII, RADII)],
    ids=["example-parallel", "sample-parallel", "adaptive", "adaptive-bonferroni", "radii"],
)
def test_two_processes_give_the_single_process_rows(tiny_vit_gray_dir, tmp_path, options, parallel_options):
    run_certify(tmp_path / "one", tiny_vit_gray_dir, 1, *options)
    run_certify(tmp_path / "two", tiny_vit_gray_dir, 2, *parallel_options)
    # Identical but for the time column, which is a measurement.
    assert without_time(tmp_path / "two" / "certify.tsv") == without_time(tmp_path / "one" / "certify.tsv")
    log = (tmp_path / "two" / "certify.log").read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" in log  # two ranks really ran
