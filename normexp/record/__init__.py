"""One run's record: its identity and folder name, the files it writes, its summary and status.

Torch-free: the conductor writes through this module and the tables read through it; a run's
identity and name are in normexp.record.identity (re-exported here).

A run folder `<tag>_b<batch>[x<devices>]_s<seed>_<hash>/` holds `identity.json` (what the hash
covers: every setting that changes the numbers, and the data's content digest), `config.yaml`
(the whole resolved config), `metrics.jsonl` (one record per epoch), `train_loss.jsonl`,
`checkpoint.pt`, `train.log`, `starts.jsonl` (each start's time, code commit and environment),
`summary.json` once finished and `error.json` while failed. Running
the same configuration on the same data finds the same folder: finished runs are skipped,
unfinished ones resume.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, cast

import yaml
from omegaconf import DictConfig, OmegaConf

from normexp.config import RECORDED_AS_STARTED
from normexp.files import atomic, locks
from normexp.record.damage import DamagedRecord, losses_agree, metrics_agree  # noqa: F401 (record's API)
from normexp.record.identity import (  # noqa: F401 (record's API)
    NUMERICS,
    SWEPT,
    columns,
    identity,
    norm_tag,
    numerics_version,
    pace_setup,
    run_dir,
    run_name,
)
from normexp.threads import this_thread_only

IDENTITY = "identity.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TRAIN_LOSS = "train_loss.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
LOG = "train.log"
ERROR = "error.json"
LOCK = ".lock"
STARTS = "starts.jsonl"
# A results folder may list runs stored in another one instead of holding copies: one path per line,
# relative to the file's folder (e.g. ../claim/runs/bn_b2x8_s0_22895390); the analysis reads them as its own.
SHARED = "shared_runs.txt"
# What changes a run's numbers besides its identity (float rounding that grows into seed-level noise):
# a run resumes only where its last start ran, unless runtime.allow_env_change says otherwise.
ENVIRONMENT = ("device", "cpu_capability", "threads", "torch_version", "step", "layout")
# what a start recorded before a field of ENVIRONMENT was recorded held (all steps were eager then)
ENVIRONMENT_BEFORE = {"step": "eager"}

# The evaluations of batch-dependent norms besides the running averages (normexp.train.bn_evaluation):
# precise population statistics and batch statistics, beside `test_loss` and `test_acc`
EXTRA_EVALUATIONS = ("test_loss_precise", "test_acc_precise", "test_loss_batch", "test_acc_batch")

FINISHED, DIVERGED, FAILED, RUNNING, UNFINISHED = "finished", "diverged", "failed", "running", "unfinished"


def write_setup(directory: Path, ident: Mapping[str, Any], config_yaml: str) -> None:
    """What a run writes when its job sets it up: its identity, and its whole resolved config as it
    first started (kept on later starts, so the criteria recorded are those in force when it began)."""
    atomic.write_json(directory / IDENTITY, ident)
    if not (directory / CONFIG).is_file():
        atomic.write_text(directory / CONFIG, config_yaml)


def append_start(directory: Path, start: Mapping[str, Any]) -> None:
    """Append `start` (time, code, environment) to the run's log of starts."""
    atomic.write_jsonl(directory / STARTS, [*read_jsonl(directory / STARTS), dict(start)])


def last_start(directory: Path) -> Optional[dict[str, Any]]:
    """The run's most recent recorded start, or None (a new run, or one trained before starts were logged)."""
    starts = read_jsonl(directory / STARTS)
    return starts[-1] if starts else None


def environment_change(previous: Optional[Mapping[str, Any]], environment: Mapping[str, Any]) -> list[str]:
    """How `environment` differs from a previous start's in the ENVIRONMENT fields, e.g.
    ["threads 1 -> 2"]; empty when they agree or nothing was recorded."""
    if previous is None:
        return []
    before = {**ENVIRONMENT_BEFORE, **previous}
    return [f"{key} {before[key]} -> {environment.get(key)}" for key in ENVIRONMENT
            if key in before and before[key] != environment.get(key)]


