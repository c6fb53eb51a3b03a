"""Reporting: summary figures, exact curves and plots, comparison tables, the evaluate metric, report.py, and
the `python -m smoothing_hf.report` command line on our folders and other tools' raw TSVs."""

import json
import os
import re
import runpy
import subprocess
import sys

import evaluate
import pytest
import torch

from smoothing_hf.files import read_rows, write_rows
from smoothing_hf.report import main as report_main
from smoothing_hf.reporting import (
    certified_accuracy_curve,
    certified_accuracy_metric_path,
    compare_runs,
    comparison_latex,
    comparison_markdown,
    curve_styles,
    format_summary,
    plot_certified_accuracy,
    plots,
    read_checked_rows,
    read_run,
    summarize,
    summarize_run,
    write_report,
)
from smoothing_hf.reporting.comparison import comparison_rows, comparison_table

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
    return read_rows(tmp_path / "certify.tsv")


def run_folder(folder, rows, sigma=None, space=None):
    """A certify output folder; its summary.json records sigma and the space where given (as certify() writes
    them: the space at the top and in the settings)."""
    os.makedirs(folder)
    write_rows(rows, folder / "certify.tsv", list(rows[0]))
    if sigma is not None or space is not None:
        (folder / "summary.json").write_text(json.dumps({"space": space, "settings": {"sigma": sigma, "space": space}}))
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
    write_rows(rows, tmp_path / "copy.tsv", list(rows[0]))
    assert read_rows(tmp_path / "copy.tsv") == rows
    (tmp_path / "cohen.tsv").write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.912\t1\t0:01:02.500000\n"
    )
    assert read_rows(tmp_path / "cohen.tsv")[0]["time"] == pytest.approx(62.5)


