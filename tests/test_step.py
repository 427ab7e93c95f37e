"""The device step (runtime.capture, normexp.train.step) against today's eager loop, on CPU: the same
ops a CUDA graph records, run eagerly. Its update computes p - (lr*g) where torch's SGD computes
p + (-lr)*g in one op, so the two agree to float rounding, not bit for bit: the tolerances below."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from normexp import record
from normexp.compose import compose
from normexp.train import harness, runtime
from normexp.train.conductor import train_job
from normexp.train.optim import build_optimizer
from normexp.train.step import DeviceSGD
from tests.helpers import interrupted_at, killed_and_resumed, record_numbers, run_dir

NORMS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "norm").glob("*.yaml"))
RTOL, ATOL = 1e-3, 1e-4  # 12 steps of float-rounding drift (seen: up to 2.4e-5 on weights of ~0.1)


@pytest.mark.parametrize("nesterov", [False, True])
def test_device_sgd_is_torch_sgd_with_a_tensor_rate(nesterov):
    cfg = compose(["optim.weight_decay=0.01", f"optim.nesterov={str(nesterov).lower()}"]).optim
    models = [torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours, torchs = build_optimizer(models[0], cfg, 64), build_optimizer(models[1], cfg, 64)
    device_sgd = DeviceSGD(ours)
    for step in range(6):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        for model in models:
            model.zero_grad()
            model(x).square().mean().backward()
        for optimizer in (ours, torchs):
            for group in optimizer.param_groups:
                group["lr"] = 0.1 / (step + 1)
        device_sgd.load_rates()
        device_sgd.step()
        torchs.step()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert ours.state_dict()["state"].keys() == torchs.state_dict()["state"].keys()


def _harness(overrides: list[str], members: int, device: str, capture: bool, layout: bool = False,
             images: int = 48) -> harness.Harness:
    """A width-16 ResNet-8 of `members` seeds packed, built through the harness on `images` random
    images in batches of 4 per device, over 2 epochs; its step eager or the device step (`capture`)."""
    cfg = compose([*overrides, "trainer.epochs=2", "model.base_width=16", "data.batch_size=4",
                   f"runtime.device={device}", f"runtime.channels_last={str(layout).lower()}"])
    pack = harness.pack([harness.seeded_model(harness.run_config(cfg, seed)) for seed in range(members)])
    env = runtime.job_environment(cfg, pack.model, capture)
    harness.prepare_model(pack.model, cfg, env)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (images,), generator=torch.Generator().manual_seed(1))
    train = harness.train_batches(cfg, pixels.to(env.device), labels.to(env.device), torch.full((3,), 0.5),
                                  torch.full((3,), 0.25), range(members), env)
    return harness.build(cfg, pack, train, env, 2, compile_mode=None)


def _train_steps(norm: str, step_kind: str, members: int, devices: int, schedule: str) -> list[torch.Tensor]:
    """Two epochs of a width-16 ResNet-8 on random images by one kind of step; the final parameters
    and BN statistics, and each epoch's loss sums."""
    trainer = _harness([f"norm={norm}", f"optim.schedule={schedule}", "optim.warmup_epochs=1",
                        f"data.devices={devices}"], members, "cpu", step_kind == "device")
    sums = []
    for epoch in (1, 2):
        result = trainer.epoch(epoch, 2, frozen=norm == "bn_frozen" and epoch == 2)
        sums.append(torch.tensor([r["train_loss"] for r in result.records]))
    return [*trainer.pack.model.state_dict().values(), *sums]


@pytest.mark.parametrize("norm", NORMS)
def test_the_device_step_trains_every_norm_as_the_eager_loop_does(norm):
    eager, device = _train_steps(norm, "eager", 1, 2, "cosine"), _train_steps(norm, "device", 1, 2, "cosine")
    for a, b in zip(eager, device):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_the_device_step_trains_packed_per_device_bn_as_the_eager_loop_does(schedule):
    eager, device = _train_steps("bn", "eager", 2, 2, schedule), _train_steps("bn", "device", 2, 2, schedule)
    for a, b in zip(eager, device):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)


