import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import normexp.train.conductor as conductor
import normexp.train.harness as harness
from normexp import record
from normexp.config import ConfigError
from normexp.nn.models import build_model
from normexp.train.conductor import train_job
from normexp.train.runtime import memory_format
from tests.helpers import interrupted_at, make_image_folder, norm_spec, record_numbers, run_dir, tiny_run

MODEL = {"depth": 8, "num_classes": 10, "zero_init_residual": True}

def test_tiny_run_lowers_its_loss_and_writes_a_complete_record(make_cfg):
    cfg = make_cfg("norm=gn", "norm.groups=2", "trainer.epochs=3", "optim.lr=0.05")
    [summary] = train_job(cfg)
    directory = run_dir(cfg)
    assert directory.name.startswith("gn2_b8_s0_")
    metrics = record.read_jsonl(directory / record.METRICS)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    losses = record.read_jsonl(directory / record.TRAIN_LOSS)
    assert losses and all(row["epoch"] in (1, 2, 3) for row in losses)
    for name in (record.CONFIG, record.CHECKPOINT, record.LOG, record.SUMMARY):
        assert (directory / name).is_file(), name
    assert "epoch 3/3" in (directory / record.LOG).read_text()
    assert summary["status"] == "finished" and summary["epochs_done"] == 3
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    assert summary["best_test_acc"] == max(m["test_acc"] for m in metrics)
    assert summary["lr"] == pytest.approx(0.05 * 8 / 32) and summary["compute_seconds"] > 0
    ident = record.read_json(directory / record.IDENTITY)
    assert ident["norm"] == {"name": "gn", "groups": 2} and ident["data"]["batch_size"] == 8
    assert record.run_name(ident) == directory.name
    assert [m["lr"] for m in metrics][0] == pytest.approx(0.05 * 8 / 32)  # the rate each epoch started with


def test_same_config_and_seed_reproduce_the_same_numbers(make_cfg, tmp_path):
    cfg = make_cfg("trainer.epochs=1")
    train_job(cfg)
    first = record_numbers(run_dir(cfg))
    other = make_cfg("trainer.epochs=1", f"paths.results_root={tmp_path / 'other'}")
    train_job(other)
    assert record_numbers(run_dir(other)) == first
    seeded = make_cfg("trainer.epochs=1", "seed=1")
    train_job(seeded)
    assert record_numbers(run_dir(seeded)) != first


def test_interrupted_run_resumes_to_the_same_record(make_cfg, tmp_path, monkeypatch):
    reference = make_cfg("trainer.epochs=3", f"paths.results_root={tmp_path / 'reference'}")
    train_job(reference)

    cfg = make_cfg("trainer.epochs=3")
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    directory = run_dir(cfg)
    assert not (directory / record.SUMMARY).exists()
    assert len(record_numbers(directory)) == 2

    [summary] = train_job(cfg)
    assert record_numbers(directory) == record_numbers(run_dir(reference))
    assert "resuming" in (directory / record.LOG).read_text()
    assert summary["final_test_acc"] == record.read_json(run_dir(reference) / record.SUMMARY)["final_test_acc"]