def test_the_evaluate_metric_agrees_with_summarize(rows):
    metric = evaluate.load(certified_accuracy_metric_path(), keep_in_memory=True)
    inputs = {
        "predictions": [r["predict"] for r in rows],
        "radii": [r["radius"] for r in rows],
        "references": [r["label"] for r in rows],
    }
    summary = summarize(rows, RADII)
    result = metric.compute(**inputs)
    assert result == {
        **{f"certified_accuracy@{r}": value for r, value in summary["certified_accuracy"].items()},
        "acr": summary["acr"],
        "abstain_rate": summary["abstain_rate"],
        "clean_accuracy": summary["clean_accuracy"],
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


def test_every_curve_of_a_crowded_plot_has_its_own_colour_and_line_style(rows, tmp_path):
    styles = curve_styles(40)
    assert len({(style["color"], style["linestyle"]) for style in styles}) == 40  # the default cycle repeats after 10
    plot_certified_accuracy({f"method {i}": rows for i in range(13)}, tmp_path / "crowded.png")
    assert (tmp_path / "crowded.png").read_bytes().startswith(b"\x89PNG")


def better_at_large_radii(rows):
    """Examples 0 and 1 abstain, the wrong example 3 is right at radius 1.2: better at r = 1 and in ACR, worse
    below."""
    abstain, certified = {"predict": -1, "radius": 0.0, "correct": 0}, {"predict": 4, "radius": 1.2, "correct": 1}
    return [{**r, **abstain} if r["idx"] < 2 else {**r, **certified} if r["idx"] == 3 else r for r in rows]


def test_comparison_tables_mark_the_best_value_per_column(rows, tmp_path):
    other = better_at_large_radii(rows)
    folders = {"a_run": run_folder(tmp_path / "a", rows, sigma=0.25), "b": run_folder(tmp_path / "b", other)}
    compared = compare_runs(folders, RADII)
    assert [(c["name"], c["sigma"]) for c in compared] == [("a_run", 0.25), ("b", None)]
    expected_b = {"0": 2 / 6, "0.25": 2 / 6, "0.5": 2 / 6, "0.75": 1 / 6, "1": 1 / 6}
    assert compared[1]["certified_accuracy"] == pytest.approx(expected_b)

    lines = comparison_markdown(compared, RADII).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["run", "sigma", "n", "r = 0", "r = 0.25", "r = 0.5", "r = 0.75", "r = 1", "ACR"]
    assert all(len(line) == 9 for line in cells)
    assert cells[2] == [
        "a_run",
        "0.25",
        "6",
        "50.0*",
        "50.0*",
        "33.3",
        "16.7",
        "0.0",
        "0.275",
    ]  # r = 0.5, 0.75 tie: no mark
    assert cells[3] == ["b", "—", "6", "33.3", "33.3", "33.3", "16.7", "16.7*", "0.283*"]  # ACR (0.5 + 1.2) / 6
    latex = comparison_latex(compared, RADII)
    assert "a\\_run & 0.25 & 6 & \\textbf{50.0} & \\textbf{50.0} & 33.3 & 16.7 & 0.0 & 0.275 \\\\" in latex
    assert "b & --- & 6 &" in latex
    assert latex.count("\\textbf") == 4 and latex.count(" & ") == 3 * 8 and latex.rstrip().endswith("\\end{tabular}")


SPACE_32, SPACE_224 = "l2 in [0, 1] pixels of 32 x 32 x 3", "l2 in [0, 1] pixels of 224 x 224 x 3"


def test_runs_of_one_space_are_ranked_as_before_with_their_space_shown(rows, tmp_path):
    folders = {"a_run": run_folder(tmp_path / "a", rows, sigma=0.25, space=SPACE_32),
               "b": run_folder(tmp_path / "b", better_at_large_radii(rows), space=SPACE_32)}
    compared = compare_runs(folders, RADII)
    assert [row["space"] for row in compared] == [SPACE_32, SPACE_32]
    markdown = comparison_markdown(compared, RADII)
    cells = table_cells(markdown)
    assert cells[0][:3] == ["run", "space", "sigma"] and len(cells) == 4  # no note: one space
    assert cells[2] == ["a_run", SPACE_32, "0.25", "6", "50.0*", "50.0*", "33.3", "16.7", "0.0", "0.275"]
    assert cells[3] == ["b", SPACE_32, "—", "6", "33.3", "33.3", "33.3", "16.7", "16.7*", "0.283*"]
    latex = comparison_latex(compared, RADII)
    assert latex.count("\\textbf") == 4 and "not comparable" not in latex and "Run & Space & $\\sigma$" in latex


def test_runs_of_different_spaces_are_marked_and_never_ranked_together(rows, tmp_path, monkeypatch):
    # a and b certified at 32 x 32 rank against each other; c at 224 x 224 and the older d (no space
    # recorded: unknown, a space of its own) against no one, though c's figures would beat both
    better = better_at_large_radii(rows)
    folders = [run_folder(tmp_path / "a", rows, sigma=0.25, space=SPACE_32),
               run_folder(tmp_path / "b", better, space=SPACE_32),
               run_folder(tmp_path / "c", [{**r, "radius": 2.0, "predict": r["label"], "correct": 1} for r in rows],
                          space=SPACE_224),
               run_folder(tmp_path / "d", better, sigma=0.25)]
    compared = compare_runs(folders, RADII)
    assert [row["space"] for row in compared] == [SPACE_32, SPACE_32, SPACE_224, None]
    markdown = comparison_markdown(compared, RADII)
    table, note = markdown.split("\n\n")
    assert note == ("Radii of different spaces are not comparable (resizing changes l2 distances): the best value "
                    "is marked among the runs of one space only.")
    by_run = {line[0]: line for line in table_cells(table)[2:]}
    assert by_run["a"] == ["a", SPACE_32, "0.25", "6", "50.0*", "50.0*", "33.3", "16.7", "0.0", "0.275"]
    assert by_run["b"] == ["b", SPACE_32, "—", "6", "33.3", "33.3", "33.3", "16.7", "16.7*", "0.283*"]
    assert by_run["c"] == ["c", SPACE_224, "—", "6", "100.0", "100.0", "100.0", "100.0", "100.0", "2.000"]
    assert by_run["d"] == ["d", "unknown", "0.25", "6", "33.3", "33.3", "33.3", "16.7", "16.7", "0.283"]
    latex = comparison_latex(compared, RADII)
    assert latex.count("\\textbf") == 4 and "c & l2 in [0, 1] pixels of 224 x 224 x 3 & --- & 6 & 100.0 &" in latex
    assert "\\multicolumn{10}{l}{\\footnotesize Radii of different spaces are not comparable" in latex

    plotted = {}
    monkeypatch.setattr(plots, "plot_certified_accuracy", lambda curves, path, **kwargs: plotted.update(curves))
    write_report(folders, tmp_path / "report")
    assert list(plotted) == [f"a ({SPACE_32})", f"b ({SPACE_32})", f"c ({SPACE_224})", "d (unknown)"]
    assert markdown in (tmp_path / "report" / "report.md").read_text()
    assert "not comparable" in (tmp_path / "report" / "report.tex").read_text()


def test_the_method_comparison_ranks_within_a_space_too():
    def row(name, accuracy, acr, space):
        return {"name": name, "seeds": 1, "space": space, "num_examples": 10, "certified_accuracy": {"0": accuracy},
                "certified_accuracy_std": {"0": None}, "acr": acr, "acr_std": None, "trainable_parameters": None,
                "training_seconds": None, "samples_per_second": None}

    rows = [row("a", 0.9, 0.4, SPACE_32), row("b", 0.8, 0.5, SPACE_32), row("c", 0.95, 0.9, SPACE_224)]
    table, note = comparison_table(rows, radii=(0.0,)).split("\n\n")
    assert table.splitlines()[0] == "| method | space | trainable | train s | samples/s | r = 0 | ACR |"
    assert table.splitlines()[2:] == [f"| a | {SPACE_32} | — | — | — | 90.0* | 0.400 |",
                                      f"| b | {SPACE_32} | — | — | — | 80.0 | 0.500* |",
                                      f"| c | {SPACE_224} | — | — | — | 95.0 | 0.900 |"]
    assert "not comparable" in note and "not comparable" not in comparison_table(rows[:2], radii=(0.0,))
    assert comparison_table(rows, radii=(0.0,), latex=True).count("\\textbf") == 2


def test_the_method_comparison_keeps_each_methods_space_and_refuses_seeds_of_two(rows, tmp_path):
    seeds = [run_folder(tmp_path / f"seed{i}" / "certify", rows, sigma=0.25, space=space).parent
             for i, space in enumerate([SPACE_32, SPACE_32, SPACE_224])]
    older = run_folder(tmp_path / "older" / "certify", rows).parent  # no summary.json: no space recorded
    assert [row["space"] for row in comparison_rows({"lora": seeds[:2], "older": [older]}, RADII)] == [SPACE_32, None]
    with pytest.raises(ValueError, match=r"run 'mixed': its seeds certified in different spaces \(l2 .* 224 x 224"):
        comparison_rows({"mixed": seeds[1:]}, RADII)


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
        read_rows(tmp_path / "short.tsv")
    with pytest.raises(ValueError, match="`runs`"):
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


# ---------------------------------------------------------------------------------------------- the command line
# Figures by hand: certified accuracy at r = share of rows with correct = 1 and radius >= r;
# ACR = mean of radius * correct.
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
OURS = HEADER.replace("time\n", "time\tsamples\n") + "0\t7\t7\t0.75\t1\t0.0123\t1000\n1\t8\t8\t0.25\t1\t0.012\t3000\n"
SECONDS = HEADER + "0\t1\t1\t0.3\t1\t15.4\n1\t2\t2\t1.1\t1\t15.2\n2\t3\t5\t0.8\t0\t14.9\n3\t4\t-1\t0.0\t0\t16.0\n"
COHEN = HEADER + (  # Cohen's certify.py: time is str(datetime.timedelta)
    "0\t1\t1\t0.6\t1\t0:02:30.437045\n1\t2\t2\t0.2\t1\t0:02:29.000001\n2\t3\t3\t1.0\t1\t0:02:31.5\n3\t4\t1\t0.4\t0\t0:02:30.1\n"
)
TORN = (
    HEADER + "0\t1\t1\t0.5\t1\t1.0\n1\t2\t2\t0.25\t1\t1.0\n2\t3\t-1\t0.0\t0\t1.0\n3\t4\t4\t0.9"
)  # crash mid-write: no newline
HAND = {  # label: (n, certified accuracy at RADII as counts of rows, sum of radius * correct)
    "ours": (2, [2, 2, 1, 1, 0], 0.75 + 0.25),  # r = 0.75: radius 0.75 >= 0.75 counts
    "seconds": (4, [2, 2, 1, 1, 1], 0.3 + 1.1),  # the wrong 0.8 and the abstention never count
    "sigma_0.50": (4, [3, 2, 2, 1, 1], 0.6 + 0.2 + 1.0),  # r = 1: radius 1.0 >= 1 counts; file name has no extension
    "torn": (3, [2, 2, 1, 0, 0], 0.5 + 0.25),  # the torn 4th row is ignored
}


@pytest.fixture
def raw_runs(tmp_path):
    """Paths of: our output folder (sigma 0.25, a samples column), raw TSVs with seconds and with Cohen's
    timedeltas, a file cut short in its last line, a header-only file."""
    os.makedirs(tmp_path / "ours")
    (tmp_path / "ours" / "certify.tsv").write_text(OURS)
    (tmp_path / "ours" / "summary.json").write_text(json.dumps({"settings": {"sigma": 0.25}}))
    for name, text in (
        ("seconds.tsv", SECONDS),
        ("sigma_0.50", COHEN),
        ("torn.tsv", TORN),
        ("header_only.tsv", HEADER),
    ):
        (tmp_path / name).write_text(text)
    return [str(tmp_path / name) for name in ("ours", "seconds.tsv", "sigma_0.50", "torn.tsv", "header_only.tsv")]


def table_cells(text):
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.strip().splitlines()]


