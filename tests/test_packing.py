"""Packed runs (`seed=[...]`) compute what each run computes alone, and keep single-run record."""

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normexp.train.conductor as conductor
from normexp import record
from normexp.config import ConfigError
from normexp.nn import packing
from normexp.nn.models import CifarResNet
from normexp.nn.norms import NORMS, build_norm, register_norm
from normexp.train.conductor import train_job
from tests.helpers import assert_packed_equals_members, interrupted_at, norm_spec, record_numbers, run_dir

PACK = "runtime.pack_max_batch=8"  # make_cfg's batch size is 8
NORM_SPECS = [norm_spec("bn"), {"name": "gn", "groups": 4}, {"name": "gn", "channels_per_group": 2},
              {"name": "ln"}, {"name": "in"}, {"name": "none"}]


def _models(spec: dict, seeds=(0, 1, 2)) -> list[nn.Module]:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = CifarResNet(build_norm(spec), depth=8, base_width=8, num_classes=10, zero_init_residual=True)
        for module in model.modules():  # non-trivial norm affines and BN statistics
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(module.weight, 1.0, 0.2)
                nn.init.normal_(module.bias, 0.0, 0.2)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
        models.append(model)
    return models


@pytest.mark.parametrize("spec", NORM_SPECS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_model_computes_each_member_exactly_as_alone(spec, mode):
    assert_packed_equals_members(_models(spec), mode)


def test_gradients_and_optimizer_state_stay_with_their_member():
    models = _models(norm_spec("bn"), seeds=(0, 1))
    packed = packing.pack(models)
    xs = [torch.randn(2, 3, 32, 32) for _ in models]
    ys = [torch.randint(0, 10, (2,)) for _ in models]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (*models, packed)]
    for _ in range(3):
        for model, optimizer, x, y in zip(models, optimizers, xs, ys):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        optimizers[-1].zero_grad()
        out = packed(torch.cat(xs, dim=1)).view(2, 2, 10)
        sum(F.cross_entropy(out[:, k], y) for k, y in enumerate(ys)).backward()
        optimizers[-1].step()
    packed_optimizer = optimizers[-1].state_dict()
    for k, (model, optimizer) in enumerate(zip(models, optimizers)):
        for key, value in packing.member_state(packed.state_dict(), 2, k).items():
            torch.testing.assert_close(value, model.state_dict()[key], rtol=1e-4, atol=1e-5)
        member = packing.member_optimizer_state(packed_optimizer, 2, k)
        for i, slots in optimizer.state_dict()["state"].items():
            torch.testing.assert_close(member["state"][i]["momentum_buffer"], slots["momentum_buffer"],
                                       rtol=1e-4, atol=1e-5)
    repacked = packing.pack_optimizer_state([packing.member_optimizer_state(packed_optimizer, 2, k) for k in range(2)])
    for i, slots in packed_optimizer["state"].items():
        assert torch.equal(repacked["state"][i]["momentum_buffer"], slots["momentum_buffer"])


def test_a_diverged_member_does_not_leak_into_the_others():
    models = _models({"name": "gn", "groups": 4})
    packed = packing.pack(models)
    with torch.no_grad():
        for name, tensor in packed.state_dict().items():
            if tensor.ndim:
                tensor.chunk(3)[1].fill_(float("nan"))
    x = torch.randn(2, 9, 32, 32)
    out = packed(x).view(2, 3, 10)
    assert out[:, 1].isnan().all() and out[:, [0, 2]].isfinite().all()


def test_packed_job_writes_the_records_of_solo_runs(make_cfg, tmp_path):
    packed = make_cfg(PACK, "seed=[0,1,2]", "trainer.epochs=2")
    summaries = train_job(packed)
    assert ([s["run"].split("_")[2] for s in summaries] == ["s0", "s1", "s2"]
            and {s["pack_size"] for s in summaries} == {3})
    for seed, summary in zip((0, 1, 2), summaries):
        solo = make_cfg(f"seed={seed}", "trainer.epochs=2", f"paths.results_root={tmp_path / 'solo'}")
        [alone] = train_job(solo)
        directory = run_dir(solo)
        assert summary["run"] == directory.name  # the same run: same name, same hash
        for mine, theirs in zip(record_numbers(run_dir(make_cfg(f"seed={seed}", "trainer.epochs=2"))),
                                record_numbers(directory)):
            assert mine["epoch"] == theirs["epoch"]
            for key in ("train_loss", "test_loss"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4), (seed, key)
        assert abs(summary["final_test_acc"] - alone["final_test_acc"]) <= 100 / 40  # one test image of 40


