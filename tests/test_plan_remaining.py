"""The plan of a sweep that is partly done counts only what is left, and says what is done."""

from __future__ import annotations

from pathlib import Path

from normexp import record
from normexp.cli.plan import main as plan
from normexp.compose import compose

SWEEP = ["experiment=debug", "runtime.device=cpu", "norm=bn,ln", "seed=[0,1]"]


def _recorded(cfg, results_root: Path, seed: int, epochs: int, ended: bool) -> None:
    """A run of `cfg` with `seed` and `epochs` recorded (ended: with its summary), as the conductor writes it."""
    run = cfg.copy()
    run.seed = seed
    ident = record.identity(run, "some-data")
    directory = results_root / record.run_name(ident)
    record.write_setup(directory, ident, f"seed: {seed}\n")
    metrics = [{"epoch": e, "test_acc": 50.0} for e in range(1, epochs + 1)]
    record.write_progress(directory, metrics, [{"epoch": e, "step": e, "loss": 1.0} for e in range(1, epochs + 1)])
    if ended:
        record.write_summary(directory, {"status": record.FINISHED, "epochs_done": epochs, "compute_seconds": 600.0,
                                         "device": "cpu"})


def test_the_plan_of_a_half_done_sweep_counts_what_is_left(tmp_path, capsys):
    root = tmp_path / "runs"
    command = [*SWEEP, f"paths.results_root={root}"]
    assert plan(command) == 0
    assert capsys.readouterr().out.startswith("sweep plan: 2 job(s), 4 run(s), 8 run-epochs, 1 job(s) at a time")
    bn = compose([*command[:2], "norm=bn", f"paths.results_root={root}", "seed=[0,1]"])
    _recorded(bn, root, 0, 2, ended=True)
    _recorded(bn, root, 1, 1, ended=False)  # interrupted after its first epoch: resumes
    assert plan(command) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep plan: 2 job(s), 4 run(s), 5 run-epochs left of 8 (already done: 3 run-epochs; "
                          "1 of 4 run(s) ended), 1 job(s) at a time"), out
    assert "job 1: bn_b8_s0 bn_b8_s1 x 2 epochs  (norm=bn)  [done: bn_b8_s0 2/2 bn_b8_s1 1/2]" in out, out
    assert plan([*SWEEP[:2], "norm=bn", "seed=[0,1]", f"paths.results_root={root}"]) == 0
    assert "expected about 5 min at the pace" in capsys.readouterr().out  # 1 run-epoch left at 300 s, not 4


def test_the_plan_of_a_done_sweep_says_nothing_is_left(tmp_path, capsys):
    root = tmp_path / "runs"
    for norm in ("bn", "ln"):
        cfg = compose(["experiment=debug", "runtime.device=cpu", f"norm={norm}", f"paths.results_root={root}"])
        for seed in (0, 1):
            _recorded(cfg, root, seed, 2, ended=True)
    assert plan([*SWEEP, f"paths.results_root={root}"]) == 0
    out = capsys.readouterr().out
    assert "0 run-epochs left of 8 (already done: 8 run-epochs; 4 of 4 run(s) ended)" in out, out
    assert "nothing left to train: every run has ended" in out and "expected about" not in out