def test_a_run_records_its_code_and_every_start_and_keeps_the_config_it_began_with(make_cfg, monkeypatch):
    """starts.jsonl gains a line at every start (time, commit, environment); config.yaml, which
    carries the verdict criteria, stays as the run's first start wrote it."""
    cfg = make_cfg("trainer.epochs=2")
    with interrupted_at(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    directory = run_dir(cfg)
    first_config = (directory / record.CONFIG).read_text()
    train_job(make_cfg("trainer.epochs=2", "verdict.alpha=0.01"))  # the same run: criteria are not identity
    starts = record.read_jsonl(directory / record.STARTS)
    assert [s["after_epoch"] for s in starts] == [0, 1]
    assert all(s["threads"] == 1 and s["torch_version"] == torch.__version__ and s["device"] == "cpu" for s in starts)
    assert (directory / record.CONFIG).read_text() == first_config and "alpha: 0.05" in first_config
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(conductor.__file__).parent, capture_output=True,
                          text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout: nothing to record")
    summary = record.read_json(directory / record.SUMMARY)
    assert starts[-1]["git_commit"] == summary["git_commit"] == head.stdout.strip()
    assert isinstance(summary["git_dirty"], bool)


def test_a_run_resumes_only_in_the_environment_it_trained_in(make_cfg, monkeypatch):
    """Threads change a run's numbers: an explicit other count is refused by name, an automatic
    count takes the run's own (said in its log), and runtime.allow_env_change resumes anyway and
    records it."""
    cfg = make_cfg("trainer.epochs=3")
    with interrupted_at(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    directory = run_dir(cfg)
    with pytest.raises(ConfigError, match=r"trained in another environment \(threads 1 -> 2\)"):
        train_job(make_cfg("trainer.epochs=3", "runtime.threads=2"))
    assert not (directory / record.ERROR).exists() and len(record.read_jsonl(directory / record.STARTS)) == 1
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_job(make_cfg("trainer.epochs=3", "runtime.threads=null"), auto_threads=2)
    assert record.read_jsonl(directory / record.STARTS)[-1]["threads"] == 1
    assert "resuming with 1 torch thread(s)" in (directory / record.LOG).read_text()  # said in the run's log
    train_job(make_cfg("trainer.epochs=3", "runtime.threads=2", "runtime.allow_env_change=true"))
    last = record.read_jsonl(directory / record.STARTS)[-1]
    assert last["threads"] == 2 and last["environment_change"] == ["threads 1 -> 2"]
    assert record.read_json(directory / record.SUMMARY)["status"] == "finished"


def test_finished_run_is_skipped(make_cfg, monkeypatch):
    cfg = make_cfg("trainer.epochs=1")
    first = train_job(cfg)
    monkeypatch.setattr(conductor, "_train", lambda *a: pytest.fail("trained again"))
    assert train_job(cfg) == first


def test_run_held_by_another_process_is_skipped(make_cfg):
    cfg = make_cfg("trainer.epochs=1")
    with record.claim(run_dir(cfg)) as claimed:
        assert claimed and record.is_claimed(run_dir(cfg))
        assert train_job(cfg) == []
    assert not record.is_claimed(run_dir(cfg))
    assert len(train_job(cfg)) == 1


def _name(cfg, digest: str = "data") -> str:
    return record.run_name(record.identity(cfg, digest))


def test_run_name_covers_what_changes_the_numbers_and_nothing_else(make_cfg, tmp_path):
    base = _name(make_cfg())
    assert _name(make_cfg("runtime.threads=2", "runtime.progress=true")) == base
    assert _name(make_cfg("runtime.channels_last=false", "runtime.eval_batch_size=7")) == base
    assert _name(make_cfg(f"paths.cache_dir={tmp_path}/elsewhere", f"paths.results_root={tmp_path}/x")) == base
    assert _name(make_cfg("verdict.alpha=0.01")) == base
    assert _name(make_cfg("optim.lr=0.2")) != base
    assert _name(make_cfg("trainer.eval_every=2")) != base  # it changes best_test_acc
    assert _name(make_cfg(), digest="other data") != base
    assert _name(make_cfg("data.batch_size=4")).startswith("bn_b4_s0_")
    assert _name(make_cfg("data.batch_size=4", "data.devices=8")).startswith("bn_b4x8_s0_")
    # a setting added later, null by default, leaves existing names unchanged
    assert _name(make_cfg("+trainer.new_option=null")) == base


def test_the_same_command_on_other_data_trains_again(make_cfg, tmp_path):
    """A run is only "the same run" on the same data: switching the folder must retrain."""
    cfg = make_cfg("trainer.epochs=1")
    [first] = train_job(cfg)
    other_data = make_image_folder(tmp_path / "other-data", train_per_class=8, test_per_class=2, seed=5)
    switched = make_cfg("trainer.epochs=1", f"paths.cifar10_folder={other_data}")
    [second] = train_job(switched)
    assert run_dir(switched) != run_dir(cfg) and run_dir(switched).parent == run_dir(cfg).parent
    assert "already done" not in (run_dir(switched) / record.LOG).read_text()
    assert record.read_json(run_dir(switched) / record.IDENTITY)["data_digest"] != \
        record.read_json(run_dir(cfg) / record.IDENTITY)["data_digest"]


def test_a_finished_run_drops_the_error_note_of_an_earlier_failure(make_cfg, monkeypatch):
    cfg = make_cfg("trainer.epochs=1")
    with monkeypatch.context() as patch:
        patch.setattr(harness, "train_epoch", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError):
            train_job(cfg)
    assert record.read_json(run_dir(cfg) / record.ERROR)["message"] == "boom"
    train_job(cfg)
    assert not (run_dir(cfg) / record.ERROR).exists()


def test_an_unwritable_results_root_is_named_before_any_data_is_read(make_cfg, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # unwritable for root too, unlike a chmod
    monkeypatch.setattr(conductor, "load_cifar10", lambda *a: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=r"paths.results_root=.*a-file/runs' is not writable"):
        train_job(make_cfg(f"paths.results_root={blocker / 'runs'}"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", "data.batch_size=0"),
        ("model.depth=10", "6n+2"),
        ("optim.lr=-1", "optim.lr=-1"),
        ("optim.schedule=linear", "cosine, step, constant"),
        ("norm.groups=32", "16"),
        ("trainer.epochs=-1", "trainer.epochs=-1 is invalid"),
        ("optim.warmup_epochs=5", "0 <= warmup_epochs < trainer.epochs=2"),
        ("optim.schedule=step", "needs at least one milestone"),
        ("optim.momentum=1.5", "0 <= momentum < 1"),
        ("data.source=imagenet", "allowed: folder, torchvision"),
        ("data.train_subset=5", "data.train_subset=5"),
        ("runtime.device=tpu", "allowed: auto, cpu, cuda"),
        ("runtime.threads=0", "runtime.threads=0"),
        ("seed=-1", "seed=-1"),
        ("seed=[0,0]", "a list of distinct ones"),
        ("seed=[]", "seed=[]"),
        ("+norm.momentum_typo=1", "its settings: momentum"),
    ],
)
def test_bad_settings_fail_before_any_data_is_read(make_cfg, monkeypatch, override, message):
    cfg = make_cfg("norm=gn", "model.base_width=16", override) if override.startswith("norm.") else make_cfg(override)
    monkeypatch.setattr(conductor, "load_cifar10", lambda *a: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_job(cfg)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "normexp.cli.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_hydra_app_runs_end_to_end(image_folder, tmp_path):
    common = [*tiny_run(image_folder, tmp_path), "trainer.epochs=1", "data.batch_size=16"]
    done = _cli(*common, "norm=gn", "norm.groups=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (summary,) = (tmp_path / "runs").glob("gn4_b16_s0_*/summary.json")
    assert json.loads(summary.read_text())["status"] == "finished"
    assert "epoch 1/1" in done.stdout + done.stderr

    sweep = _cli("-m", *common, "norm=bn,ln", "seed=0,1", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    assert len(list((tmp_path / "runs").glob("*/summary.json"))) == 5
    out = sweep.stdout + sweep.stderr
    assert "sweep plan: 4 job(s), 4 run(s), 4 run-epochs" in out and "job 4: ln_b16_s1 x 1 epochs" in out
    assert "sweep progress: 4 of 4 run-epochs done (100%)" in out


def test_progress_inside_an_epoch_is_a_line_a_minute_without_a_terminal(caplog):
    from normexp.train.progress import StepProgress

    progress = StepProgress(label="bn_b2_s0_x", every_s=0.0)
    progress.start(epoch=1, epochs=5, steps=100)
    with caplog.at_level("INFO", logger="normexp"):
        progress.update(step=50, steps=100, images_per_step=16, losses=[2.0])
    progress.close()
    assert re.search(r"bn_b2_s0_x epoch 1/5: step 50/100 \(50%\), \d+ img/s, epoch done in", caplog.text)


def test_log_lines_go_above_the_progress_bars_in_a_terminal(monkeypatch):
    import io
    import logging

    from normexp.train.progress import StepProgress

    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stderr", terminal)
    console = logging.StreamHandler(terminal)
    logging.root.addHandler(console)
    try:
        with StepProgress(label="bn_b2_s0_x", bar=True).logging_above_bars():
            assert console not in logging.root.handlers  # tqdm's handler writes the lines above the bars
        assert console in logging.root.handlers
        with StepProgress(label="bn_b2_s0_x", bar=False).logging_above_bars():
            assert console in logging.root.handlers
    finally:
        logging.root.removeHandler(console)


def test_cli_bad_input_exits_2_with_a_one_line_reason(tmp_path):
    bad = _cli("data.batch_size=-4", cwd=tmp_path)
    assert bad.returncode == 2
    assert "data.batch_size=-4 is invalid: must be an integer >= 1" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    missing = _cli("paths.cifar10_folder=/nowhere", f"paths.cache_dir={tmp_path}", cwd=tmp_path)
    assert missing.returncode == 2 and "CIFAR-10 image folder not found: /nowhere" in missing.stdout + missing.stderr
    typo = _cli("trainer.epoch=3", cwd=tmp_path)
    assert typo.returncode != 0 and "epoch" in typo.stderr and "Traceback" not in typo.stderr


def test_channels_last_only_where_onednn_gets_it_right(make_cfg):
    """oneDNN#6035: strided 1x1 convolutions with < 16 input channels go wrong in NHWC on CPU."""
    cpu = torch.device("cpu")
    narrow, wide = (build_model({**MODEL, "base_width": width}, norm_spec("bn")) for width in (8, 16))
    assert memory_format(True, narrow, cpu) == torch.contiguous_format
    assert memory_format(True, wide, cpu) == torch.channels_last
    assert memory_format(False, wide, cpu) == torch.contiguous_format


def test_the_default_layout_follows_the_norm_on_cpu_and_is_held_on_resume(make_cfg, monkeypatch):
    """null: channels_last for BN, NCHW for the GroupNorm family on CPU (faster there), channels_last
    on a GPU; a resume under another layout is refused (it changes the numbers)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    bn, gn = (build_model({**MODEL, "base_width": 16}, norm_spec(name)) for name in ("bn", "gn"))
    assert memory_format(None, bn, cpu) == torch.channels_last
    assert memory_format(None, gn, cpu) == torch.contiguous_format
    assert memory_format(None, gn, cuda) == torch.channels_last
    cfg = make_cfg("model.base_width=16", "trainer.epochs=2")
    with interrupted_at(monkeypatch, 2):
        with pytest.raises(KeyboardInterrupt):
            train_job(cfg)
    assert record.last_start(run_dir(cfg))["layout"] == "channels_last"
    with pytest.raises(ConfigError, match="layout channels_last -> contiguous"):
        train_job(make_cfg("model.base_width=16", "trainer.epochs=2", "runtime.channels_last=false"))


def test_channels_last_trains_to_the_same_numbers(make_cfg, tmp_path):
    runs = [make_cfg("model.base_width=16", "trainer.epochs=1", f"runtime.channels_last={flag}",
                     f"paths.results_root={tmp_path / str(flag)}") for flag in ("true", "false")]
    (nhwc,), (nchw,) = (train_job(cfg) for cfg in runs)
    assert nhwc["final_train_loss"] == pytest.approx(nchw["final_train_loss"], rel=1e-4)
    assert nhwc["final_test_loss"] == pytest.approx(nchw["final_test_loss"], rel=1e-4)


def test_precise_bn_changes_only_the_evaluation(make_cfg):
    precise = make_cfg("norm=bn_precise", "norm.precise_bn_batches=3", "norm.precise_bn_batch_size=32",
                       "trainer.epochs=2", "data.devices=2", "data.batch_size=4")
    plain = make_cfg("norm=bn", "trainer.epochs=2", "data.devices=2", "data.batch_size=4")
    train_job(plain)
    train_job(precise)
    assert run_dir(precise).name.startswith("bn-pbn_b4x2_s0_")
    ours, theirs = record_numbers(run_dir(precise)), record_numbers(run_dir(plain))
    assert [m["train_loss"] for m in ours] == [m["train_loss"] for m in theirs]  # the same training
    assert [m["test_loss"] for m in ours] != [m["test_loss"] for m in theirs]  # other test-time statistics
    checkpoint = torch.load(run_dir(precise) / record.CHECKPOINT, weights_only=False)
    reference = torch.load(run_dir(plain) / record.CHECKPOINT, weights_only=False)
    for key, value in reference["model"].items():  # the trained model's running averages are untouched
        torch.testing.assert_close(checkpoint["model"][key], value)


def test_a_half_trained_run_resumes_before_fresh_seeds_start():
    from types import SimpleNamespace

    fresh, resumed = SimpleNamespace(metrics=[]), SimpleNamespace(metrics=[{"epoch": 1}, {"epoch": 2}])
    cfg = SimpleNamespace(data=SimpleNamespace(devices=1, batch_size=2), runtime=SimpleNamespace(pack_max_batch=None))
    assert conductor._packs(cfg, [fresh, resumed], torch.device("cpu")) == [[resumed], [fresh]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_is_one_line_and_exit_2(tmp_path):
    done = _cli("runtime.device=cuda", f"paths.cache_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2 and "runtime.device='cuda' is invalid here" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
