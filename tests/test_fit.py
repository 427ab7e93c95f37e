"""normexp-fit (normexp.sweep.fit) reads its budget from the composed preset and fits the epochs to an allowance."""

import json
from pathlib import Path

import pytest

from normexp.cli import fit as fit_cli
from normexp.sweep import fit

RESULTS = Path(__file__).resolve().parents[1] / "results"

TIMING = {"startup_s": 10.0, "compile_s": 5.0, "sweep_epoch_s": 10.0}


def test_the_preset_is_read_from_the_composed_config_with_the_overrides():
    assert fit.preset("claim_gpu", []) == {"epochs": 100, "milestones": [30, 60, 90], "step_schedule": True,
                                    "require_parity": True, "runs": 2 * 6 * 5}
    short = fit.preset("claim_gpu", ["trainer.epochs=10", "optim.milestones=[5]", "seed=[0]",
                                     "hydra.launcher.n_jobs=3"])
    assert (short["epochs"], short["milestones"], short["runs"]) == (10, [5], 12)


def test_the_run_count_follows_the_sweep_a_command_line_makes():
    assert fit.preset("claim_gpu", ["norm=gn"])["runs"] == 6 * 5  # a plain value replaces the swept values
    assert fit.preset("claim_gpu", ["data.batch_size=2,32"])["runs"] == 2 * 2 * 5
    assert fit.preset("claim_gpu", ["model.depth=8,20"])["runs"] == 2 * 6 * 2 * 5  # a new sweep axis
    with pytest.raises(fit.FitError, match="trainer.epochs"):
        fit.preset("claim_gpu", ["trainer.epochs=5,10"])


def test_the_budget_scales_the_milestones_and_requires_parity_only_at_the_full_budget():
    full = fit.preset("claim_gpu", [])
    short = fit.budget(15 + 5 * 10 * 1.2 + 1, TIMING, 1.2, full)
    assert short["epochs"] == 5 and short["milestones"] == [2, 3, 4] and not short["require_parity"]
    assert fit.scaled_milestones(full, 2) == [1, 1, 1]  # every decay still taken: the LR ends as the preset's
    converged = fit.budget(1e9, TIMING, 1.2, full)
    assert converged["epochs"] == 100 and converged["milestones"] == [30, 60, 90] and converged["require_parity"]
    assert not fit.budget(1e9, TIMING, 1.2, {**full, "require_parity": False})["require_parity"]
    assert fit.scaled_milestones({**full, "epochs": 50}, 50) == [30, 60, 90]  # the preset's own, unchanged
    for allowance in (20, 15 + 1 * 10 * 1.2 + 1):  # no epoch fits; one fits, but a step schedule needs a milestone
        with pytest.raises(fit.FitError, match="too few epochs fit"):
            fit.budget(allowance, TIMING, 1.2, full)


def test_the_committed_5_epoch_sweep_used_the_milestones_the_fit_chooses_now():
    recorded = json.loads((RESULTS / "claim_gpu_5ep" / "budget.json").read_text())
    assert fit.scaled_milestones(fit.preset("claim_gpu", []), recorded["epochs"]) == recorded["milestones"]


class FailingSweep:
    """A sweep (as fit.Sweep) whose jobs all fail, writing no records; it notes each try's compile overrides."""

    def __init__(self) -> None:
        self.tried: list[list[str]] = []

    def train(self, overrides: list[str], timeout: float | None = None) -> int:
        self.tried.append([o for o in overrides if o.startswith(("runtime.capture", "runtime.compile"))])
        return 1


def test_a_failing_probe_falls_back_to_an_uncaptured_step_then_to_eager():
    sweep = FailingSweep()
    with pytest.raises(fit.FitError, match="captured, uncaptured and eager"):
        fit.probe(sweep, [], 64, 640, expected_runs=1)
    assert sweep.tried == [[], ["runtime.capture=false"], ["runtime.capture=false", "runtime.compile=false"]]


def test_the_milestones_are_set_only_for_a_step_schedule():
    chosen = {"epochs": 5, "milestones": [2, 3, 4], "require_parity": False}
    step = fit.fitted_overrides(fit.preset("claim_gpu", []), chosen)
    assert step == ["trainer.epochs=5", "optim.milestones=[2,3,4]", "verdict.require_parity=false"]
    cosine = fit.fitted_overrides(fit.preset("converged", []), {**chosen, "milestones": []})
    assert cosine == ["trainer.epochs=5", "verdict.require_parity=false"]


@pytest.mark.parametrize("override, problem", [
    ("trainer.epochs=5,10", "the fit chooses trainer.epochs itself: do not sweep them"),
    ("norm=zz", "norm=zz is invalid: no conf/norm/zz.yaml; allowed: bn, "),
    ("data.batch_size=0", "data.batch_size=0 is invalid: must be an integer >= 1"),  # before any probe trains
])
def test_bad_input_is_refused_in_one_line_with_exit_2(capsys, override, problem):
    assert fit_cli.main(["--seconds", "60", "--out", "/nonexistent", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("normexp-fit: " + problem) and "\n" not in err


def _probe_run(root: Path, name: str, epochs: list[dict]) -> None:
    """A probe run's folder as training leaves it: an identity and its epochs' records."""
    (root / name).mkdir(parents=True)
    (root / name / "identity.json").write_text("{}")
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(epoch) + "\n" for epoch in epochs))


def test_the_probe_takes_the_recorded_compilation_and_infers_it_only_from_older_records(tmp_path):
    _probe_run(tmp_path, "recorded", [{"seconds": 40.0, "compile_seconds": 25.0}, {"seconds": 10.0}])
    _probe_run(tmp_path, "older", [{"seconds": 40.0}, {"seconds": 10.0}])  # trained before it was recorded
    _probe_run(tmp_path, "one_epoch", [{"seconds": 40.0}])
    runs = fit.probe_epochs(tmp_path)
    assert [(r["run"], r["compile_s"]) for r in runs] == [("older", 30.0), ("recorded", 25.0)]
