import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import normexp.trainer as trainer
from normexp import records
from normexp.config import ConfigError
from normexp.trainer import train_run
from tests.conftest import interrupted_at, record_numbers

def test_tiny_run_lowers_its_loss_and_writes_a_complete_record(make_cfg):
    cfg = make_cfg("norm=gn", "norm.groups=2", "trainer.epochs=3", "optim.lr=0.05")
    [summary] = train_run(cfg)
    directory = records.run_dir(cfg)
    assert directory.name.startswith("gn2_b8_s0_")
    metrics = records.read_jsonl(directory / records.METRICS)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    losses = records.read_jsonl(directory / records.TRAIN_LOSS)
    assert losses and all(row["epoch"] in (1, 2, 3) for row in losses)
    for name in (records.CONFIG, records.CHECKPOINT, records.LOG, records.SUMMARY):
        assert (directory / name).is_file(), name
    assert "epoch 3/3" in (directory / records.LOG).read_text()
    assert summary["status"] == "finished" and summary["epochs_done"] == 3
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    assert summary["best_test_acc"] == max(m["test_acc"] for m in metrics)
    assert set(summary["epochs_to_acc"]) == {"50", "60", "70", "80"}
    assert summary["norm"] == "gn2" and summary["batch_size"] == 8 and summary["lr"] == pytest.approx(0.05 * 8 / 32)


def test_same_config_and_seed_reproduce_the_same_numbers(make_cfg, tmp_path):
    cfg = make_cfg("trainer.epochs=1")
    train_run(cfg)
    first = record_numbers(records.run_dir(cfg))
    other = make_cfg("trainer.epochs=1", f"results_root={tmp_path / 'other'}")
    train_run(other)
    assert record_numbers(records.run_dir(other)) == first
    seeded = make_cfg("trainer.epochs=1", "seed=1")
    train_run(seeded)
    assert record_numbers(records.run_dir(seeded)) != first


def test_interrupted_run_resumes_to_the_same_record(make_cfg, tmp_path, monkeypatch):
    reference = make_cfg("trainer.epochs=3", f"results_root={tmp_path / 'reference'}")
    train_run(reference)

    cfg = make_cfg("trainer.epochs=3")
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_run(cfg)
    directory = records.run_dir(cfg)
    assert not (directory / records.SUMMARY).exists()
    assert len(record_numbers(directory)) == 2

    [summary] = train_run(cfg)
    assert record_numbers(directory) == record_numbers(records.run_dir(reference))
    assert "resuming" in (directory / records.LOG).read_text()
    assert summary["final_test_acc"] == records.read_json(records.run_dir(reference) / records.SUMMARY)["final_test_acc"]


def test_finished_run_is_skipped(make_cfg, monkeypatch):
    cfg = make_cfg("trainer.epochs=1")
    first = train_run(cfg)
    monkeypatch.setattr(trainer, "_train", lambda *a: pytest.fail("trained again"))
    assert train_run(cfg) == first


def test_run_held_by_another_process_is_skipped(make_cfg):
    cfg = make_cfg("trainer.epochs=1")
    with records.claim(records.run_dir(cfg)) as claimed:
        assert claimed and records.is_claimed(records.run_dir(cfg))
        assert train_run(cfg) == []
    assert not records.is_claimed(records.run_dir(cfg))
    assert len(train_run(cfg)) == 1


def test_run_name_ignores_runtime_settings_only(make_cfg, tmp_path):
    base = records.run_name(make_cfg())
    assert records.run_name(make_cfg("trainer.threads=2", "trainer.progress=true")) == base
    assert records.run_name(make_cfg("trainer.channels_last=false")) == base
    assert records.run_name(make_cfg(f"data.cache_dir={tmp_path}/elsewhere")) == base
    assert records.run_name(make_cfg("optim.lr=0.2")) != base
    assert records.run_name(make_cfg("data.batch_size=4")).startswith("bn_b4_s0_")


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
        ("trainer.device=tpu", "allowed: auto, cpu, cuda"),
        ("trainer.threads=0", "trainer.threads=0"),
        ("seed=-1", "seed=-1"),
        ("seed=[0,0]", "a list of distinct ones"),
        ("seed=[]", "seed=[]"),
        ("+norm.momentum_typo=1", "its settings: momentum"),
    ],
)
def test_bad_settings_fail_before_any_data_is_read(make_cfg, monkeypatch, override, message):
    cfg = make_cfg("norm=gn", "model.base_width=16", override) if override.startswith("norm.") else make_cfg(override)
    monkeypatch.setattr(trainer, "load_cifar10", lambda *a: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_run(cfg)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "normexp.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_hydra_app_runs_end_to_end(image_folder, tmp_path):
    common = [f"data.folder={image_folder}", f"data.cache_dir={tmp_path / 'cache'}",
              f"results_root={tmp_path / 'runs'}", "model.base_width=4", "trainer.epochs=1",
              "data.batch_size=16", "trainer.threads=1"]
    done = _cli(*common, "norm=gn", "norm.groups=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (summary,) = (tmp_path / "runs").glob("gn4_b16_s0_*/summary.json")
    assert json.loads(summary.read_text())["status"] == "finished"
    assert "epoch 1/1" in done.stdout + done.stderr

    sweep = _cli("-m", *common, "norm=bn,ln", "seed=0,1", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    assert len(list((tmp_path / "runs").glob("*/summary.json"))) == 5


def test_cli_bad_input_exits_2_with_a_one_line_reason(tmp_path):
    bad = _cli("data.batch_size=-4", cwd=tmp_path)
    assert bad.returncode == 2
    assert "data.batch_size=-4 is invalid: must be an integer >= 1" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    missing = _cli("data.folder=/nowhere", f"data.cache_dir={tmp_path}", cwd=tmp_path)
    assert missing.returncode == 2 and "CIFAR-10 image folder not found: /nowhere" in missing.stdout + missing.stderr
    typo = _cli("trainer.epoch=3", cwd=tmp_path)
    assert typo.returncode != 0 and "epoch" in typo.stderr and "Traceback" not in typo.stderr


def test_channels_last_only_where_onednn_gets_it_right(make_cfg):
    """oneDNN#6035: strided 1x1 convolutions with < 16 input channels go wrong in NHWC on CPU."""
    cpu = trainer.torch.device("cpu")
    narrow = make_cfg("model.base_width=8")
    wide = make_cfg("model.base_width=16")
    assert trainer.memory_format(narrow, trainer.build_model(narrow), cpu) == trainer.torch.contiguous_format
    assert trainer.memory_format(wide, trainer.build_model(wide), cpu) == trainer.torch.channels_last
    off = make_cfg("model.base_width=16", "trainer.channels_last=false")
    assert trainer.memory_format(off, trainer.build_model(off), cpu) == trainer.torch.contiguous_format


def test_channels_last_trains_to_the_same_numbers(make_cfg, tmp_path):
    runs = [make_cfg("model.base_width=16", "trainer.epochs=1", f"trainer.channels_last={flag}",
                     f"results_root={tmp_path / str(flag)}") for flag in ("true", "false")]
    (nhwc,), (nchw,) = (train_run(cfg) for cfg in runs)
    assert nhwc["final_train_loss"] == pytest.approx(nchw["final_train_loss"], rel=1e-4)
    assert nhwc["final_test_loss"] == pytest.approx(nchw["final_test_loss"], rel=1e-4)
