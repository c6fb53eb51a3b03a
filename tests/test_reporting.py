"""Reporting: summary figures, exact curves and plots, comparison tables, the evaluate metric, report.py."""

import json
import os
import runpy
import sys

import evaluate
import pytest

from smoothing_hf.reporting import (
    certified_accuracy_curve,
    certified_accuracy_metric_path,
    comparison_latex,
    comparison_markdown,
    compare_runs,
    format_summary,
    plot_certified_accuracy,
    read_tsv,
    summarize,
    write_tsv,
)

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
# Two abstentions, one wrong prediction with a radius, three correct ones at radii 0.9, 0.25 and 0.5.
TSV = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t3\t3\t0.9\t1\t0.5
1\t1\t1\t0.25\t1\t0.5
2\t2\t-1\t0.0\t0\t0.5
3\t4\t7\t0.6\t0\t0.5
4\t0\t0\t0.5\t1\t0.5
5\t5\t-1\t0.0\t0\t0.5
"""
EXPECTED = {  # by hand: correct with radius >= r out of 6
    "certified_accuracy": {"0": 3 / 6, "0.25": 3 / 6, "0.5": 2 / 6, "0.75": 1 / 6, "1": 0.0},
    "acr": (0.9 + 0.25 + 0.5) / 6,
    "abstain_rate": 2 / 6,
    "clean_accuracy": 3 / 6,
}


@pytest.fixture
def rows(tmp_path):
    (tmp_path / "certify.tsv").write_text(TSV)
    return read_tsv(tmp_path / "certify.tsv")


def run_folder(folder, rows, sigma=None):
    os.makedirs(folder)
    write_tsv(rows, folder / "certify.tsv")
    if sigma is not None:
        (folder / "summary.json").write_text(json.dumps({"settings": {"sigma": sigma}}))
    return folder


def test_summary_figures_match_hand_computed_ones(rows):
    summary = summarize(rows, RADII)
    assert summary["num_examples"] == 6
    assert summary["certified_accuracy"] == pytest.approx(EXPECTED["certified_accuracy"])
    for key in ("acr", "abstain_rate", "clean_accuracy"):
        assert summary[key] == pytest.approx(EXPECTED[key])
    assert format_summary(summary).splitlines()[2] == "| 50.0% | 50.0% | 33.3% | 16.7% | 0.275 | 33.3% |"


def test_the_curve_steps_at_every_distinct_radius(rows):
    radii, accuracy = certified_accuracy_curve(rows)
    assert radii.tolist() == [0.0, 0.25, 0.5, 0.6, 0.9]
    assert accuracy.tolist() == pytest.approx([3 / 6, 3 / 6, 2 / 6, 1 / 6, 1 / 6])


def test_tsv_round_trips_and_reads_cohens_time_format(rows, tmp_path):
    write_tsv(rows, tmp_path / "copy.tsv")
    assert read_tsv(tmp_path / "copy.tsv") == rows
    (tmp_path / "cohen.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.912\t1\t0:01:02.500000\n")
    assert read_tsv(tmp_path / "cohen.tsv")[0]["time"] == pytest.approx(62.5)


def test_the_evaluate_metric_agrees_with_summarize(rows):
    metric = evaluate.load(certified_accuracy_metric_path(), keep_in_memory=True)
    inputs = {"predictions": [r["predict"] for r in rows], "radii": [r["radius"] for r in rows],
              "references": [r["label"] for r in rows]}
    summary = summarize(rows, RADII)
    result = metric.compute(**inputs)
    assert result == {
        **{f"certified_accuracy@{r}": value for r, value in summary["certified_accuracy"].items()},
        "acr": summary["acr"], "abstain_rate": summary["abstain_rate"], "clean_accuracy": summary["clean_accuracy"],
    }
    overall = {k: result[k] for k in ("acr", "abstain_rate", "clean_accuracy")}
    assert metric.compute(**inputs, report_radii=[0.6]) == {"certified_accuracy@0.6": 1 / 6, **overall}
    with pytest.raises(ValueError, match="report_radii"):
        metric.compute(**inputs, report_radii=[-1.0])


def test_plot_is_a_png_written_without_leftovers(rows, tmp_path):
    path = tmp_path / "plot" / "curve.png"
    os.makedirs(path.parent)
    plot_certified_accuracy({"from rows": rows, "from file": tmp_path / "certify.tsv"}, path, title="sigma = 0.25")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert os.listdir(path.parent) == ["curve.png"]
    with pytest.raises(ValueError, match="`path`"):
        plot_certified_accuracy({"a": rows}, tmp_path / "plot" / "curve.txt")
    assert os.listdir(path.parent) == ["curve.png"]


def test_comparison_tables_mark_the_best_value_per_column(rows, tmp_path):
    # run b: examples 0 and 1 abstain, the wrong example 3 is right at radius 1.2: better at r = 1 and in ACR, worse below
    abstain, certified = {"predict": -1, "radius": 0.0, "correct": 0}, {"predict": 4, "radius": 1.2, "correct": 1}
    other = [{**r, **abstain} if r["idx"] < 2 else {**r, **certified} if r["idx"] == 3 else r for r in rows]
    folders = {"a_run": run_folder(tmp_path / "a", rows, sigma=0.25), "b": run_folder(tmp_path / "b", other)}
    compared = compare_runs(folders, RADII)
    assert [(c["name"], c["sigma"]) for c in compared] == [("a_run", 0.25), ("b", None)]
    expected_b = {"0": 2 / 6, "0.25": 2 / 6, "0.5": 2 / 6, "0.75": 1 / 6, "1": 1 / 6}
    assert compared[1]["certified_accuracy"] == pytest.approx(expected_b)

    lines = comparison_markdown(compared, RADII).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["run", "sigma", "r = 0", "r = 0.25", "r = 0.5", "r = 0.75", "r = 1", "ACR"]
    assert all(len(line) == 8 for line in cells)
    assert cells[2] == ["a_run", "0.25", "50.0*", "50.0*", "33.3", "16.7", "0.0", "0.275"]  # r = 0.5 and 0.75 tie: no mark
    assert cells[3] == ["b", "-", "33.3", "33.3", "33.3", "16.7", "16.7*", "0.283*"]  # ACR (0.5 + 1.2) / 6
    latex = comparison_latex(compared, RADII)
    assert "a\\_run & 0.25 & \\textbf{50.0} & \\textbf{50.0} & 33.3 & 16.7 & 0.0 & 0.275 \\\\" in latex
    assert latex.count("\\textbf") == 4 and latex.count(" & ") == 3 * 7 and latex.rstrip().endswith("\\end{tabular}")


def test_report_example_runs_end_to_end(rows, tmp_path, capsys):
    a, b = run_folder(tmp_path / "a", rows, sigma=0.25), run_folder(tmp_path / "b", rows[:4], sigma=0.5)
    argv = sys.argv
    sys.argv = ["report.py", "--runs", f"sigma-0.25={a}", f"sigma-0.5={b}", "--output_dir", str(tmp_path / "report")]
    try:
        runpy.run_path(os.path.join(os.path.dirname(__file__), os.pardir, "examples", "report.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert sorted(os.listdir(tmp_path / "report")) == ["certified_accuracy.png", "report.md", "report.tex"]
    printed = capsys.readouterr().out
    assert "| sigma-0.25 | 0.25 |" in printed and printed.strip() in (tmp_path / "report" / "report.md").read_text()


def test_bad_input_names_the_argument_or_path(rows, tmp_path):
    (tmp_path / "short.tsv").write_text("idx\tlabel\tpredict\tradius\n0\t1\t1\t0.5\n")
    with pytest.raises(ValueError, match=r"short\.tsv.*missing columns \['correct', 'time'\]"):
        read_tsv(tmp_path / "short.tsv")
    with pytest.raises(ValueError, match="`folders`"):
        compare_runs([])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"empty.certify\.tsv does not exist"):
        compare_runs({"empty": tmp_path / "empty"})
    with pytest.raises(ValueError, match="`radii`"):
        summarize(rows, [-0.5])
    with pytest.raises(ValueError, match="`curves`"):
        plot_certified_accuracy({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"radii \[2.0\] are not in"):
        comparison_markdown(compare_runs([run_folder(tmp_path / "a", rows)]), [2.0])
