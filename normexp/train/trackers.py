"""Optional experiment trackers (`logger=tensorboard|mlflow|wandb`): a view of the run record, never its source.

Each run (each packed seed too) is one tracker run named like its folder: the flattened resolved
config as hyperparameters, the per-epoch metrics (the keys of `metrics.jsonl`) and the logged
training loss (`step_loss`) on the global-step axis, and the summary's numbers (`summary/<key>`).
The conductor writes the record first and calls the tracker after it; a tracker that fails is a
warning in the run's log, after which it stays silent. The packages are optional extras, checked
by `require` before any data is read.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import re
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence, cast

from omegaconf import DictConfig, OmegaConf

from normexp.config import ConfigError
from normexp.files import locks

if TYPE_CHECKING:
    from torch.utils.tensorboard.writer import FileWriter

Row = Mapping[str, Any]
MODULES = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow.tracking", "wandb": "wandb"}  # what each imports


def require(cfg: DictConfig) -> None:
    """Fail early, naming the extra to install, if the configured logger's package is missing."""
    name = cfg.logger.name
    if name == "none":
        return
    if name not in MODULES:
        raise ConfigError(f"logger.name={name!r} is invalid: allowed: none, {', '.join(MODULES)}")
    try:
        importlib.import_module(MODULES[name])
    except ImportError:
        raise ConfigError(f"logger={name} needs the optional {name} package: pip install -e '.[{name}]'") from None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"data.batch_size": 8, ...}: nested keys joined by dots, lists as JSON, None as "null"."""
    if isinstance(value, Mapping):
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    key = prefix[:-1]
    if isinstance(value, (bool, int, float, str)):
        return {key: value}
    return {key: json.dumps(value)}


def numbers(row: Row) -> dict[str, float]:
    """The finite numeric fields of a record (booleans, strings, None and nested values left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    """A run's tracker; this base class tracks nothing (`logger=none`: the run record alone)."""

    def __init__(self, cfg: DictConfig, directory: Path, log: logging.Logger) -> None:
        self.cfg, self.name, self.directory, self.log = cfg, directory.name, directory, log
        self.failed = False
        self.step = 0  # the global step at the end of the last epoch done

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            call()
        except Exception as error:  # a tracker must never cost a run
            self.failed = True
            self.log.warning("logger=%s failed to %s (%s: %s); the run goes on without it, its record is "
                             "complete", self.cfg.logger.name, what, type(error).__name__, error)

    def start(self, metrics: Sequence[Row], losses: Sequence[Row]) -> None:
        """Open the tracker run, resuming after the epochs (and their logged losses) already done."""
        self.step = losses[-1]["step"] if metrics and losses else 0
        self._guard("start", lambda: self._start(bool(metrics)))

    def log_epoch(self, row: Row, losses: Sequence[Row]) -> None:
        """An epoch's record (as written to metrics.jsonl) and its logged training losses."""
        self.step = losses[-1]["step"] if losses else self.step
        steps = [(e["step"], e["loss"]) for e in losses if math.isfinite(e["loss"])]  # the record keeps no NaN
        self._guard("log an epoch", lambda: self._log_epoch(numbers(row), steps))

    def finish(self, summary: Row) -> None:
        self._guard("log the summary", lambda: self._finish(summary))

    def close(self, status: str) -> None:
        """End the tracker run; `status` (FINISHED, FAILED or KILLED) applies if `finish` was not reached."""
        self._guard("close", lambda: self._close(status))

    def hyperparameters(self) -> dict[str, Any]:
        return flatten(OmegaConf.to_container(self.cfg, resolve=True))

    def _start(self, resumed: bool) -> None:
        pass

    def _log_epoch(self, values: dict[str, float], steps: list[tuple[int, float]]) -> None:
        pass

    def _finish(self, summary: Row) -> None:
        pass

    def _close(self, status: str) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files in `<logger.log_dir>/<run>/`; a resumed run purges what an interrupted try wrote
    after its last checkpointed epoch."""

    def _start(self, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.params = self.hyperparameters()
        folder = Path(self.cfg.logger.log_dir).expanduser() / self.name
        self.writer = SummaryWriter(str(folder), purge_step=self.step + 1 if resumed else 0)
        cast("FileWriter", self.writer.file_writer).add_summary(hparams(self.params, {})[1])  # made by the writer

    def _log_epoch(self, values: dict[str, float], steps: list[tuple[int, float]]) -> None:
        for step, loss in steps:
            self.writer.add_scalar("step_loss", loss, step)
        for key, value in values.items():
            self.writer.add_scalar(key, value, self.step)
        self.writer.flush()

    def _finish(self, summary: Row) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {f"summary/{k}": v for k, v in numbers(summary).items()}
        experiment, _, end = hparams(self.params, final)
        for key, value in final.items():
            self.writer.add_scalar(key, value, self.step)
        cast("FileWriter", self.writer.file_writer).add_summary(experiment)
        cast("FileWriter", self.writer.file_writer).add_summary(end)
        self.writer.flush()

    def _close(self, status: str) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run per normexp run; an unfinished one with the same name is continued on resume.

    The store is `logger.tracking_uri` (NORMEXP_MLFLOW_URI or MLFLOW_TRACKING_URI), or else a local
    file store in `<paths.results_root>/.mlflow`. MLflow cannot delete points: an epoch recorded but
    not yet checkpointed when its run was killed is logged again, at the same step, on resume.
    """

    def _start(self, resumed: bool) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.finished = False
        uri, store = self.cfg.logger.tracking_uri, None
        if uri is None:
            store = Path(self.cfg.paths.results_root).expanduser().resolve() / ".mlflow"
            uri = store.as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it in maintenance mode
        self.client = MlflowClient(uri)
        name = self.cfg.logger.experiment or Path(self.cfg.paths.results_root).name
        experiment = _experiment_id(self.client, name, store)
        found = self.client.search_runs(
            [experiment], f"attributes.run_name = '{self.name}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            self.run_id, logged = found[0].info.run_id, found[0].data.params
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"normexp.directory": str(self.directory)}
            self.run_id, logged = self.client.create_run(experiment, run_name=self.name, tags=tags).info.run_id, {}
        new = [Param(k, str(v)[:6000]) for k, v in self.hyperparameters().items() if k not in logged]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def _metrics(self, values: Mapping[str, float], steps: Sequence[tuple[int, float]] = ()) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, self.step) for k, v in values.items()]
        batch += [Metric("step_loss", loss, now, step) for step, loss in steps]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def _log_epoch(self, values: dict[str, float], steps: list[tuple[int, float]]) -> None:
        self._metrics(values, steps)

    def _finish(self, summary: Row) -> None:
        self._metrics({f"summary/{k}": v for k, v in numbers(summary).items()})
        self.client.set_tag(self.run_id, "normexp.status", summary["status"])
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def _close(self, status: str) -> None:
        if hasattr(self, "run_id") and not self.finished:
            self.client.set_terminated(self.run_id, status)


