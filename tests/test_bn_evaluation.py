"""The three evaluations of batch-dependent norms on the same weights, and FrozenBN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normexp import record
from normexp.config import ConfigError, first_frozen_epoch
from normexp.data import EvalBatches, TrainBatches
from normexp.nn.devices import split_batch_statistics
from normexp.nn.models import build_model
from normexp.nn.precise_bn import population_statistics
from normexp.train.bn_evaluation import StatisticsDraw, evaluate_batch_statistics, freeze_batch_statistics
from normexp.train.conductor import train_job
from normexp.train.engine import evaluate
from tests.helpers import norm_spec, record_numbers, run_dir

MODEL = {"depth": 8, "base_width": 4, "num_classes": 10, "zero_init_residual": False}


def _batches(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def test_population_statistics_are_the_variance_of_all_inputs_whatever_the_split():
    bn = nn.BatchNorm2d(3)
    x = torch.randn(24, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 4.0
    population_statistics(bn, x.split(4), 6)  # six batches of 4: per-batch variances would be biased low
    values = x.transpose(0, 1).flatten(1)
    torch.testing.assert_close(bn.running_mean, values.mean(1))
    torch.testing.assert_close(bn.running_var, values.var(1))
    assert bn.training and bn.num_batches_tracked.item() == 0


def test_batch_statistics_evaluation_normalizes_per_device_groups_of_the_test_set():
    torch.manual_seed(0)
    model = build_model(MODEL, norm_spec("bn"))
    images, labels = _batches(50)
    test = EvalBatches(images, labels, 16, torch.full((3,), 0.5), torch.full((3,), 0.25))
    before = copy.deepcopy(model.state_dict())
    loss, acc = evaluate_batch_statistics(model, test, per_device=4, seed=3)
    for key, value in model.state_dict().items():  # the evaluated model is untouched
        torch.testing.assert_close(value, before[key])
    # by hand: the seeded order, filled up to a multiple of 4 from its start, each 4 normalized alone
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    order = torch.cat([order, order[:2]])
    alone = copy.deepcopy(model).train()
    logits = torch.cat([alone(test.x[order[i:i + 4]]) for i in range(0, 52, 4)])[:50]
    expected = nn.functional.cross_entropy(logits, test.y[order[:50]]).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert acc == pytest.approx(100.0 * (logits.argmax(1) == test.y[order[:50]]).float().mean().item())
    assert evaluate_batch_statistics(model, test, per_device=4, seed=4) != (loss, acc)  # the order matters


def test_batch_renorm_is_evaluated_with_its_batch_statistics_not_renormalized():
    torch.manual_seed(0)
    model = build_model(MODEL, norm_spec("brn"))
    images, labels = _batches(64)
    train = TrainBatches(images, labels, 16, torch.full((3,), 0.5), torch.full((3,), 0.25), seeds=[0])
    model.train()
    for x, _ in train.epoch(1):  # running statistics away from their initial values; past the warm-up's start
        model(x)
    test = EvalBatches(images[:32], labels[:32], 16, torch.full((3,), 0.5), torch.full((3,), 0.25))
    # train-mode Batch Renorm with unclipped r and d computes eval mode's output; batch statistics differ
    assert evaluate_batch_statistics(model, test, per_device=4, seed=0) != pytest.approx(evaluate(model, test))


def test_after_the_freeze_train_mode_computes_what_eval_mode_does():
    torch.manual_seed(0)
    model = split_batch_statistics(build_model(MODEL, norm_spec("bn")), 2)
    images, labels = _batches(64)
    train = TrainBatches(images, labels, 16, torch.full((3,), 0.5), torch.full((3,), 0.25), seeds=[0])
    StatisticsDraw.of(train, 32).apply(model, epoch=9)
    x = next(iter(train.epoch(1)))[0]
    model.train()
    assert not torch.allclose(model(x), model.eval()(x))  # batch statistics differ from the population's
    model.train()
    freeze_batch_statistics(model)
    frozen = model(x)
    torch.testing.assert_close(frozen, model.eval()(x))
    frozen.sum().backward()  # the affine weights still learn
    assert all(p.grad is not None for n, p in model.named_parameters() if "norm" in n)


def test_the_freeze_starts_at_the_first_epoch_boundary_at_or_past_its_fraction():
    assert first_frozen_epoch(0.8, 5) == 5 and first_frozen_epoch(0.8, 10) == 9 and first_frozen_epoch(0.5, 5) == 4
    assert first_frozen_epoch(None, 5) is None


def test_bn_runs_record_three_evaluations_and_gn_runs_one(make_cfg):
    settings = ("data.devices=2", "data.batch_size=4", "evaluation.precise_images=64",
                "evaluation.batch_statistics=true")
    bn, gn = make_cfg("norm=bn", *settings), make_cfg("norm=gn", "norm.groups=2", *settings)
    (bn_summary,), (gn_summary,) = train_job(bn), train_job(gn)
    rows = record.read_jsonl(run_dir(bn) / record.METRICS)
    assert all({"test_acc", "test_acc_precise", "test_acc_batch", "test_loss_precise", "test_loss_batch"} <= set(r)
               for r in rows)
    assert bn_summary["final_test_acc_batch"] == rows[-1]["test_acc_batch"]
    assert len({rows[-1]["test_loss"], rows[-1]["test_loss_precise"], rows[-1]["test_loss_batch"]}) == 3
    assert "test_acc_precise" not in record.read_jsonl(run_dir(gn) / record.METRICS)[-1]
    assert "final_test_acc_batch" not in gn_summary


def test_the_evaluations_leave_training_and_the_run_name_alone(make_cfg, tmp_path):
    on = make_cfg("data.devices=2", "data.batch_size=4", "evaluation.precise_images=4096",
                  "evaluation.batch_statistics=true")
    off = make_cfg("data.devices=2", "data.batch_size=4", f"paths.results_root={tmp_path / 'off'}")  # the default: off
    train_job(on), train_job(off)
    assert run_dir(on).name == run_dir(off).name
    extra = {"test_loss_precise", "test_acc_precise", "test_loss_batch", "test_acc_batch"}
    assert ([{k: v for k, v in r.items() if k not in extra} for r in record_numbers(run_dir(on))]
            == record_numbers(run_dir(off)))


def test_a_run_resumes_only_with_the_evaluations_it_started_with(make_cfg, monkeypatch):
    from tests.helpers import interrupted_at

    cfg = make_cfg("trainer.epochs=2", "evaluation.precise_images=4096")
    with interrupted_at(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    with pytest.raises(ConfigError, match=r"evaluation.precise_images 4096 -> 64"):
        train_job(make_cfg("trainer.epochs=2", "evaluation.precise_images=64"))
    assert train_job(cfg)[0]["epochs_done"] == 2


def test_frozen_bn_trains_as_bn_until_the_switch_then_differs_and_resumes_exactly(make_cfg, monkeypatch, tmp_path):
    from tests.helpers import interrupted_at

    settings = ("data.devices=2", "data.batch_size=4", "trainer.epochs=3", "evaluation.precise_images=4096")
    frozen = make_cfg("norm=bn_frozen", "norm.freeze_after=0.5", "norm.freeze_images=64", *settings)
    plain = make_cfg("norm=bn", *settings)
    train_job(frozen), train_job(plain)
    assert run_dir(frozen).name.startswith("bn-frozen0.5_b4x2_s0_")
    ours, theirs = record_numbers(run_dir(frozen)), record_numbers(run_dir(plain))
    assert [r["frozen_bn"] for r in ours] == [False, False, True]  # epoch 3 is the first to start past half
    assert "test_acc_precise" in ours[1] and "test_acc_precise" not in ours[2]  # not after the switch
    assert ours[1]["train_loss"] == theirs[1]["train_loss"] and ours[2]["train_loss"] != theirs[2]["train_loss"]
    again = make_cfg("norm=bn_frozen", "norm.freeze_after=0.5", "norm.freeze_images=64", *settings,
                     f"paths.results_root={tmp_path / 'again'}")
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_job(again)  # stopped at the switch: the resumed run freezes as the uninterrupted one did
    train_job(again)
    assert record_numbers(run_dir(again)) == ours


@pytest.mark.parametrize("setting, message", [
    ("norm.freeze_after=1.5", "norm.freeze_after=1.5 is invalid"),
    ("norm.freeze_images=null", "norm.freeze_after and norm.freeze_images go together"),
    ("norm.freeze_after=0.99", "freezes no epoch of trainer.epochs=5"),
])
def test_bad_frozen_bn_settings_are_refused(make_cfg, setting, message):
    with pytest.raises(ConfigError, match=message):
        train_job(make_cfg("norm=bn_frozen", "trainer.epochs=5", setting))


def test_the_decomposition_pairs_each_remedy_with_the_weights_it_fixes():
    import pandas as pd

    from normexp.analysis.bn_decomposition import decomposition

    rows = []
    for seed, noise in enumerate((0.0, 0.4, -0.4)):
        rows += [{"norm": "bn", "batch_size": 32, "seed": seed, "final_test_acc": 80 + noise,
                  "final_test_acc_precise": 80.5 + noise, "final_test_acc_batch": 79 + noise},
                 {"norm": "bn", "batch_size": 2, "seed": seed, "final_test_acc": 60 + noise,
                  "final_test_acc_precise": 66 + noise + seed, "final_test_acc_batch": 70 + noise},
                 {"norm": "bn-frozen0.8", "batch_size": 2, "seed": seed, "final_test_acc": 64 + noise}]
    table = decomposition(pd.DataFrame(rows), "bn", "bn-frozen0.8", 32, 0.05).iloc[0]
    assert table["BN loss vs reference"].startswith("+20.00 [")
    assert table["precise recovers"].startswith("+7.00 [")  # 6, 7, 8: paired, so only their spread counts
    assert table["batch statistics recovers"] == "+10.00 [+10.00, +10.00]"
    assert table["FrozenBN recovers"] == "+4.00 [+4.00, +4.00]"
    assert table["best at this batch"] == "batch statistics"
    assert table["remains"].startswith("+9.00 [")  # batch statistics at 32 (79) minus at 2 (70)


def test_analysis_writes_the_statistics_tables_and_refuses_mixed_evaluations(make_cfg, tmp_path, capsys):
    from normexp.cli.analyze import main

    root = tmp_path / "runs"
    common = ("trainer.epochs=2", "data.devices=2", "seed=[0,1]", "evaluation.precise_images=32",
              "evaluation.batch_statistics=true")
    frozen = ("norm=bn_frozen", "norm.freeze_after=0.5", "norm.freeze_images=32")
    for overrides in (("norm=bn", "data.batch_size=2"), ("norm=bn", "data.batch_size=4"),
                      (*frozen, "data.batch_size=2")):
        train_job(make_cfg(*overrides, *common))
    assert main([str(root), "--set", "reference_batch=4"]) == 0
    decomposition = (root / "tables" / "bn_decomposition.md").read_text()
    assert "FrozenBN recovers" in decomposition and (root / "figures" / "statistics_by_epoch.png").is_file()
    assert "precise" in (root / "tables" / "bn_statistics.md").read_text()
    train_job(make_cfg("norm=bn", "data.batch_size=8", *common, "evaluation.precise_images=64"))
    assert main([str(root), "--set", "reference_batch=4"]) == 2
    assert "different `evaluation` settings" in capsys.readouterr().err