def test_report_on_folders_and_raw_tsvs_matches_hand_computed_figures(raw_runs, capsys):
    radii = ["0", "0.25", "0.5", "0.75", "1.0"]
    status = report_main([*raw_runs, "--radii", *radii, "--format", "markdown"])
    captured = capsys.readouterr()
    assert status == 0
    assert "torn.tsv, line 5: no newline at its end" in captured.err
    cells = table_cells(captured.out)
    assert cells[0] == [
        "run",
        "sigma",
        "n",
        "r = 0",
        "r = 0.25",
        "r = 0.5",
        "r = 0.75",
        "r = 1",
        "ACR",
        "samples / image",
    ]
    by_label = {line[0]: line for line in cells[2:]}
    assert list(by_label) == ["ours", "seconds", "sigma_0.50", "torn", "header_only"]
    for label, (n, counts, radius_sum) in HAND.items():
        line = by_label[label]
        assert line[2] == str(n)
        assert [cell.rstrip("*") for cell in line[3:8]] == [f"{100 * count / n:.1f}" for count in counts]
        assert line[8].rstrip("*") == f"{radius_sum / n:.3f}"
    assert by_label["ours"][1] == "0.25" and by_label["seconds"][1] == "—"  # sigma only where a summary.json says
    assert by_label["ours"][9] == "2000" and by_label["torn"][9] == "—"  # mean of the samples column (1000 + 3000) / 2
    assert by_label["header_only"] == ["header_only", "—", "0", *["—"] * 7]  # 0 examples: undefined, no division
    # best per column: r = 0, 0.25, 0.75 and ACR ours; r = 0.5 ours and Cohen's tie at 50.0;
    # r = 1 seconds and Cohen's at 25.0
    marked = {label: [i for i, cell in enumerate(line) if cell.endswith("*")] for label, line in by_label.items()}
    assert marked == {"ours": [3, 4, 5, 6, 8], "seconds": [7], "sigma_0.50": [5, 7], "torn": [], "header_only": []}


