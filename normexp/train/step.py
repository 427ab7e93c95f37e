"""A pack's training step, eager as it always was or as one unit a CUDA graph can hold.

`EagerStep` is the loop normexp has always run: a batch view, torch.optim.SGD, host-side nothing.
`DeviceStep` (runtime.capture) keeps everything that changes between steps on the device, so that
on CUDA the whole step (forward, per-member losses, backward, update) is recorded once as a CUDA
graph and replayed (PyTorch's whole-network capture):
- the batch is gathered from the epoch buffer (TrainBatches.fill, fixed addresses) by a step counter;
- the learning rate is a device tensor the host fills from the schedule before each step;
- the update is `DeviceSGD`: torch.optim.SGD's foreach math with a tensor rate (torch's SGD reads a
  tensor rate with `.item()`, a host sync no graph can hold), its buffers in the SGD's own state;
- the losses and hits add up in place (`Totals`); the host reads them every `log_every` steps.
The first `WARMUP` steps of a capture run eagerly on a side stream (real steps, the same ops), the
next is recorded and from then on replayed; FrozenBN's switch records a new graph. Off CUDA the
same ops run eagerly: that is the path the CPU tests compare with `EagerStep`.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from normexp.config import ConfigError
from normexp.data import TrainBatches
from normexp.nn.packing import Pack
from normexp.nn.precision import autocast
from normexp.threads import CAPTURING, SHARED_PROCESS
from normexp.train.runtime import Environment

log = logging.getLogger("normexp")

WARMUP = 3  # eager steps before a capture (cuDNN's algorithm choice, lazy state, the autograd streams)
# before torch 2.12 a failed capture keeps the allocator's pool (pytorch#180395): every later capture
# in the process dies with an unrelated internal assert
CAPTURE_FAILURE_POISONS = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 12)


def capture_failed(norm: str, error: BaseException, shared: bool, poisons: bool) -> ConfigError:
    """The error a failed capture of norm's step raises: a ConfigError that names the norm and
    `runtime.capture=false` when this job is alone; with other jobs capturing in this process on a
    torch whose failed capture breaks the next ones (`poisons`), it logs one line and ends the
    process (exit 3), as the other jobs' next capture would fail without cause (their finished
    epochs are kept and resume)."""
    cause = " ".join(str(error).split())[:300]
    if shared and poisons:
        log.error("capturing the training step of norm=%s as a CUDA graph failed (%s); on torch %s that breaks "
                  "every later capture in this process (pytorch#180395, fixed in 2.12), so the sweep stops here: "
                  "rerun it without norm=%s, and norm=%s with runtime.capture=false", norm, cause,
                  torch.__version__, norm, norm)
        logging.shutdown()
        os._exit(3)
    return ConfigError(f"capturing the training step of norm={norm} as a CUDA graph failed ({cause}); "
                       f"train it with runtime.capture=false")


class Totals:
    """Per-member sums on the device: the epoch's loss and hits, and the loss of the log window."""

    def __init__(self, members: int, device: torch.device) -> None:
        self.loss = torch.zeros(members, device=device)
        self.window = torch.zeros(members, device=device)
        self.correct = torch.zeros(members, device=device, dtype=torch.int64)

    def add(self, loss: Tensor, hits: Tensor) -> None:
        self.loss += loss
        self.window += loss
        self.correct += hits

    def zero(self) -> None:
        for total in (self.loss, self.window, self.correct):
            total.zero_()


class Compilation:
    """The seconds a compiled forward spends compiling, this epoch's: it compiles on its first
    training step (Dynamo's trace, the backend's code for the forward and the backward) and again on
    the first after FrozenBN's switch changes its layers' mode; `run` times those steps whole, their
    device work included. Nothing for an eager forward."""

    def __init__(self, forward: nn.Module) -> None:
        self.compiled = _compiled(forward)
        self.frozen: Optional[bool] = None  # the layers' mode it last compiled for (None: not yet)
        self.pending = False
        self.seconds = 0.0

    def start_epoch(self, frozen: bool) -> None:
        self.seconds = 0.0
        if self.compiled and frozen != self.frozen:
            self.frozen, self.pending = frozen, True

    def run(self, step: Callable[[], None], device: torch.device) -> None:
        """Run `step`: timed into `seconds` when it compiles."""
        if not self.pending:
            step()
            return
        self.pending = False
        sync = torch.cuda.current_stream().synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        step()
        sync()
        self.seconds += time.perf_counter() - start


