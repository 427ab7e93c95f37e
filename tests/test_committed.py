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


def test_todays_preset_composes_a_committed_runs_identity():
    """A setting added since (data.crop_fill) leaves a run at its old value under its old name, and
    enters the identity at any other value."""
    from normexp.compose import compose

    path = RESULTS / "converged" / "runs" / "bn_b32x8_s0_0c0f7e5b" / record.IDENTITY
    recorded = record.read_json(path)
    overrides = ["experiment=converged", "norm=bn", "data.batch_size=32", "seed=0"]
    assert record.identity(compose(overrides), recorded["data_digest"]) == recorded
    reflect = record.identity(compose([*overrides, "data.crop_fill=reflect"]), recorded["data_digest"])
    assert reflect["data"]["crop_fill"] == "reflect" and record.run_name(reflect) != path.parent.name


def test_shared_runs_lists_name_committed_runs():
    listings = sorted(RESULTS.glob("*/" + record.SHARED))
    for listing in listings:
        for directory in record.shared_runs(listing.parent):  # raises on a missing run
            assert (directory / record.SUMMARY).is_file(), directory
            assert directory.parent.parent != listing.parent  # stored elsewhere, once


def _analysis_outputs(root: Path) -> dict[Path, bytes]:
    """The tables and verdicts of the analyses below `root` (relative path -> bytes): every file in a
    `tables/` folder and every verdict.json (figures and reports embed PNGs, whose bytes depend on
    the plotting library's version, and are left out)."""
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and (path.name == "verdict.json" or "tables" in path.relative_to(root).parts)}


@pytest.mark.slow
@pytest.mark.skipif(not COMMITTED, reason="no committed runs")
def test_every_committed_analysis_regenerates_to_the_committed_bytes(tmp_path):
    """scripts/regenerate_results.sh on a copy of results/ from which every table and verdict was
    removed: it writes back exactly the committed ones, byte for byte, and no other."""
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    for relative in _analysis_outputs(copy):
        (copy / relative).unlink()
    done = subprocess.run(["bash", str(RESULTS.parent / "scripts" / "regenerate_results.sh"), str(copy)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    written, committed = _analysis_outputs(copy), _analysis_outputs(RESULTS)
    assert sorted(written) == sorted(committed)
    assert [path for path in committed if written[path] != committed[path]] == []
    assert len(committed) > 50