def test_a_captured_run_records_what_the_eager_run_records_and_resumes_exactly(make_cfg, tmp_path, monkeypatch):
    eager = make_cfg("norm=bn", "data.devices=2", "data.batch_size=4", "trainer.epochs=3",
                     f"paths.results_root={tmp_path / 'eager'}")
    train_job(eager)
    cfg = make_cfg("norm=bn", "data.devices=2", "data.batch_size=4", "trainer.epochs=3", "runtime.capture=true")
    assert run_dir(cfg).name == run_dir(eager).name  # the step is not in the identity...
    with interrupted_at(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    train_job(cfg)
    starts = record.read_jsonl(run_dir(cfg) / record.STARTS)
    assert [s["step"] for s in starts] == ["captured", "captured"]  # ...but recorded, and held on resume
    reference = make_cfg("norm=bn", "data.devices=2", "data.batch_size=4", "trainer.epochs=3", "runtime.capture=true",
                         f"paths.results_root={tmp_path / 'reference'}")
    train_job(reference)
    assert record_numbers(run_dir(cfg)) == record_numbers(run_dir(reference))
    for ours, theirs in zip(record_numbers(run_dir(cfg)), record_numbers(run_dir(eager))):
        for key, value in theirs.items():
            assert ours[key] == (pytest.approx(value, rel=1e-3, abs=1e-3) if isinstance(value, float) else value), key
    for run in (cfg, eager):  # each epoch's fill and its step loop, timed apart, for either step
        for row in record.read_jsonl(run_dir(run) / record.METRICS):
            assert 0 < row["fill_seconds"] and 0 < row["loop_seconds"]
            assert row["fill_seconds"] + row["loop_seconds"] <= row["train_seconds"]


def test_a_run_started_eagerly_does_not_resume_captured(make_cfg, monkeypatch):
    from normexp.config import ConfigError

    cfg = make_cfg("trainer.epochs=2")
    with interrupted_at(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        train_job(cfg)
    with pytest.raises(ConfigError, match="step eager -> captured"):
        train_job(make_cfg("trainer.epochs=2", "runtime.capture=true"))


def test_a_start_recorded_before_the_step_was_recorded_reads_as_eager():
    before = {"device": "cpu", "threads": 1, "torch_version": "2.14.1"}
    assert record.environment_change(before, {**before, "step": "eager"}) == []
    assert record.environment_change(before, {**before, "step": "captured"}) == ["step eager -> captured"]



CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cuda_training(norm: str, capture: bool, channels_last: bool = False, precision: str | None = None,
                   frozen_from: int | None = None) -> list[torch.Tensor]:
    """Two epochs of 6 steps on CUDA (3 warm-up steps, a capture, replays; then the next epoch's),
    2 seeds packed on 2 devices, eager or captured; FrozenBN's switch at `frozen_from` records a new
    graph. Deterministic kernels, so captured and eager differ by float rounding alone."""
    return _cuda_trainer(norm, capture, channels_last, precision, frozen_from)()


def _cuda_trainer(norm: str, capture: bool, channels_last: bool = False, precision: str | None = None,
                  frozen_from: int | None = None) -> Callable[[], list[torch.Tensor]]:
    """`_cuda_training`'s set-up (config, seeded models, data, step: Hydra's and torch's global state,
    so one thread at a time) and a function that trains and returns the weights (any thread)."""
    trainer = _harness([f"norm={norm}", "data.devices=2", f"trainer.precision={precision or 'null'}"], 2, "cuda",
                       capture, channels_last)
    torch.cuda.synchronize()  # the set-up's copies are done before another stream trains on them

    def trained() -> list[torch.Tensor]:
        for epoch in (1, 2):
            trainer.epoch(epoch, 2, frozen=frozen_from is not None and epoch >= frozen_from)
        torch.cuda.synchronize()
        return [t.cpu() for t in trainer.pack.model.state_dict().values()]

    return trained


@pytest.fixture
def deterministic_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("norm", ["bn", "gn", "brn", "frn"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_on_cuda_the_captured_graph_trains_as_the_eager_loop_does(norm, channels_last, deterministic_cuda):
    """In both layouts (channels_last is the GPU's default): captured = eager to float rounding."""
    for a, b in zip(_cuda_training(norm, False, channels_last), _cuda_training(norm, True, channels_last)):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_on_cuda_bf16_captured_trains_as_bf16_eager_does(norm, deterministic_cuda):
    """bf16 autocast inside the graph: the same ops as eager bf16 (bf16's rounding: wider tolerance)."""
    for a, b in zip(_cuda_training(norm, False, True, "bf16"), _cuda_training(norm, True, True, "bf16")):
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.gpu
@CUDA
def test_on_cuda_frozen_bn_recaptures_at_its_switch_and_trains_as_eager(deterministic_cuda):
    for a, b in zip(_cuda_training("bn_frozen", False, frozen_from=2),
                    _cuda_training("bn_frozen", True, frozen_from=2)):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@CUDA
def test_on_cuda_two_threads_capture_and_replay_at_once_as_each_would_alone(deterministic_cuda):
    """hydra/launcher=threads's case: jobs as threads, each on its own stream, capturing and replaying
    side by side; each trains as it does alone."""
    from concurrent.futures import ThreadPoolExecutor

    trainers = [_cuda_trainer(norm, True, True) for norm in ("bn", "gn")]  # set up here, one after another

    def on_its_own_stream(train: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        with torch.cuda.stream(torch.cuda.Stream()):
            return train()

    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(on_its_own_stream, trainers))
    for norm, trained in zip(["bn", "gn"], together):
        for a, b in zip(_cuda_training(norm, True, True), trained):
            torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@CUDA
@pytest.mark.slow
def test_on_cuda_a_captured_run_resumes_with_the_uninterrupted_numbers(make_cfg, monkeypatch, tmp_path,
                                                                       deterministic_cuda):
    """The conductor's whole path on the GPU (channels_last, captured): killed in epoch 2 and resumed,
    it records what the uninterrupted run records, to float rounding."""
    settings = ("runtime.device=cuda", "data.devices=2", "data.batch_size=4", "trainer.epochs=3")
    resumed, reference = killed_and_resumed(make_cfg, monkeypatch, tmp_path, settings, 2)
    starts = record.read_jsonl(resumed / record.STARTS)
    assert [s["step"] for s in starts] == ["captured", "captured"] and starts[0]["layout"] == "channels_last"
    for ours, theirs in zip(record_numbers(resumed), record_numbers(reference)):
        for key, value in theirs.items():
            assert ours[key] == (pytest.approx(value, rel=1e-3, abs=1e-3) if isinstance(value, float) else value), key


def test_a_cumulative_bn_average_is_refused_in_a_cuda_graph_with_one_line():
    from normexp.config import ConfigError
    from normexp.train.step import check_capturable

    with pytest.raises(ConfigError, match=r"^norm.momentum=null .* runtime.capture=false$"):
        check_capturable({"name": "bn", "momentum": None}, graph=True)
    check_capturable({"name": "bn", "momentum": None}, graph=False)  # eager: the host may read it
    check_capturable({"name": "bn", "momentum": 0.1}, graph=True)


def test_a_failed_capture_names_the_norm_and_stops_a_shared_process_on_a_torch_it_would_poison(monkeypatch, caplog):
    """Alone, or on a torch that recovers (2.12+), a failed capture is the job's one-line error; with
    other jobs capturing in the process on torch < 2.12 it ends the process with one line (exit 3)."""
    from normexp.train import step

    error = RuntimeError("operation not permitted when stream is capturing")
    for shared, poisons in ((False, True), (True, False), (False, False)):
        assert str(step.capture_failed("brn", error, shared, poisons)) == (
            "capturing the training step of norm=brn as a CUDA graph failed (operation not permitted when stream "
            "is capturing); train it with runtime.capture=false")

    class Exited(Exception):
        pass

    def exit_(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(step.os, "_exit", exit_)
    monkeypatch.setattr(step.logging, "shutdown", lambda: None)  # the real one would close pytest's handlers
    with caplog.at_level("ERROR", logger="normexp"), pytest.raises(Exited) as exited:
        step.capture_failed("brn", error, shared=True, poisons=True)
    assert exited.value.args == (3,)
    assert "the sweep stops here: rerun it without norm=brn, and norm=brn with runtime.capture=false" in caplog.text


@pytest.mark.parametrize("kind", ["eager", "device"])
def test_a_compiled_forward_records_its_compilation_in_the_epoch_it_compiles(kind):
    """compile_seconds times the step that compiles the forward (here with a backend that takes 2 s),
    in the first epoch only."""
    from normexp.train.step import DeviceStep, EagerStep

    def two_second_backend(graph: torch.fx.GraphModule, inputs: list) -> Callable:
        time.sleep(2.0)
        return graph.forward

    trainer = _harness(["norm=bn"], 1, "cpu", capture=kind == "device", images=16)
    forward = torch.compile(trainer.pack.model, backend=two_second_backend)
    cpu = torch.device("cpu")
    trainer.step = (EagerStep(trainer.pack, forward, trainer.optimizer, cpu) if kind == "eager" else
                    DeviceStep(trainer.pack, forward, trainer.optimizer, trainer.train, cpu, False, "bn"))
    compiled, after = (trainer.epoch(epoch, 2).records[0] for epoch in (1, 2))
    assert 2.0 <= compiled["compile_seconds"] < compiled["train_seconds"]
    assert "compile_seconds" not in after


def test_a_compilation_is_timed_again_only_when_frozen_bn_changes_the_layers_mode():
    from normexp.train.step import Compilation

    cpu, slow = torch.device("cpu"), lambda: time.sleep(0.2)
    compilation = Compilation(torch.compile(torch.nn.Linear(2, 2)))
    timed = []
    for frozen in (False, False, True, True):  # FrozenBN's switch before the third epoch
        compilation.start_epoch(frozen)
        compilation.run(slow, cpu)
        compilation.run(slow, cpu)  # a second step of the epoch never compiles
        timed.append(compilation.seconds)
    assert 0.2 <= timed[0] < 0.4 and 0.2 <= timed[2] < 0.4 and timed[1] == timed[3] == 0.0
    eager = Compilation(torch.nn.Linear(2, 2))
    eager.start_epoch(False)
    eager.run(slow, cpu)
    assert eager.seconds == 0.0


def test_a_compiled_forward_is_recognised_for_the_warm_up_lock():
    """A captured step whose forward is compiled holds the capture lock over its warm-up as well
    (compilation syncs the device): the check that decides it."""
    from normexp.train.step import _compiled

    model = torch.nn.Linear(2, 2)
    assert not _compiled(model) and _compiled(torch.compile(model))