class DeviceSGD:
    """torch.optim.SGD's foreach update (weight decay, momentum, Nesterov; dampening 0) for the
    groups of `optimizer`, with each group's rate a device tensor set by `load_rates` from the
    group's `lr` (which the scheduler keeps moving). Momentum buffers live in `optimizer.state`,
    created as zeros (the first update then equals torch's, which starts them at the gradient),
    so checkpoints keep torch's format."""

    def __init__(self, optimizer: torch.optim.SGD) -> None:
        self.optimizer = optimizer
        optimizer._opt_called = True  # type: ignore[attr-defined]  # LR schedulers check that an update ran
        self.rates: list[Tensor] = []
        for group in optimizer.param_groups:
            if group["dampening"] or group["maximize"]:
                raise ValueError("DeviceSGD covers SGD without dampening and maximize")
            params = group["params"]
            self.rates.append(torch.zeros((), device=params[0].device))
            if group["momentum"]:
                for p in params:
                    state = optimizer.state[p]
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def load_rates(self) -> None:
        """Copy each group's current `lr` into its device rate (outside any graph)."""
        for group, rate in zip(self.optimizer.param_groups, self.rates):
            rate.fill_(group["lr"])

    @torch.no_grad()
    def step(self) -> None:
        for group, rate in zip(self.optimizer.param_groups, self.rates):
            params = group["params"]
            grads: list[Tensor] | tuple[Tensor, ...] = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                buffers = [self.optimizer.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, grads)
                grads = torch._foreach_add(grads, buffers, alpha=group["momentum"]) if group["nesterov"] else buffers
            torch._foreach_sub_(params, torch._foreach_mul(grads, rate))


def _losses(pack: Pack, forward: nn.Module, x: Tensor, y: Tensor, precision: Optional[str]) -> tuple[Tensor, Tensor]:
    """Each member's loss and hits; the forward in `precision` (normexp.nn.precision), the loss in fp32."""
    with autocast(precision, x.device):
        logits = forward(x)
    return pack.losses(logits.float(), y)


class EagerStep:
    """Today's step: the epoch's batch views in order, torch.optim.SGD."""

    def __init__(self, pack: Pack, forward: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 precision: Optional[str] = None) -> None:
        self.pack, self.forward, self.optimizer, self.precision = pack, forward, optimizer, precision
        self.device = device
        self.totals = Totals(pack.size, device)
        self.capture_seconds, self.capture_steps = 0.0, 0  # nothing is captured
        self.compilation = Compilation(forward)
        self._batches: Optional[Iterator[tuple[Tensor, Tensor]]] = None

    def start_epoch(self, train: TrainBatches, epoch: int, frozen: bool) -> None:
        self.totals.zero()
        self.compilation.start_epoch(frozen)
        self._batches = train.epoch(epoch)

    def __call__(self) -> None:
        self.compilation.run(self._step, self.device)

    def _step(self) -> None:
        assert self._batches is not None
        x, y = next(self._batches)
        loss, hits = _losses(self.pack, self.forward, x, y, self.precision)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.optimizer.step()
        self.totals.add(loss.detach(), hits)