def test_raw_tsvs_read_both_time_formats_and_keep_extra_columns(raw_runs, tmp_path):
    assert [row["time"] for row in read_rows(raw_runs[1])] == pytest.approx([15.4, 15.2, 14.9, 16.0])
    assert read_rows(raw_runs[2])[0]["time"] == pytest.approx(150.437045)  # 0:02:30.437045
    (tmp_path / "long.tsv").write_text(HEADER + "0\t1\t1\t0.5\t1\t1 day, 0:00:01.5\n")
    assert read_rows(tmp_path / "long.tsv")[0]["time"] == pytest.approx(86401.5)
    ours = read_rows(os.path.join(raw_runs[0], "certify.tsv"))
    assert [row["samples"] for row in ours] == [1000, 3000] and isinstance(ours[0]["samples"], int)
    write_rows(ours, tmp_path / "copy.tsv", list(ours[0]))  # extra columns survive a round trip
    assert read_rows(tmp_path / "copy.tsv") == ours
    assert read_rows(raw_runs[4]) == []
    with pytest.warns(UserWarning, match=r"torn\.tsv, line 5: no newline at its end.*'3\\t4\\t4\\t0\.9'"):
        assert [row["idx"] for row in read_rows(raw_runs[3])] == [0, 1, 2]
    (tmp_path / "no_newline.tsv").write_text(HEADER.rstrip("\n"))  # a header alone, unterminated: still 0 examples
    assert read_rows(tmp_path / "no_newline.tsv") == []


