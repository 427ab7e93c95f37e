"""Damaged run records: every run file the analysis reads, truncated, emptied or with garbage
appended, is named with its path and what to do (no run drops out or counts silently); a damaged
checkpoint stops a resume in one line naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from normexp import record
from normexp.cli import analyze
from normexp.compose import compose
from normexp.train import conductor
from tests.helpers import run_dir, tiny_run

READ_BY_THE_ANALYSIS = (record.IDENTITY, record.CONFIG, record.METRICS, record.TRAIN_LOSS, record.SUMMARY,
                        record.STARTS)


@pytest.fixture(scope="module")
def finished(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished tiny run: its results root and the overrides that trained it."""
    tmp = tmp_path_factory.mktemp("finished")
    overrides = tiny_run(image_folder, tmp)
    conductor.train_job(compose(overrides))
    return tmp / "runs", overrides


def _copy(finished: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished results root, and its one run folder."""
    root = shutil.copytree(finished[0], tmp_path / "runs")
    (run,) = [p.parent for p in root.rglob(record.IDENTITY)]
    return root, run


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        cut = len(data) // 2
        cut -= data[cut - 1:cut] == b"\n"  # mid-line: a cut on a line's end is caught by the counts instead
        path.write_bytes(data[:cut])
    elif how == "emptied":
        path.write_bytes(b"")
    else:
        path.write_bytes(data + b'\n{"garbage": ')


@pytest.mark.parametrize("how", ["truncated", "emptied", "garbage-appended"])
@pytest.mark.parametrize("name", READ_BY_THE_ANALYSIS)
def test_the_analysis_names_a_damaged_run_file_and_what_to_do(finished, tmp_path, capsys, name, how):
    root, run = _copy(finished, tmp_path)
    _damage(run / name, how)
    assert analyze.main([str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{run / name} is damaged" in err and "delete the run folder" in err, err


def test_an_intact_copy_analyzes(finished, tmp_path, capsys):
    root, _ = _copy(finished, tmp_path)
    assert analyze.main([str(root), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err


def test_a_metrics_file_cut_on_a_line_end_is_flagged_against_the_summary(finished, tmp_path):
    from normexp.analysis.collect import load_runs

    root, run = _copy(finished, tmp_path)
    lines = (run / record.METRICS).read_text().splitlines(keepends=True)
    (run / record.METRICS).write_text("".join(lines[:-1]))
    with pytest.raises(record.DamagedRecord, match="1 epoch.s. recorded, summary.json says 2"):
        load_runs(root)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "emptied"])
def test_a_damaged_checkpoint_stops_the_resume_in_one_line_naming_it(finished, tmp_path, how):
    root, run = _copy(finished, tmp_path)
    (run / record.SUMMARY).unlink()  # the run resumes from its checkpoint
    _damage(run / record.CHECKPOINT, how)
    overrides = [o for o in finished[1] if not o.startswith("paths.results_root=")] + [f"paths.results_root={root}"]
    done = subprocess.run([sys.executable, "-m", "normexp.cli.train", *overrides], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2 and "Traceback" not in out, out
    (error,) = [line for line in out.splitlines() if "ERROR" in line]
    assert f"{run / record.CHECKPOINT} is damaged" in error and "delete it to train that run again" in error, out


def test_repeated_runs_are_named_by_their_folders(finished, tmp_path, capsys):
    root, run = _copy(finished, tmp_path)
    shutil.copytree(run, root / "copy" / run.name)
    assert analyze.main([str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{run}, {root / 'copy' / run.name}; keep one" in err, err


def test_the_fixture_is_one_run(finished):
    assert [p.parent for p in finished[0].rglob(record.IDENTITY)] == [run_dir(compose(finished[1]))]
