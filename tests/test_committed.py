"""Every committed run is still found by its name: today's code derives the same identity and
name from the run's recorded config as the code that trained it."""

import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from normexp import record

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMITTED = sorted(RESULTS.glob("*/runs/*/" + record.IDENTITY))


@pytest.mark.skipif(not COMMITTED, reason="no committed runs")
def test_committed_runs_resolve_to_their_names():
    for path in COMMITTED:
        recorded = record.read_json(path)
        config = OmegaConf.load(path.parent / record.CONFIG)
        numerics = record.numerics_version(recorded)
        assert record.identity(config, recorded["data_digest"], numerics) == recorded, path.parent.name
        assert record.run_name(recorded) == path.parent.name


def test_shared_runs_lists_name_committed_runs():
    listings = sorted(RESULTS.glob("*/" + record.SHARED))
    for listing in listings:
        for directory in record.shared_runs(listing.parent):  # raises on a missing run
            assert (directory / record.SUMMARY).is_file(), directory
            assert directory.parent.parent != listing.parent  # stored elsewhere, once


@pytest.mark.slow
@pytest.mark.skipif(not COMMITTED, reason="no committed runs")
def test_every_committed_analysis_regenerates_to_the_committed_bytes(tmp_path):
    """scripts/regenerate_results.sh on a copy of results/: every table (csv, md) and verdict.json
    comes out byte for byte as committed, and nothing else appears beside them (figures and the
    report embed PNGs, whose bytes depend on the plotting library's version, and are left out)."""
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    done = subprocess.run(["bash", str(RESULTS.parent / "scripts" / "regenerate_results.sh"), str(copy)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    compared = 0
    for path in sorted(p for p in copy.rglob("*") if p.is_file() and p.suffix in (".csv", ".md", ".json")):
        relative = path.relative_to(copy)
        if relative.parts[1] == "runs" or (len(relative.parts) > 2 and relative.parts[2] == "runs"):
            continue  # the run records themselves, read only
        committed = RESULTS / relative
        assert committed.is_file(), f"{relative} is written but not committed"
        assert path.read_bytes() == committed.read_bytes(), f"{relative} differs from the committed file"
        compared += 1
    assert compared > 50