def setting_changes(directory: Path, cfg: DictConfig) -> list[str]:
    """How `cfg` differs from the run's recorded config (as it first started) in the groups that
    are not in the identity but change what it records (config.RECORDED_AS_STARTED), e.g.
    ["evaluation.precise_images 4096 -> 2048"]; a group the record lacks (older code) is not compared."""
    try:
        recorded = cast(DictConfig, OmegaConf.load(directory / CONFIG))
    except OSError:
        return []
    except yaml.YAMLError as error:
        raise DamagedRecord(directory / CONFIG, f"not valid YAML: {' '.join(str(error).split())}") from None
    changes = []
    for group in RECORDED_AS_STARTED:
        if group not in recorded:
            continue
        old, new = (cast("dict[str, Any]", OmegaConf.to_container(c[group], resolve=True)) for c in (recorded, cfg))
        changes += [f"{group}.{key} {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new))
                    if old.get(key) != new.get(key)]
    return changes


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


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON file's object, or None if it is missing; DamagedRecord if it is there but not a JSON object."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        content = json.loads(text)
    except ValueError as error:
        raise DamagedRecord(path, "empty" if not text.strip() else f"not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise DamagedRecord(path, f"not a JSON object but {type(content).__name__}")
    return content


def shared_runs(folder: Path) -> list[Path]:
    """The run folders that `folder`'s SHARED file lists (none without one); a listed folder that
    is missing raises FileNotFoundError naming it."""
    path = folder / SHARED
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    listed = [folder / line for line in lines if line and not line.startswith("#")]
    missing = [str(p) for p in listed if not (p / IDENTITY).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists run folders that do not exist: {', '.join(missing)}")
    return listed


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's records (none if it is missing); DamagedRecord naming the first line that
    is not a JSON object."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise DamagedRecord(path, f"line {number} is not valid JSON: {error}") from None
        if not isinstance(row, dict):
            raise DamagedRecord(path, f"line {number} is not a JSON object")
        rows.append(row)
    return rows


def remove_stale_temps(directory: Path) -> None:
    """Delete temporary files left by a writer that was killed before its rename."""
    for path in directory.glob(".*.tmp"):
        path.unlink(missing_ok=True)


@contextmanager
def claim(directory: Path) -> Iterator[bool]:
    """Hold the run directory's lock; yields False if another process holds it (the lock goes
    with a crashed holder)."""
    with locks.exclusive(directory / LOCK, wait=False) as held:
        yield held


def is_claimed(directory: Path) -> bool:
    """Whether a live process holds the run directory's lock (see `claim`)."""
    return locks.is_held(directory / LOCK)


@contextmanager
def run_logger(directory: Path) -> Iterator[logging.Logger]:
    """A logger for one run, whose lines go to the run's `train.log` while it is open (the
    conductor closes it when the run finishes); the job's shared lines join them under `shared_lines`."""
    shared = logging.getLogger("normexp")
    if shared.level == logging.NOTSET or shared.level > logging.INFO:
        shared.setLevel(logging.INFO)
    run_log = logging.getLogger(f"normexp.run.{directory.name}")
    with _log_file(run_log, directory):
        yield run_log


@contextmanager
def shared_lines(directory: Path) -> Iterator[None]:
    """The job's shared lines (logger `normexp`, from this thread: hydra/launcher=threads trains
    other jobs in other threads) also go to the run's `train.log` while this is open: from when the
    run starts training until it finishes, so they never name runs trained before or after it."""
    with _log_file(logging.getLogger("normexp"), directory, this_thread_only()):
        yield


@contextmanager
def _log_file(logger: logging.Logger, directory: Path,
              only: Optional[Callable[[logging.LogRecord], bool]] = None) -> Iterator[None]:
    handler = logging.FileHandler(directory / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if only is not None:
        handler.addFilter(only)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


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


def where_diverged(summary_: Mapping[str, Any]) -> Optional[str]:
    """Where a run's summary says it diverged, e.g. "epoch 3 step 1200"; None if it did not."""
    at = summary_.get("diverged_at")
    return None if at is None else f"epoch {at.get('epoch')} step {at.get('step')}"


def status(directory: Path, summary_: Optional[Mapping[str, Any]]) -> tuple[str, str]:
    """(status, reason) of a run folder: finished, diverged, running, failed or unfinished."""
    if summary_ is not None:
        if summary_["status"] == DIVERGED:
            return DIVERGED, f"non-finite loss at {where_diverged(summary_) or 'an unrecorded step'}"
        return FINISHED, ""
    if is_claimed(directory):
        return RUNNING, "being trained now"
    error = read_json(directory / ERROR)
    if error is not None:
        return FAILED, f"{error.get('type')}: {error.get('message')} (log: {directory / LOG})"
    return UNFINISHED, "interrupted; rerun the same command to resume it"
