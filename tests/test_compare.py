"""normexp-compare: committed run sets side by side, and one-line refusals of bad input."""

from pathlib import Path

import pytest

from normexp.cli import compare

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_the_verdicts_of_two_seed_sets_are_one_table_with_a_column_each(capsys):
    assert compare.main(["verdicts", f"seeds 0-2={RESULTS / 'claim'}", f"seeds 3-5={RESULTS / 'claim_seeds_3-5'}"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "seeds 0-2" in header and "seeds 3-5" in header


def test_the_same_runs_of_two_sweeps_are_paired_by_name(capsys):
    assert compare.main(["runs", str(RESULTS / "claim"), str(RESULTS / "device_check")]) == 0
    out = capsys.readouterr().out
    assert "sum of job minutes" in out and "only before, left out" in out


@pytest.mark.parametrize("argv, problem", [
    (["verdicts", "no-label"], "each argument is LABEL=DIR"),
    (["verdicts", "a=x", "a=y"], "each LABEL must be different"),
    (["verdicts", "a=/nonexistent"], "cannot read /nonexistent/verdict.json"),
    (["runs", "/nonexistent", "."], "/nonexistent is not a folder"),
])
def test_bad_input_is_refused_in_one_line_with_exit_2(capsys, argv, problem):
    assert compare.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("normexp-compare: ") and problem in err and "\n" not in err