class WandbTracker(Tracker):
    """One Weights & Biases run per normexp run, named like its folder, its id the folder's name and
    a hash of the folder's path (so runs of the same settings in two results roots stay apart), so a
    resumed run continues it; packed seeds are concurrent runs of one process. The project is
    `logger.project`, else the results root's name (its parent's for a root named `runs`).
    `logger.mode=offline` writes to `logger.dir` only (upload later with `wandb sync`). W&B keeps no
    point at a step it has passed: an epoch recorded but not yet checkpointed when its run was killed
    is not logged again on resume."""

    def _start(self, resumed: bool) -> None:
        import wandb

        self.finished = False
        settings, root = self.cfg.logger, Path(self.cfg.paths.results_root).expanduser().resolve()
        folder = Path(settings.dir).expanduser() if settings.dir else root / ".wandb"
        folder.mkdir(parents=True, exist_ok=True)
        where = hashlib.sha1(str(self.directory.resolve()).encode()).hexdigest()[:8]
        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.name}-{where}")
        project = settings.project or (root.parent.name if root.name == "runs" else root.name)
        self.run = wandb.init(project=project, entity=settings.entity, id=run_id, name=self.name,
                              resume="allow" if resumed else "never", dir=str(folder), mode=settings.mode,
                              config=self.hyperparameters(), reinit="create_new")

    def _log_epoch(self, values: dict[str, float], steps: list[tuple[int, float]]) -> None:
        at_end = dict(values)
        for step, loss in steps:
            if step < self.step:
                self.run.log({"step_loss": loss}, step=step)
            elif step == self.step:
                at_end["step_loss"] = loss
        self.run.log(at_end, step=self.step)

    def _finish(self, summary: Row) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in numbers(summary).items()})
        self.run.summary["normexp.status"] = summary["status"]
        self.run.finish(exit_code=0)
        self.finished = True

    def _close(self, status: str) -> None:
        if hasattr(self, "run") and not self.finished:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _experiment_id(client: Any, name: str, store: Optional[Path]) -> str:
    """The experiment's id, created if new (under a file lock on a local store, where concurrent
    jobs could otherwise each create one of the same name)."""
    with locks.exclusive(store / ".normexp.lock", wait=True) if store is not None else nullcontext():
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else client.create_experiment(name)


TRACKERS: dict[str, type[Tracker]] = {"none": Tracker, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker,
                                      "wandb": WandbTracker}


@contextmanager
def open_run(cfg: DictConfig, directory: Path, log: logging.Logger) -> Iterator[Tracker]:
    """The tracker of the run in `directory`, ended when the block exits (FAILED on an error,
    KILLED on an interrupt, if the run did not finish)."""
    tracker = TRACKERS[cfg.logger.name](cfg, directory, log)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
