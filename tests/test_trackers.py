"""Experiment trackers mirror the run record (read back with their own readers); they never cost a run."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

import normexp.train.conductor as conductor
from normexp import record
from normexp.config import ConfigError
from normexp.files import atomic
from normexp.train import harness
from normexp.train.conductor import train_job
from tests.helpers import interrupted_at, record_numbers, run_dir

PACKED = ("seed=[0,1]", "data.batch_size=4", "trainer.epochs=3", "trainer.eval_every=2")  # 2 seeds as one model


@pytest.fixture(autouse=True)
def local_mlflow_store(monkeypatch):
    """Never send test runs to a tracking server named in the developer's environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NORMEXP_MLFLOW_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def expected(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """What a tracker should hold for a run, from its record: (global step, value) per metric, the
    epoch records at their epoch's last step."""
    losses = record.read_jsonl(directory / record.TRAIN_LOSS)
    end = {entry["epoch"]: entry["step"] for entry in losses}
    series: dict[str, list[tuple[int, float]]] = {"step_loss": [(e["step"], e["loss"]) for e in losses]}
    for row in record.read_jsonl(directory / record.METRICS):
        for key, value in row.items():
            if isinstance(value, (int, float)):
                series.setdefault(key, []).append((end[row["epoch"]], value))
    for key, value in record.read_json(directory / record.SUMMARY).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            series[f"summary/{key}"] = [(max(end.values()), value)]
    return series


def members(cfg) -> list[Path]:
    return sorted(record.run_dir(harness.run_config(cfg, seed), conductor.load_data(cfg).digest)
                  for seed in cfg.seed)