def test_seeds_above_the_packing_batch_size_train_one_after_another(make_cfg):
    summaries = train_job(make_cfg("seed=[0,1]", "trainer.epochs=1", "runtime.pack_max_batch=4"))
    assert ([(s["run"].split("_")[2], s["pack_size"], s["status"]) for s in summaries]
            == [("s0", 1, "finished"), ("s1", 1, "finished")])


def test_a_seed_queued_behind_another_records_its_start_when_it_begins_to_train(make_cfg):
    """starts.jsonl times a start when the run begins to train, not when its job set it up: while
    the first seed trains, the second, waiting its turn, has no start yet."""
    started_while_training: list[set[str]] = []
    cfg = make_cfg("seed=[0,1]", "trainer.epochs=2", "runtime.pack_max_batch=4")
    root = Path(cfg.paths.results_root).resolve()

    def hook(run: str, epochs: int, trained: bool) -> None:
        if trained:
            started_while_training.append({d.name for d in root.iterdir() if record.read_jsonl(d / record.STARTS)})

    first, second = (s["run"] for s in train_job(cfg, on_epoch=hook))
    assert started_while_training[:2] == [{first}, {first}]
    assert started_while_training[2:] == [{first, second}, {first, second}]
    assert [len(record.read_jsonl(root / name / record.STARTS)) for name in (first, second)] == [1, 1]


def test_a_runs_log_takes_the_jobs_shared_lines_only_while_it_trains(make_cfg):
    """The job's shared lines (logger `normexp`, as the launcher's sweep progress) reach the log of
    the run training now: not that of a run that has finished, nor that of one waiting its turn."""
    job_log = logging.getLogger("normexp")
    def hook(run: str, epochs: int, trained: bool) -> None:
        if trained:  # an epoch of `run` trained just now
            job_log.info("job line for %s", run)

    cfg = make_cfg("seed=[0,1]", "trainer.epochs=2", "runtime.pack_max_batch=4")
    first, second = (s["run"] for s in train_job(cfg, on_epoch=hook))
    root = Path(cfg.paths.results_root).resolve()
    first_log, second_log = ((root / name / record.LOG).read_text() for name in (first, second))
    assert f"job line for {first}" in first_log and f"job line for {second}" in second_log
    assert f"job line for {second}" not in first_log and f"job line for {first}" not in second_log


def test_packed_job_resumes_and_skips_finished_members(make_cfg, tmp_path, monkeypatch):
    reference = make_cfg(PACK, "seed=[0,1]", "trainer.epochs=3", f"paths.results_root={tmp_path / 'reference'}")
    train_job(reference)
    cfg = make_cfg(PACK, "seed=[0,1]", "trainer.epochs=3")
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    assert [s["status"] for s in train_job(cfg)] == ["finished"] * 2
    for seed in (0, 1):
        resumed = run_dir(make_cfg(f"seed={seed}", "trainer.epochs=3"))
        assert record_numbers(resumed) == record_numbers(run_dir(make_cfg(
            f"seed={seed}", "trainer.epochs=3", f"paths.results_root={tmp_path / 'reference'}")))
        assert "resuming" in (resumed / record.LOG).read_text()
    # a packed job over finished and new seeds trains only the new one
    trained = []

    def fake_train(cfg, members, data, device, *hooks):
        trained.extend(m.cfg.seed for m in members)
        for m in members:
            m.summary = {"status": "stub"}

    monkeypatch.setattr(conductor, "_train", fake_train)
    summaries = train_job(make_cfg(PACK, "seed=[1,2,0]", "trainer.epochs=3"))
    assert trained == [2] and [s["status"] for s in summaries] == ["finished", "finished", "stub"]


def test_a_packed_checkpoint_resumes_as_a_solo_run(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(PACK, "seed=[0,1]", "trainer.epochs=2")
    with interrupted_at(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    [summary] = train_job(make_cfg("seed=1", "trainer.epochs=2"))
    [alone] = train_job(make_cfg("seed=1", "trainer.epochs=2", f"paths.results_root={tmp_path / 'alone'}"))
    assert summary["epochs_done"] == 2 and summary["pack_size"] == 1
    assert summary["final_train_loss"] == pytest.approx(alone["final_train_loss"], rel=1e-4)


def test_a_layer_packing_does_not_know_is_refused_before_any_data_is_read(make_cfg, monkeypatch):
    @register_norm("test_layernorm")
    def layer_norm_hw() -> object:
        return lambda channels: nn.LayerNorm(32)

    try:
        monkeypatch.setattr(conductor, "load_cifar10", lambda *a: pytest.fail("data was read"))
        cfg = make_cfg(PACK, "seed=[0,1]", "norm=none", "norm.name=test_layernorm")
        with pytest.raises(ConfigError, match="cannot pack a LayerNorm layer.*seed=<int>"):
            train_job(cfg)
    finally:
        NORMS.pop("test_layernorm")
