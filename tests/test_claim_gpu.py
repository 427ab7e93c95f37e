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
    assert claim_gpu.preset([]) == {"epochs": 100, "milestones": [30, 60, 90], "step_schedule": True,
                                    "require_parity": True, "runs": 2 * 6 * 5}
    short = claim_gpu.preset(["trainer.epochs=10", "optim.milestones=[5]", "seed=[0]", "hydra.launcher.n_jobs=3"])
    assert (short["epochs"], short["milestones"], short["runs"]) == (10, [5], 12)


def test_the_run_count_follows_the_sweep_a_command_line_makes():
    assert claim_gpu.preset(["norm=gn"])["runs"] == 6 * 5  # a plain value replaces the swept values
    assert claim_gpu.preset(["data.batch_size=2,32"])["runs"] == 2 * 2 * 5
    assert claim_gpu.preset(["model.depth=8,20"])["runs"] == 2 * 6 * 2 * 5  # a new sweep axis
    with pytest.raises(SystemExit, match="trainer.epochs"):
        claim_gpu.preset(["trainer.epochs=5,10"])


def test_the_budget_scales_the_milestones_and_requires_parity_only_at_the_full_budget():
    full = claim_gpu.preset([])
    short = claim_gpu.budget(15 + 5 * 10 * 1.2 + 1, TIMING, 1.2, full)
    assert short["epochs"] == 5 and short["milestones"] == [2, 3, 4] and not short["require_parity"]
    assert claim_gpu.scaled_milestones(full, 2) == [1, 1, 1]  # every decay still taken: the LR ends as the preset's
    converged = claim_gpu.budget(1e9, TIMING, 1.2, full)
    assert converged["epochs"] == 100 and converged["milestones"] == [30, 60, 90] and converged["require_parity"]
    assert not claim_gpu.budget(1e9, TIMING, 1.2, {**full, "require_parity": False})["require_parity"]
    assert claim_gpu.scaled_milestones({**full, "epochs": 50}, 50) == [30, 60, 90]  # the preset's own, unchanged
    for allowance in (20, 15 + 1 * 10 * 1.2 + 1):  # no epoch fits; one fits, but a step schedule needs a milestone
        with pytest.raises(SystemExit, match="too few epochs fit"):
            claim_gpu.budget(allowance, TIMING, 1.2, full)


def test_the_committed_5_epoch_sweep_used_the_milestones_the_script_chooses_now():
    recorded = json.loads((SCRIPT.parents[1] / "results" / "claim_gpu_5ep" / "budget.json").read_text())
    assert claim_gpu.scaled_milestones(claim_gpu.preset([]), recorded["epochs"]) == recorded["milestones"]


def test_a_failing_probe_falls_back_to_an_uncaptured_step_then_to_eager(monkeypatch):
    tried = []
    monkeypatch.setattr(claim_gpu, "train", lambda overrides: tried.append(
        [o for o in overrides if o.startswith(("runtime.capture", "runtime.compile"))]))
    monkeypatch.setattr(claim_gpu, "probe_epochs", lambda root: [])  # every try fails
    with pytest.raises(SystemExit, match="captured, uncaptured and eager"):
        claim_gpu.probe([], 64, 640, expected_runs=1)
    assert tried == [[], ["runtime.capture=false"], ["runtime.capture=false", "runtime.compile=false"]]
