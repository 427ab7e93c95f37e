"""Store, tables, verdict and figures on synthetic run records (no training)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from normexp import records
from normexp.analysis import Criteria, accuracy_table, compare_sweeps, convergence_table, error_table, verdict
from normexp.analyze import main as analyze
from normexp.store import load_runs


def write_run(root: Path, norm: dict, batch: int, seed: int, accs: list[float], status: str = "finished") -> Path:
    """A run record as the trainer writes it, with the given per-epoch test accuracies."""
    directory = root / f"{norm['name']}{norm.get('groups', '')}_b{batch}_s{seed}_fake"
    directory.mkdir(parents=True)
    config = {"norm": norm, "seed": seed, "data": {"batch_size": batch, "train_subset": None},
              "model": {"depth": 8, "base_width": 8}, "trainer": {"epochs": len(accs)}}
    (directory / records.CONFIG).write_text(yaml.safe_dump(config))
    (directory / records.LOG).write_text("log\n")
    done = accs if status == "finished" or status == "diverged" else accs[:-1]
    metrics = [{"epoch": e + 1, "test_acc": a, "test_loss": 1.0, "train_loss": 2.0 - a / 100, "train_acc": a,
                "lr": 0.1, "seconds": 1.0, "train_seconds": 1.0, "eval_seconds": 0.0, "images_per_s": 100.0}
               for e, a in enumerate(done)]
    (directory / records.METRICS).write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (directory / records.TRAIN_LOSS).write_text("".join(
        json.dumps({"epoch": m["epoch"], "step": 10 * m["epoch"], "loss": m["train_loss"]}) + "\n" for m in metrics))
    if status == "failed":
        (directory / records.ERROR).write_text(json.dumps({"type": "RuntimeError", "message": "boom"}))
    if status in ("finished", "diverged"):
        summary = {"status": status, "diverged": status == "diverged",
                   "diverged_at": {"epoch": len(accs), "step": 7} if status == "diverged" else None,
                   "final_test_acc": accs[-1], "best_test_acc": max(accs), "final_train_loss": 1.0,
                   "epochs_to_acc": {"50": next((i + 1 for i, a in enumerate(accs) if a >= 50), None)}}
        (directory / records.SUMMARY).write_text(json.dumps(summary))
    return directory


BN, GN = {"name": "bn"}, {"name": "gn", "groups": 8}


def write_sweep(root: Path, bn_acc: dict[int, float], gn_acc: dict[int, float], seeds: int = 3) -> None:
    rng = np.random.default_rng(0)
    for norm, accs in ((BN, bn_acc), (GN, gn_acc)):
        for batch, acc in accs.items():
            for seed in range(seeds):
                final = acc + rng.normal(0, 0.3)
                write_run(root, norm, batch, seed, [final - 10, final])


HOLDS = dict(bn_acc={64: 80.0, 16: 79.5, 2: 72.0}, gn_acc={64: 78.0, 16: 78.2, 2: 77.9})


def test_store_keeps_unfinished_failed_and_diverged_runs_out_of_statistics(tmp_path):
    write_run(tmp_path, BN, 2, 0, [40.0, 50.0])
    write_run(tmp_path, BN, 2, 1, [40.0, 50.0], status="unfinished")
    write_run(tmp_path, BN, 2, 2, [40.0, 50.0], status="failed")
    write_run(tmp_path, GN, 2, 0, [10.0, 10.0], status="diverged")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("hydra: {}\n")
    tables = load_runs(tmp_path)
    status = dict(zip(tables.runs["seed"].astype(str) + tables.runs["norm"], tables.runs["status"]))
    assert status == {"0bn": "finished", "1bn": "unfinished", "2bn": "failed", "0gn8": "diverged"}
    assert list(tables.finished["run"]) == ["bn_b2_s0_fake"]
    reasons = dict(zip(tables.runs["status"], tables.runs["reason"]))
    assert "boom" in reasons["failed"] and "epoch 2 step 7" in reasons["diverged"] and "resume" in reasons["unfinished"]
    assert len(tables.epochs) == 2 + 1 + 1 + 2
    table = accuracy_table(tables.finished)
    assert table.to_dict("records") == [{"norm": "bn", "batch_size": 2, "acc_mean": 50.0, "acc_std": 0.0, "n": 1}]


def test_store_of_an_empty_folder_is_empty(tmp_path):
    tables = load_runs(tmp_path)
    assert tables.runs.empty and tables.finished.empty


def test_accuracy_error_and_convergence_tables(tmp_path):
    for seed, acc in enumerate([70.0, 72.0, 74.0]):
        write_run(tmp_path, BN, 2, seed, [45.0, acc])
        write_run(tmp_path, GN, 2, seed, [55.0, acc + 4])
        write_run(tmp_path, BN, 64, seed, [60.0, acc + 8])
    finished = load_runs(tmp_path).finished
    table = accuracy_table(finished).set_index(["norm", "batch_size"])
    assert table.loc[("bn", 2), "acc_mean"] == pytest.approx(72.0)
    assert table.loc[("bn", 2), "acc_std"] == pytest.approx(2.0)
    assert table.loc[("gn8", 2), "n"] == 3
    error = error_table(finished)
    assert list(error.columns) == ["batch 64", "batch 2"]
    assert error.loc["bn", "batch 2"] == pytest.approx(28.0)
    assert error.loc["bn - gn8", "batch 2"] == pytest.approx(4.0)
    convergence = convergence_table(finished).set_index(["norm", "batch_size"])
    assert convergence.loc[("bn", 2), "epochs_to_50"] == 2
    assert convergence.loc[("gn8", 2), "epochs_to_50"] == 1
    assert convergence.loc[("bn", 2), "reached_50"] == 3


def test_verdict_holds_when_bn_degrades_and_gn_does_not(tmp_path):
    write_sweep(tmp_path, **HOLDS)
    result = verdict(load_runs(tmp_path).finished, Criteria())
    assert result["holds"] is True
    checks = result["checks"]
    assert checks["bn_degrades"]["bn_best_batch"] == 64 and checks["bn_degrades"]["drop"] > 7
    assert checks["gn_holds"]["gn_range"] < 1
    assert checks["gn_beats_bn_at_smallest_batch"]["p_value_one_sided"] < 0.001


@pytest.mark.parametrize(
    "bn_acc, gn_acc, failing",
    [
        ({64: 80.0, 16: 79.5, 2: 79.4}, {64: 78.0, 16: 78.2, 2: 77.9}, {"bn_degrades", "gn_beats_bn_at_smallest_batch"}),
        ({64: 80.0, 16: 79.5, 2: 72.0}, {64: 78.0, 16: 75.0, 2: 72.1}, {"gn_holds", "gn_beats_bn_at_smallest_batch"}),
        ({64: 80.0, 16: 79.5, 2: 72.0}, {64: 73.0, 16: 72.8, 2: 72.2}, {"gn_beats_bn_at_smallest_batch"}),
    ],
)
def test_verdict_comes_out_false_when_the_claim_fails(tmp_path, bn_acc, gn_acc, failing):
    write_sweep(tmp_path, bn_acc, gn_acc)
    result = verdict(load_runs(tmp_path).finished, Criteria())
    assert result["holds"] is False
    assert {name for name, check in result["checks"].items() if not check["holds"]} == failing


def test_verdict_is_undecided_without_both_norms(tmp_path):
    write_run(tmp_path, BN, 2, 0, [50.0])
    write_run(tmp_path, BN, 64, 0, [60.0])
    result = verdict(load_runs(tmp_path).finished, Criteria())
    assert result["holds"] is False and "gn8" in result["reason"]


def test_analyze_writes_tables_figures_and_verdict(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_sweep(runs, **HOLDS)
    write_run(runs, {"name": "ln"}, 2, 0, [60.0, 70.0])
    write_run(runs, {"name": "in"}, 2, 0, [60.0, 69.0])
    write_run(runs, BN, 8, 0, [60.0, 70.0], status="unfinished")
    assert analyze([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "claim verdict: HOLDS" in out and "excluded bn_b8_s0_fake: unfinished" in out
    for name in ("accuracy", "error_by_batch", "convergence", "runs"):
        assert (tmp_path / "tables" / f"{name}.csv").stat().st_size > 0
        assert (tmp_path / "tables" / f"{name}.md").read_text().startswith("|")
    for name in ("error_vs_batch", "accuracy_by_epoch", "train_loss", "group_ablation"):
        assert (tmp_path / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert saved["holds"] is True and saved["runs"]["finished"] == 20
    assert saved["runs"]["excluded"][0]["status"] == "unfinished"


def test_analyze_without_finished_runs_fails_clearly(tmp_path, capsys):
    assert analyze([str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().err
    assert analyze([str(tmp_path / "missing")]) == 2


def test_compare_sweeps_lines_up_the_same_runs_and_counts_a_packed_job_once():
    before = pd.DataFrame({"norm": ["bn"] * 2, "batch_size": [2, 2], "seed": [0, 1],
                           "final_test_acc": [40.0, 42.0], "wall_seconds": [600.0, 600.0]})
    after = before.assign(final_test_acc=[41.0, 41.5], pack_size=[2, 2])
    [row] = compare_sweeps(before, after).to_dict("records")
    assert row["before acc %"] == "41.00 ± 1.41" and row["after acc %"] == "41.25 ± 0.35"
    assert row["largest per-seed difference"] == 1.0
    assert (row["minutes before"], row["minutes after"]) == (20.0, 10.0)