def test_labels_latex_and_one_plot_with_every_curve(raw_runs, tmp_path, capsys):
    plot = tmp_path / "figures" / "curves.png"
    status = report_main([*raw_runs, "--labels", "A", "B", "C", "D", "E", "--format", "latex", "--plot", str(plot)])
    out, err = capsys.readouterr()
    assert status == 0 and "run 'E' has no examples" in err
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and os.listdir(plot.parent) == ["curves.png"]
    assert "Run & $\\sigma$ & $n$ & $r = 0$" in out
    assert (
        "A & 0.25 & 2 & \\textbf{100.0} & \\textbf{100.0} & \\textbf{50.0} & \\textbf{50.0} & 0.0 & "
        "\\textbf{0.500} & 2000 \\\\"
        in out
    )
    assert "E & --- & 0 & --- & --- & --- & --- & --- & --- & --- \\\\" in out


def test_python_dash_m_runs_the_command_line(raw_runs):
    done = subprocess.run(
        [sys.executable, "-m", "smoothing_hf.report", raw_runs[1], raw_runs[2], "--radii", "0", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert table_cells(done.stdout)[2:] == [
        ["seconds", "4", "50.0", "25.0", "0.350"],
        ["sigma_0.50", "4", "75.0*", "25.0", "0.450*"],
    ]


def test_bad_input_to_the_command_line_is_a_clear_error(raw_runs, tmp_path, capsys):
    def error(*argv):
        assert report_main([str(arg) for arg in argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing half-printed
        return captured.err

    (tmp_path / "no_radius.tsv").write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0.5\n")
    assert "no_radius.tsv is not a certification TSV: missing columns ['radius']" in error(
        raw_runs[1], tmp_path / "no_radius.tsv"
    )
    assert (
        f"{tmp_path / 'absent'} does not exist; each path must be a certification output folder or a TSV file"
        in error(raw_runs[1], tmp_path / "absent")
    )
    os.makedirs(tmp_path / "not_a_run")
    assert "not_a_run/certify.tsv does not exist" in error(tmp_path / "not_a_run")
    assert "`labels` must give one label per path: got 1 labels for 2 paths" in error(*raw_runs[1:3], "--labels", "a")
    assert "run labels must be unique: 'a' labels" in error(*raw_runs[1:3], "--labels", "a", "a")
    os.makedirs(tmp_path / "x" / "certify")
    os.makedirs(tmp_path / "y" / "certify")
    (tmp_path / "x" / "certify" / "certify.tsv").write_text(SECONDS)
    (tmp_path / "y" / "certify" / "certify.tsv").write_text(COHEN)
    message = error(tmp_path / "x" / "certify", tmp_path / "y" / "certify")  # both named "certify" by default
    assert "run labels must be unique: 'certify' labels" in message and "--labels" in message
    assert "`radii`" in error(raw_runs[1], "--radii", "-0.5")
    assert "no run has examples to plot" in error(raw_runs[4], "--plot", tmp_path / "empty.png")
    with pytest.raises(SystemExit) as exited:  # argparse's own errors: bad flag values
        report_main([raw_runs[1], "--format", "html"])
    assert exited.value.code == 2 and "invalid choice: 'html'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"empty\.tsv is empty"),
        (
            HEADER + "0\t1\t1\t0.5\t1\n1\t2\t2\t0.5\t1\t1.0\n",
            r"bad\.tsv, line 2: 5 tab-separated fields, the header has 6",
        ),
        (
            HEADER + "0\t1\t1\t0.5\t1\t1.0\n1\t2\t2\t0.x\t1\t1.0\n2\t2\t2\t0.5\t1\t1.0\n",
            r"bad\.tsv, line 3: not a certification row",
        ),
        (HEADER + "0\t1\t1\t0.5\t1\t1.0\t7\n", r"bad\.tsv, line 2: 7 tab-separated fields"),
        (HEADER + "0\t1\t1\t-0.5\t1\t1.0\n", r"bad\.tsv, line 2: radius must be a finite l2 distance >= 0"),
        (HEADER + "0\t1\t1\tnan\t1\t1.0\n", r"bad\.tsv, line 2: radius must be"),
        (HEADER + "0\t1\t1\t0.5\t2\t1.0\n", r"bad\.tsv, line 2: correct must be 0 or 1, got '2'"),
    ],
)
def test_a_malformed_line_before_the_last_is_an_error_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / ("empty.tsv" if not text else "bad.tsv")
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_rows(path)


# ---------------------------------------------------------------------------------------------- contradictory rows
# The report refuses a row that contradicts itself or another, naming file and line (the header is line 1).


def line(idx, label, predict, radius, correct, time="1.0"):
    """One line of a certify.tsv with Cohen's columns."""
    return f"{idx}\t{label}\t{predict}\t{radius}\t{correct}\t{time}\n"


GOOD = [line(0, 3, 3, 0.5, 1), line(1, 2, -1, 0.0, 0)]  # lines 2 and 3: a certified row and an abstention


def certify_folder(folder, lines, settings=None):
    """A run folder whose certify.tsv holds ``HEADER`` and ``lines``, with a summary.json where ``settings``."""
    os.makedirs(folder)
    (folder / "certify.tsv").write_text(HEADER + "".join(lines))
    if settings is not None:
        (folder / "summary.json").write_text(json.dumps({"settings": settings}))
    return folder


@pytest.mark.parametrize(
    "bad, message",
    [
        (line(0, 1, 1, 0.2, 1), r"idx 0 repeats the example of line 2"),
        (line(2, 4, 7, 0.2, 1), r"correct = 1 but predict = 7 is not label = 4"),
        (line(2, 4, 4, 0.2, 0), r"correct = 0 but predict = label = 4"),
        (line(2, 4, -1, 0.3, 0), r"an abstention \(predict = -1\) has radius 0\.0, got radius 0\.3"),
        (line(2, 4, -1, 0.0, 1), r"an abstention \(predict = -1\) is never correct, got correct = 1"),
        (line(-1, 4, 4, 0.3, 1), r"idx must be an int >= 0 .*got -1"),
        (line(2, -1, -1, 0.0, 0), r"label must be an int >= 0 .*got -1"),
        (line(2, 4, -2, 0.0, 0), r"predict must be an int >= -1 .*got -2"),
        (line(2, 4, 4, 0.3, 1, time="nan"), r"time must be a finite number of seconds >= 0, got nan"),
        # read_rows' own checks, reached through the report as well
        (line(2, 4, 4, "nan", 1), r"radius must be a finite l2 distance >= 0"),
        (line(2, 4, 4, -0.5, 1), r"radius must be a finite l2 distance >= 0"),
        (line(2, 4, 4, 0.5, 2), r"correct must be 0 or 1, got '2'"),
    ],
)
def test_the_report_refuses_a_contradictory_row_naming_file_and_line(tmp_path, bad, message):
    folder = certify_folder(tmp_path / "run", [*GOOD, bad, line(9, 0, 0, 0.1, 1)])
    expected = re.escape(f"{folder / 'certify.tsv'}, line 4: ") + message
    with pytest.raises(ValueError, match=expected):
        compare_runs([folder])
    with pytest.raises(ValueError, match=expected):
        write_report([folder], tmp_path / "report")
    assert not (tmp_path / "report").exists()  # refused before anything is written


def test_line_numbers_count_blank_lines_and_the_torn_last_line(tmp_path):
    lines = [GOOD[0], "\n", GOOD[1], "\n", line(0, 1, 1, 0.2, 1), "5\t1"]  # read_rows skips blank lines
    (tmp_path / "gaps.tsv").write_text(HEADER + "".join(lines))
    with pytest.warns(UserWarning, match="line 7: no newline"):
        with pytest.raises(ValueError, match=r"gaps\.tsv, line 6: idx 0 repeats the example of line 2"):
            read_checked_rows(tmp_path / "gaps.tsv")
    (tmp_path / "gaps.tsv").write_text(HEADER + "".join(lines[:4]) + "5\t1\t1\t0.2\t0\t1.0")
    with pytest.warns(UserWarning, match="line 6: no newline"):
        assert [row["idx"] for row in read_checked_rows(tmp_path / "gaps.tsv")] == [0, 1]


def test_each_modes_columns_are_checked(tmp_path):
    # fixed_radius: the radius tested where certified, else 0.0 (whether right or wrong)
    fixed = {"mode": "fixed_radius", "radius": 0.25, "sigma": 0.5}
    lines = [line(0, 3, 3, 0.25, 1), line(1, 3, 5, 0.0, 0), line(2, 1, 4, 0.25, 0)]
    run = read_run(certify_folder(tmp_path / "fixed", lines, fixed))
    assert [row["radius"] for row in run.rows] == [0.25, 0.0, 0.25] and run.sigma == 0.5
    other = certify_folder(tmp_path / "other", [*lines, line(3, 1, 1, 0.5, 1)], fixed)
    fixed_message = r"other.certify\.tsv, line 5: a fixed_radius run at radius 0\.25 .*got radius 0\.5"
    with pytest.raises(ValueError, match=fixed_message):
        read_run(other)
    # radii: the largest radius tested that is certified, else 0.0, and a 0/1 column per radius that agrees with it
    tested = {"mode": "radii", "radii": [0.5, 0.0, 0.25], "sigma": 0.5}
    radii_header = HEADER.replace("time\n", "time\tcertified_0.5\tcertified_0\tcertified_0.25\n")
    good = ["0\t3\t3\t0.5\t1\t1.0\t1\t1\t1\n", "1\t3\t3\t0.0\t1\t1.0\t0\t1\t0\n", "2\t3\t-1\t0.0\t0\t1.0\t0\t0\t0\n"]
    folder = certify_folder(tmp_path / "radii", [], tested)
    (folder / "certify.tsv").write_text(radii_header + "".join(good))
    run = read_run(folder)
    assert run.tested_radii == (0.0, 0.25, 0.5) and [row["certified_0.25"] for row in run.rows] == [1, 0, 0]
    row = summarize_run(run, (0.0, 0.25, 0.5, 0.75))
    assert row["certified_accuracy"] == {"0": 2 / 3, "0.25": 1 / 3, "0.5": 1 / 3, "0.75": None} and row["acr"] is None
    for bad, message in (("3\t3\t3\t0.75\t1\t1.0\t1\t1\t1\n", r"line 5: a radii run at radii \[0\.5, 0\.0, 0\.25\]"),
                         ("3\t3\t3\t0.25\t1\t1.0\t1\t1\t1\n", r"line 5: certified_0\.5 must be 0 where radius = 0\.25"),
                         ("3\t3\t3\t0.0\t1\t1.0\t0\t0\t0\n", r"line 5: certified_0 must be 1 where .*predict = 3")):
        (folder / "certify.tsv").write_text(radii_header + "".join(good) + bad)
        with pytest.raises(ValueError, match=message):
            read_run(folder)
    (folder / "certify.tsv").write_text(HEADER + "".join(good))
    with pytest.raises(ValueError, match="certified_0.5"):  # a radii run's columns are required
        read_run(folder)
    adaptive = certify_folder(tmp_path / "adaptive", [*lines, line(3, 1, 1, 0.5, 1)], {"mode": "adaptive"})
    assert len(read_run(adaptive).rows) == 4  # any radius >= 0
    # predict: no radius column; correct, abstentions and samples are still checked
    predict = tmp_path / "predict.tsv"
    columns = ("idx", "label", "predict", "correct", "time", "samples")
    header = "\t".join(columns) + "\n"
    predict.write_text(header + "0\t3\t3\t1\t0.5\t100\n1\t3\t-1\t0\t0.5\t100\n")
    assert len(read_checked_rows(predict, columns)) == 2
    predict.write_text(header + "0\t3\t3\t1\t0.5\t100\n1\t3\t-1\t1\t0.5\t100\n")
    with pytest.raises(ValueError, match=r"predict\.tsv, line 3: an abstention \(predict = -1\) is never correct"):
        read_checked_rows(predict, columns)
    predict.write_text(header + "0\t3\t3\t1\t0.5\t0\n")
    with pytest.raises(ValueError, match=r"predict\.tsv, line 2: samples must be an int >= 1 .*got 0"):
        read_checked_rows(predict, columns)


def test_the_command_line_refuses_a_contradictory_run_and_writes_no_plot(raw_runs, tmp_path, capsys):
    bad = certify_folder(tmp_path / "bad", [*GOOD, line(2, 4, 7, 0.2, 1)])
    message = f"{bad / 'certify.tsv'}, line 4: correct = 1 but predict = 7 is not label = 4"
    plot = tmp_path / "figures" / "curves.png"
    assert report_main([raw_runs[1], str(bad), "--plot", str(plot)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not plot.parent.exists()
    assert f"python -m smoothing_hf.report: error: {message}" in captured.err
    done = subprocess.run(
        [sys.executable, "-m", "smoothing_hf.report", raw_runs[1], str(bad)], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stdout == "" and message in done.stderr


def test_the_pipelines_own_rows_pass_the_checks(tiny_vit_gray_dir, tmp_path):
    from smoothing_hf import SmoothedImageClassifier
    from smoothing_hf.pipeline import certify

    model = SmoothedImageClassifier.from_pretrained(tiny_vit_gray_dir, sigma=0.5)
    generator = torch.Generator().manual_seed(0)
    dataset = [{"pixel_values": torch.rand(1, 28, 28, generator=generator), "labels": i % 10} for i in range(6)]
    settings = dict(n0=10, alpha=0.01, batch_size=128, seed=3)
    certify(model, dataset, output_dir=tmp_path / "certify", n=100, **settings)
    certify(model, dataset, output_dir=tmp_path / "fixed", mode="fixed_radius", radius=0.05, max_n=300, **settings)
    certify(model, dataset, output_dir=tmp_path / "radii", mode="radii", radii=[0.05, 0.0], max_n=300, **settings)
    compared = compare_runs([tmp_path / "certify", tmp_path / "fixed", tmp_path / "radii"], radii=(0.0, 0.05, 0.1))
    assert [(row["num_examples"], row["space"]) for row in compared] == [(6, "l2 in [0, 1] pixels of 28 x 28 x 1")] * 3
    # Beside a standard run, the sequential runs show the radii they tested only.
    assert [row["certified_accuracy"]["0.1"] is None for row in compared] == [False, True, True]
    assert [row["acr"] is None for row in compared] == [False, True, True]
    summary = json.loads((tmp_path / "radii" / "summary.json").read_text())
    assert compared[2]["certified_accuracy"]["0.05"] == summary["certified_accuracy"]["0.05"]
