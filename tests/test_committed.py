"""Every committed run is still found by its name: today's code derives the same identity and
name from the run's recorded config as the code that trained it."""

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
