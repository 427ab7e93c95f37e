"""report.html written by the analyze CLI: one self-contained page, no JavaScript."""

import html
import json

import pandas as pd

from normexp.analysis.formatting import p_text
from normexp.analysis.report import REFERENCES
from normexp.analysis.verdict_text import describe_verdict
from normexp.cli.analyze import main as analyze
from tests.test_analysis import BN, HOLDS, write_run, write_sweep


def test_report_holds_the_verdict_every_figure_and_the_excluded_runs(tmp_path):
    write_sweep(tmp_path, **HOLDS)
    write_run(tmp_path, {"name": "ln"}, 2, 0, [60.0, 70.0])
    write_run(tmp_path, {"name": "in"}, 2, 0, [60.0, 69.0])  # with gn8, a group ablation: a fourth figure
    failed = write_run(tmp_path, BN, 8, 0, [60.0, 70.0], status="failed")
    assert analyze([str(tmp_path), "--set", "alpha=0.01"]) == 0
    page = (tmp_path / "report.html").read_text()
    result = json.loads((tmp_path / "verdict.json").read_text())
    assert html.escape(describe_verdict(result)) in page
    figures = list((tmp_path / "figures").glob("*.png"))
    assert len(figures) == 4 and page.count('<img src="data:image/png;base64,') == len(figures)
    assert "<script" not in page.lower()
    assert "<td>alpha</td>" in page and "<td>override</td>" in page  # each criterion's source
    assert failed.name in page and "RuntimeError: boom" in page
    assert all(source in page for source in REFERENCES) and "34.70" in page


def test_the_headline_gives_bn_minus_gn_in_accuracy_points_with_the_verdicts_sign(tmp_path):
    """GN ahead at 2 (in this sweep and in the GN paper: 34.7 % error against 24.1 %) reads below 0,
    as the verdict's gap; the norms' rows stay error."""
    write_sweep(tmp_path, **HOLDS)
    assert analyze([str(tmp_path)]) == 0
    headline = (tmp_path / "report.html").read_text().split("<h2")[2]
    rows = {row.split("<th>")[-1].split("</th>")[0]: row.split("</th>")[-1] for row in headline.split("<tr>")[2:]}
    gap = json.loads((tmp_path / "verdict.json").read_text())["checks"]["gn_beats_bn_at_smallest_batch"]["gap"]
    assert rows["bn - gn8 (accuracy points)"].split("<td>")[-1].startswith(f"{-gap:.2f}</td>")  # batch 2
    assert "<td>-10.60</td>" in headline and "<td>34.70</td>" in headline  # the GN paper at 2
    assert "BN's accuracy minus GN's" in headline


def test_a_folder_without_finished_runs_says_so_and_writes_nothing(tmp_path, capsys):
    write_run(tmp_path / "runs", BN, 2, 0, [40.0, 50.0], status="failed")
    assert analyze([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no finished runs" in err and "1 failed" in err and "nothing written" in err
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "tables").exists()


def test_a_sweep_of_many_norms_reports_its_comparison_tables_with_readable_p_values(tmp_path):
    write_sweep(tmp_path, **HOLDS)
    for seed, acc in enumerate((60.0, 60.2, 59.9)):  # LN far below BN at 64: p far below 0.0001
        write_run(tmp_path, {"name": "ln"}, 64, seed, [50.0, acc])
    assert analyze([str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "id='landscape'" in page
    assert all(f"tables/{name}" in page for name in ("versus_bn", "versus_gn8", "batch_change"))
    versus_bn = pd.read_csv(tmp_path / "tables" / "versus_bn.csv").set_index("norm")
    p = versus_bn.loc["ln", "p_two_sided"]
    assert p < 1e-4 and p_text(p) in page and p_text(p) in (tmp_path / "tables" / "versus_bn.md").read_text()
    assert "e-" in p_text(p) and p_text(0.01234) == "0.0123" and p_text(float("nan")) == "n/a"


def test_regenerating_a_report_from_the_same_records_gives_the_same_page(tmp_path):
    write_sweep(tmp_path, **HOLDS)
    assert analyze([str(tmp_path)]) == 0
    first = (tmp_path / "report.html").read_bytes()
    assert analyze([str(tmp_path)]) == 0
    assert (tmp_path / "report.html").read_bytes() == first


def test_the_report_has_a_badge_per_part_that_follows_its_outcome(tmp_path):
    write_sweep(tmp_path, bn_acc={32: 80.0, 2: 60.0}, gn_acc={32: 70.0, 2: 70.0})  # GN 10 behind BN at 32
    assert analyze([str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "<span class='verdict holds'>small-batch half: HOLDS (required)</span>" in page
    assert ("<span class='verdict undecided optional'>parity at 32: not assessed (not required at this budget)"
            "</span>") in page
