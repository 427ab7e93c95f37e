"""One run's record: its identity and folder name, the files it writes, its summary and status.

Torch-free, and the one door to run files: the conductor writes through this package, and the
sweep and the analysis read through it. Its modules, re-exported here: `identity` (what a run is
and its name), `folder` (the files' names, the folder's lock, reading them), `starts` (its setup
and log of starts), `readers` (status, summary, metrics: for those who did not write them),
`damage` (a damaged file, named); this module writes the per-epoch records and the summary.

A run folder `<tag>_b<batch>[x<devices>]_s<seed>_<hash>/` holds `identity.json` (what the hash
covers: every setting that changes the numbers, and the data's content digest), `config.yaml`
(the whole resolved config), `metrics.jsonl` (one record per epoch), `train_loss.jsonl`,
`checkpoint.pt`, `train.log`, `starts.jsonl` (each start's time, code commit and environment),
`summary.json` once finished and `error.json` while failed. Running
the same configuration on the same data finds the same folder: finished runs are skipped,
unfinished ones resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from normexp.files import atomic
from normexp.record.damage import DamagedRecord, losses_agree, metrics_agree  # noqa: F401 (record's API)
from normexp.record.folder import (  # noqa: F401 (record's API)
    CHECKPOINT,
    CONFIG,
    ERROR,
    IDENTITY,
    LOCK,
    LOG,
    METRICS,
    SHARED,
    STARTS,
    SUMMARY,
    TRAIN_LOSS,
    claim,
    is_claimed,
    read_json,
    read_jsonl,
    remove_stale_temps,
    shared_runs,
)
from normexp.record.identity import (  # noqa: F401 (record's API)
    NUMERICS,
    SWEPT,
    columns,
    identity,
    norm_tag,
    numerics_version,
    pace_setup,
    run_dir,
    run_label,
    run_name,
)
from normexp.record.readers import (  # noqa: F401 (record's API)
    DIVERGED,
    FAILED,
    FINISHED,
    RUNNING,
    UNFINISHED,
    read_identity,
    read_metrics,
    read_summary,
    run_folders,
    status,
    where_diverged,
)
from normexp.record.starts import (  # noqa: F401 (record's API)
    ENVIRONMENT,
    ENVIRONMENT_BEFORE,
    append_start,
    environment_change,
    last_start,
    setting_changes,
    write_setup,
)

# The evaluations of batch-dependent norms besides the running averages (normexp.train.bn_evaluation):
# precise population statistics and batch statistics, beside `test_loss` and `test_acc`
EXTRA_EVALUATIONS = ("test_loss_precise", "test_acc_precise", "test_loss_batch", "test_acc_batch")


def write_progress(directory: Path, metrics: list[dict[str, Any]], losses: list[dict[str, Any]]) -> None:
    """After every epoch: the per-epoch records and the logged training losses so far."""
    atomic.write_jsonl(directory / METRICS, metrics)
    atomic.write_jsonl(directory / TRAIN_LOSS, losses)


def write_summary(directory: Path, summary_: Mapping[str, Any]) -> None:
    """The run has ended (finished or diverged); an error note from an earlier try is superseded."""
    atomic.write_json(directory / SUMMARY, summary_)
    (directory / ERROR).unlink(missing_ok=True)


def write_error(directory: Path, kind: str, message: str, trace: str) -> None:
    atomic.write_json(directory / ERROR, {"type": kind, "message": message, "traceback": trace})


def epoch_row(trained: Mapping[str, Any], tested: Mapping[str, Any], eval_seconds: float, pack_size: int,
              frozen_bn: Optional[bool] = None) -> dict[str, Any]:
    """One epoch's line of metrics.jsonl: the training pass's numbers (epoch, train loss and
    accuracy, lr, seconds, images/s), the evaluations' (`test_loss`, `test_acc`, and
    EXTRA_EVALUATIONS where made; None when not evaluated), the evaluation's seconds, the pack it
    trained in, whether BN statistics were frozen (FrozenBN runs only), and the epoch's seconds."""
    row = {**trained, "eval_seconds": eval_seconds, "pack_size": pack_size,
           **({} if frozen_bn is None else {"frozen_bn": frozen_bn}), **tested}
    row["seconds"] = row["train_seconds"] + eval_seconds
    return row


def checkpoint_state(model: Mapping[str, Any], optimizer: Mapping[str, Any], scheduler: Mapping[str, Any],
                     metrics: list[dict[str, Any]], losses: list[dict[str, Any]],
                     compute_seconds: float) -> dict[str, Any]:
    """What `checkpoint.pt` holds, in the single-run format whether the run trained packed or not:
    the model, optimizer and scheduler states and the record so far (a resume reads these keys)."""
    return {"model": dict(model), "optimizer": dict(optimizer), "scheduler": dict(scheduler), "metrics": metrics,
            "train_loss": losses, "compute_seconds": compute_seconds}


def summary(run: str, metrics: list[dict[str, Any]], diverged_at: Optional[dict[str, int]], compute_seconds: float,
            **provenance: Any) -> dict[str, Any]:
    """The summary of a run that has ended: final and best test numbers, its status, and where and
    how it ran. `compute_seconds` is this run's share of its job's wall time (a job of K packed
    runs gives each 1/K), so a sweep's compute time is the sum over its runs."""
    final = metrics[-1]
    best = max(metrics, key=lambda m: m["test_acc"] or 0.0)
    train_seconds = sum(m["train_seconds"] for m in metrics)
    images = sum(m["images_per_s"] * m["train_seconds"] for m in metrics)
    return {
        "run": run,
        "status": DIVERGED if diverged_at else FINISHED,
        "diverged_at": diverged_at,
        "epochs_done": len(metrics),
        "final_test_acc": final["test_acc"],
        "final_test_loss": final["test_loss"],
        "final_train_loss": final["train_loss"],
        "final_train_acc": final["train_acc"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        **{f"final_{key}": final.get(key) for key in EXTRA_EVALUATIONS if key in final},
        "compute_seconds": compute_seconds,
        "train_images_per_s": images / train_seconds if train_seconds else None,
        **provenance,
    }