class DeviceStep:
    """The step with its state on the device (see the module's docstring); a CUDA graph when `graph`."""

    def __init__(self, pack: Pack, forward: nn.Module, optimizer: torch.optim.SGD, train: TrainBatches,
                 device: torch.device, graph: bool, norm: str, precision: Optional[str] = None) -> None:
        self.pack, self.forward, self.optimizer, self.norm, self.precision = pack, forward, optimizer, norm, precision
        self.sgd = DeviceSGD(optimizer)
        self.totals = Totals(pack.size, device)
        self.x, self.y = train.buffers()
        self.format = train.memory_format
        self.counter = torch.zeros((), dtype=torch.int64, device=device)
        self.offsets = torch.arange(train.batch_size, device=device)
        self.use_graph = graph
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.graph_frozen: Optional[bool] = None
        self.eager_left = WARMUP
        self.side = torch.cuda.Stream(device) if graph else None
        # compilation and cuDNN's benchmark sync the whole device while they warm up, which would
        # break another job's capture under way: then the warm-up holds the capture lock too
        self.warmup_lock = (CAPTURING if graph and (_compiled(forward) or torch.backends.cudnn.benchmark)
                            else nullcontext())
        self.capture_seconds = 0.0  # this epoch's warm-up and capture (compilation included), timed apart
        self.capture_steps = 0  # the steps they trained
        self.compilation = Compilation(forward)
        self.device = device

    def start_epoch(self, train: TrainBatches, epoch: int, frozen: bool) -> None:
        train.fill(epoch, self.x, self.y)
        self.counter.zero_()
        self.totals.zero()
        self.capture_seconds, self.capture_steps = 0.0, 0
        self.compilation.start_epoch(frozen)
        if self.use_graph and frozen != self.graph_frozen:  # FrozenBN changes the layers' mode: a new graph
            self.graph, self.graph_frozen, self.eager_left = None, frozen, WARMUP

    def _ops(self) -> None:
        index = self.counter * self.offsets.numel() + self.offsets
        x = self.x.index_select(0, index).contiguous(memory_format=self.format)
        loss, hits = _losses(self.pack, self.forward, x, self.y.index_select(0, index), self.precision)
        loss.sum().backward()
        self.sgd.step()
        self.totals.add(loss.detach(), hits)
        self.counter += 1

    def __call__(self) -> None:
        self.sgd.load_rates()
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.use_graph:
            self.optimizer.zero_grad(set_to_none=True)
            self.compilation.run(self._ops, self.device)
            return
        torch.cuda.current_stream().synchronize()  # this job's stream only: other jobs go on
        start = time.perf_counter()
        self._warm_up_or_capture()
        torch.cuda.current_stream().synchronize()  # this job's stream only: other jobs go on
        self.capture_seconds += time.perf_counter() - start

    def _warm_up_or_capture(self) -> None:
        if self.eager_left:
            self.eager_left -= 1
            self.capture_steps += 1
            assert self.side is not None
            self.side.wait_stream(torch.cuda.current_stream())
            with self.warmup_lock, torch.cuda.stream(self.side):
                self.optimizer.zero_grad(set_to_none=True)
                self.compilation.run(self._ops, self.device)
            torch.cuda.current_stream().wait_stream(self.side)
            return
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with CAPTURING, torch.cuda.graph(graph, stream=self.side, capture_error_mode="thread_local"):
                self._ops()
        except RuntimeError as error:
            raise capture_failed(self.norm, error, SHARED_PROCESS.is_set(), CAPTURE_FAILURE_POISONS) from error
        self.graph = graph
        graph.replay()
        self.capture_steps += 1


def _compiled(forward: nn.Module) -> bool:
    """Whether `forward` is a torch.compile'd module (it compiles, and may autotune, on its first calls)."""
    return isinstance(forward, torch._dynamo.eval_frame.OptimizedModule)


def build_step(pack: Pack, forward: nn.Module, optimizer: torch.optim.Optimizer, train: TrainBatches,
               env: Environment, norm: str, precision: Optional[str] = None) -> EagerStep | DeviceStep:
    """The step of the job's environment (eager, or the device step: a CUDA graph on CUDA, its ops
    eagerly elsewhere), its forward in `precision` (trainer.precision)."""
    if not env.captured:
        return EagerStep(pack, forward, optimizer, env.device, precision)
    assert isinstance(optimizer, torch.optim.SGD)
    return DeviceStep(pack, forward, optimizer, train, env.device, graph=env.graph, norm=norm, precision=precision)


def check_capturable(norm: Mapping[str, Any], graph: bool) -> None:
    """Raise ConfigError for a norm setting a CUDA graph cannot hold: BN's cumulative running
    average (norm.momentum=null) divides by the step count read on the host at every step."""
    if graph and "momentum" in norm and norm["momentum"] is None:
        raise ConfigError("norm.momentum=null (a cumulative running average) reads the step count on the host "
                          "inside the step, which a CUDA graph cannot hold; set a momentum (e.g. 0.1) or "
                          "runtime.capture=false")

