"""scripts/claim_gpu.py reads its budget from the composed preset and fits the epochs to an allowance."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "claim_gpu.py"
spec = importlib.util.spec_from_file_location("claim_gpu", SCRIPT)
claim_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claim_gpu)

TIMING = {"startup_s": 10.0, "compile_s": 5.0, "sweep_epoch_s": 10.0}


def test_the_preset_is_read_from_the_composed_config_with_the_overrides():
    assert claim_gpu.preset([]) == {"epochs": 100, "milestone_fractions": [0.3, 0.6, 0.9],
                                    "require_parity": True, "runs": 2 * 6 * 3}
    short = claim_gpu.preset(["trainer.epochs=10", "optim.milestones=[5]", "seed=[0]"])
    assert short["epochs"] == 10 and short["milestone_fractions"] == [0.5] and short["runs"] == 12
    with pytest.raises(SystemExit, match="data.batch_size"):  # a sweep override would change the grid
        claim_gpu.preset(["data.batch_size=2,32"])


def test_the_budget_scales_the_milestones_and_requires_parity_only_at_the_full_budget():
    full = claim_gpu.preset([])
    short = claim_gpu.budget(15 + 5 * 10 * 1.2 + 1, TIMING, 1.2, full)
    assert short["epochs"] == 5 and short["milestones"] == [2, 3, 4] and not short["require_parity"]
    assert claim_gpu.scaled_milestones(full["milestone_fractions"], 2) == [1]
    assert claim_gpu.scaled_milestones(full["milestone_fractions"], 1) == []
    converged = claim_gpu.budget(1e9, TIMING, 1.2, full)
    assert converged["epochs"] == 100 and converged["milestones"] == [30, 60, 90] and converged["require_parity"]
    assert not claim_gpu.budget(1e9, TIMING, 1.2, {**full, "require_parity": False})["require_parity"]
    with pytest.raises(SystemExit, match="not even one epoch"):
        claim_gpu.budget(20, TIMING, 1.2, full)


def test_the_committed_5_epoch_sweep_used_the_milestones_the_script_chooses_now():
    recorded = json.loads((SCRIPT.parents[1] / "results" / "claim_gpu_5ep" / "budget.json").read_text())
    fractions = claim_gpu.preset([])["milestone_fractions"]
    assert claim_gpu.scaled_milestones(fractions, recorded["epochs"]) == recorded["milestones"]