def test_tensorboard_holds_the_record_and_a_resumed_run_replaces_the_interrupted_epoch(make_cfg, monkeypatch):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = make_cfg("logger=tensorboard", *PACKED)
    calls = itertools.count(1)
    real_write = atomic.atomic_write

    def killed_before_second_checkpoint(path, write):  # epoch 2 is in the record and tracker, not checkpointed
        if path.name == record.CHECKPOINT and next(calls) == 3:
            raise KeyboardInterrupt
        real_write(path, write)

    with monkeypatch.context() as patch:
        patch.setattr(atomic, "atomic_write", killed_before_second_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            train_job(cfg)
    assert all(len(record.read_jsonl(d / record.METRICS)) == 2 for d in members(cfg))
    train_job(cfg)
    for seed, directory in zip(cfg.seed, members(cfg)):
        assert "resuming" in (directory / record.LOG).read_text()
        events = event_accumulator.EventAccumulator(str(Path(cfg.logger.log_dir) / directory.name),
                                                    size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
        want = expected(directory)
        assert sorted(logged) == sorted(want)
        assert len(want["test_acc"]) == 2 and want["pack_size"][0][1] == 2  # evaluated epochs 2 and 3; packed
        for tag, series in want.items():  # no duplicate of the interrupted epoch: purged on resume
            assert [step for step, _ in logged[tag]] == [step for step, _ in series], tag
            assert [value for _, value in logged[tag]] == pytest.approx([v for _, v in series], rel=1e-6), tag
        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["seed"].number_value == seed and hparams["data.batch_size"].number_value == 4
        assert hparams["norm.name"].string_value == "bn" and hparams["logger.name"].string_value == "tensorboard"


def test_mlflow_run_is_continued_after_an_interrupt_and_holds_the_record(make_cfg, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = make_cfg("logger=mlflow", *PACKED)
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    client = MlflowClient((Path(cfg.paths.results_root) / ".mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name(Path(cfg.paths.results_root).name).experiment_id
    assert {run.info.status for run in client.search_runs([experiment])} == {"KILLED"}
    train_job(cfg)
    runs = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert sorted(runs) == [d.name for d in members(cfg)]  # one MLflow run per normexp run, continued
    for seed, directory in zip(cfg.seed, members(cfg)):
        run = runs[directory.name]
        assert run.info.status == "FINISHED" and run.data.tags["normexp.status"] == "finished"
        assert run.data.params["seed"] == str(seed) and run.data.params["optim.schedule"] == "cosine"
        assert run.data.params["data.batch_size"] == "4" and run.data.params["data.train_subset"] == "null"
        assert run.data.tags["normexp.directory"] == str(directory)
        want = expected(directory)
        assert sorted(run.data.metrics) == sorted(want)
        for key, series in want.items():
            history = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert [(step, value) for step, _, value in history] == series, key


class FakeWandbRun:
    """A W&B run as its service keeps it: a point at a step below the last one is dropped, one at the
    last step is merged into it; the summary and the exit code."""

    def __init__(self, runs: dict, **init) -> None:
        self.init, self.history, self.summary, self.exit_codes, self.last = init, {}, {}, [], -1
        previous = runs.get(init["id"])
        if previous is not None:
            assert init["resume"] == "allow", "a fresh run must not continue another's W&B run"
            self.history, self.summary, self.last = previous.history, previous.summary, previous.last
            self.exit_codes = previous.exit_codes
        else:
            assert init["resume"] == "never", "a resumed run continues its W&B run"
        runs[init["id"]] = self

    def log(self, values: dict, step: int) -> None:
        if step < self.last:
            return
        self.last = step
        for key, value in values.items():
            self.history.setdefault(key, {})[step] = value

    def finish(self, exit_code: int) -> None:
        self.exit_codes.append(exit_code)


def test_wandb_runs_mirror_the_record_and_a_resumed_run_continues_its_own(make_cfg, monkeypatch):
    runs: dict[str, FakeWandbRun] = {}
    fake = type(sys)("wandb")
    fake.init = lambda **init: FakeWandbRun(runs, **init)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = make_cfg("logger=wandb", "logger.mode=offline", *PACKED)
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    assert all(r.exit_codes == [1] for r in runs.values())
    by_name = {run.init["name"]: run for run in runs.values()}
    assert sorted(by_name) == [d.name for d in members(cfg)]
    train_job(cfg)
    assert len(runs) == 2  # resumed: the same two W&B runs
    by_name = {run.init["name"]: run for run in runs.values()}
    for seed, directory in zip(cfg.seed, members(cfg)):
        run = by_name[directory.name]  # one W&B run per normexp run, its id the folder's name and where it lies
        assert run.init["id"].startswith(directory.name.replace(".", "-") + "-")
        assert (run.init["resume"], run.init["reinit"], run.init["mode"]) == ("allow", "create_new", "offline")
        assert run.init["project"] == Path(cfg.paths.results_root).parent.name  # a root named runs: its parent
        assert run.init["config"]["seed"] == seed and run.init["config"]["data.batch_size"] == 4
        assert run.exit_codes == [1, 0] and run.summary["normexp.status"] == "finished"
        want = expected(directory)
        logged = {key: sorted(points.items()) for key, points in run.history.items()}
        logged.update({key: [(max(s for s, _ in want["step_loss"]), value)] for key, value in run.summary.items()
                       if key.startswith("summary/")})
        assert logged == want


def _fail_tensorboard_mid_run(monkeypatch) -> None:
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    calls = itertools.count()
    real = SummaryWriter.add_scalar

    def add_scalar(self, *args, **kwargs):
        if next(calls) >= 20:  # after the first epoch's scalars
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)


def _fail_mlflow_mid_run(monkeypatch) -> None:
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient
    calls = itertools.count()
    real = MlflowClient.log_batch

    def log_batch(self, *args, **kwargs):
        if kwargs.get("metrics") and next(calls) >= 1:  # the second epoch's metrics
            raise ConnectionError("tracking server went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)


@pytest.mark.parametrize("logger, failure, what", [
    ("tensorboard", _fail_tensorboard_mid_run, "log an epoch"),
    ("mlflow", _fail_mlflow_mid_run, "log an epoch"),
    ("mlflow", lambda _: None, "start"),  # the bogus:// store below cannot even be opened
])
def test_a_failing_tracker_is_a_warning_and_the_run_is_recorded_as_without_it(make_cfg, tmp_path, monkeypatch,
                                                                                logger, failure, what):
    reference = make_cfg("trainer.epochs=3", f"paths.results_root={tmp_path / 'reference'}")
    train_job(reference)
    failure(monkeypatch)
    unusable = ["logger.tracking_uri=bogus://nowhere"] if what == "start" else []
    cfg = make_cfg("trainer.epochs=3", f"logger={logger}", *unusable)
    [summary] = train_job(cfg)
    assert summary["status"] == "finished" and summary["epochs_done"] == 3
    directory = run_dir(cfg)
    assert directory.name == run_dir(reference).name  # a tracker is not part of a run's identity
    assert record_numbers(directory) == record_numbers(run_dir(reference))
    log = (directory / record.LOG).read_text()
    assert log.count(f"logger={logger} failed to {what}") == 1 and "its record is complete" in log


@pytest.mark.parametrize("logger, modules", [("tensorboard", ("tensorboard", "torch.utils.tensorboard")),
                                             ("mlflow", ("mlflow", "mlflow.tracking")), ("wandb", ("wandb",))])
def test_a_missing_extra_is_named_before_any_data_is_read(make_cfg, monkeypatch, logger, modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    monkeypatch.setattr(conductor, "load_data", lambda cfg: pytest.fail("data was read"))
    with pytest.raises(ConfigError) as error:
        train_job(make_cfg(f"logger={logger}"))
    assert str(error.value) == f"logger={logger} needs the optional {logger} package: pip install -e '.[{logger}]'"


def test_the_cli_turns_a_missing_extra_into_one_line_and_exit_2(tmp_path, image_folder):
    probe = ("import sys; sys.modules['mlflow'] = None\n"
             "from normexp.cli.train import main\n"
             f"sys.argv = ['normexp-train', 'logger=mlflow', 'paths.results_root={tmp_path / 'runs'}',"
             f" 'paths.cifar10_folder={image_folder}', 'paths.cache_dir={tmp_path / 'cache'}']\n"
             "main()")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "pip install -e '.[mlflow]'" in out and "Traceback" not in out
    assert not (tmp_path / "runs").exists() or not any(p for p in (tmp_path / "runs").iterdir() if p.name[0] != ".")


@pytest.mark.slow
def test_wandb_offline_writes_each_run_locally_without_a_network(make_cfg, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # any attempt to reach a server would fail
    cfg = make_cfg("logger=wandb", "logger.mode=offline", *PACKED)
    summaries = train_job(cfg)
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    for directory in members(cfg):
        [offline] = (Path(cfg.paths.results_root) / ".wandb" / "wandb").glob(f"offline-run-*-{directory.name}-*")
        [history] = offline.glob(f"run-{directory.name}-*.wandb")
        assert history.stat().st_size > 0
        assert "failed" not in (directory / record.LOG).read_text()
