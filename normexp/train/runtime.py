"""Where and how a job runs: device, threads, memory layout, compilation, provenance.

The `runtime` config group is not in a run's identity; the device, threads and torch version
change a run's numbers by float rounding, so a run resumes only where it started (record.ENVIRONMENT).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, cast

import torch
from omegaconf import DictConfig
from torch import nn

from normexp import record
from normexp.config import ConfigError
from normexp.files import locks

log = logging.getLogger("normexp")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device='cuda' is invalid here: no CUDA device is available; allowed: auto, cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Environment:
    """Where and how a job computes, decided once (`job_environment`) and handed to the resume
    check, each start's record, the harness and the summary's provenance."""

    device: torch.device
    layout: torch.memory_format  # the activations' and weights' memory layout (memory_format)
    captured: bool  # the device step (normexp.train.step): a CUDA graph on CUDA, its ops eagerly elsewhere
    threads: int  # torch threads

    @property
    def graph(self) -> bool:
        """Whether the step is a CUDA graph."""
        return self.captured and self.device.type == "cuda"


def job_environment(cfg: DictConfig, model: nn.Module, capture: Optional[bool] = None) -> Environment:
    """The environment `cfg.runtime` asks for (device, layout for `model`, step: `runtime.capture`,
    null = captured on CUDA, unless `capture` says) with torch's current thread count."""
    device = pick_device(cfg.runtime.device)
    capture = cfg.runtime.capture if capture is None else capture
    return Environment(device, memory_format(cfg.runtime.channels_last, model, device),
                       capture if capture is not None else device.type == "cuda", torch.get_num_threads())


@contextmanager
def registered_job(folder: Path) -> Iterator[int]:
    """Register this process as a running normexp job of this host under `folder` (a locked file,
    gone with the process) and yield how many of this host's are registered now, this one included."""
    host = folder / platform.node()
    host.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".starting", dir=host)
    os.close(fd)
    starting = Path(name)
    mine = starting.with_suffix(".job")
    try:
        with locks.exclusive(starting, wait=True):
            starting.rename(mine)  # locked before others can see it as a job
            others = [path for path in host.glob("*.job") if path != mine]
            for gone in (path for path in others if not locks.is_held(path)):
                gone.unlink(missing_ok=True)
            yield 1 + sum(path.exists() for path in others)
    finally:
        starting.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)


def default_threads(parallel_jobs: Optional[int], running_jobs: int) -> int:
    """Torch threads per job so that the jobs on this machine share its cores without
    oversubscribing them (OpenMP threads that outnumber cores spin and slow every job ~40x):
    cores / (parallel jobs of this launcher, or normexp jobs running now), at least 1."""
    cores = len(os.sched_getaffinity(0))  # the cores this process may use (a SLURM allocation, not the node)
    jobs = cores if parallel_jobs is not None and parallel_jobs < 0 else (parallel_jobs or 1)
    return max(1, cores // max(jobs, running_jobs))


def memory_format(channels_last: Optional[bool], model: nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last if asked for (null: on a GPU, and on CPU unless the model has GroupNorm layers,
    which run faster in NCHW there: results/bench/cpu_step.md) and safe here, else the default layout.

    On CPU, oneDNN's strided 1x1 convolution computes wrong weight gradients, or corrupts memory,
    in NHWC when it has fewer input channels per group than its block of 8 (AVX2) or 16 (AVX-512)
    (uxlfoundation/oneDNN#6035), so narrow models keep NCHW there.
    """
    if channels_last is None:
        channels_last = device.type != "cpu" or not any(isinstance(layer, nn.GroupNorm) for layer in model.modules())
    if not channels_last:
        return torch.contiguous_format
    if device.type == "cpu" and any(
        isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.stride != (1, 1)
        and layer.in_channels // layer.groups < 16 for layer in model.modules()
    ):
        log.info("runtime.channels_last ignored: a strided 1x1 convolution has < 16 input channels (oneDNN#6035)")
        return torch.contiguous_format
    return torch.channels_last


def maybe_compiled(flag: Optional[bool], model: nn.Module, env: Environment) -> nn.Module:
    """The model, or with `runtime.compile` (null = on a GPU when the step is not `captured`)
    `torch.compile`d; on a GPU outside a captured step with torch's CUDA graphs ("reduce-overhead"),
    which removes most of the per-step launch overhead that dominates small batches there
    (results/bench); inside a captured step (its own graph) in the default mode. Off by default on
    CPU, where compiling has not been shown to pay for its compile time (`scripts/cpu_bench.py
    --compile` measures it)."""
    graphs = env.device.type == "cuda" and not env.captured  # torch's CUDA graphs: no graph of our own
    if not (flag if flag is not None else graphs):
        return model
    return cast(nn.Module, torch.compile(  # compiling a module gives a module (typed as a callable)
        model, mode="reduce-overhead" if graphs else None))


def code_version() -> dict[str, Any]:
    """The git commit of the code that runs (`git_commit`) and whether the checkout had uncommitted
    changes (`git_dirty`); both None outside a git checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit.strip() if commit else None,
            "git_dirty": None if status is None else bool(status.strip())}


def layout(fmt: torch.memory_format) -> str:
    """A memory layout's name in a run's start record: `channels_last` or `contiguous` (NCHW)."""
    return "channels_last" if fmt == torch.channels_last else "contiguous"


def device_name(device: torch.device) -> str:
    """The device as a run's record names it: the GPU's model, else torch's name (`cpu`)."""
    return str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)


def environment(env: Environment, with_layout: bool = True) -> dict[str, Any]:
    """Where a run computes: device (on CPU also the instruction set torch's kernels use, e.g. AVX2
    or AVX512), torch threads, the step (`eager` or `captured`, normexp.train.step), the activations'
    memory layout (`with_layout`: a start's record has it, a summary's provenance not), versions,
    host (record.ENVIRONMENT are the fields among these that change its numbers)."""
    return {
        "device": device_name(env.device),
        **({"cpu_capability": torch.backends.cpu.get_cpu_capability()} if env.device.type == "cpu" else {}),
        "threads": env.threads,
        "step": "captured" if env.captured else "eager",
        **({"layout": layout(env.layout)} if with_layout else {}),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def warn_slow_precision(precision: Optional[str], device: torch.device) -> None:
    """Say so when bf16 runs on a CPU without native bf16 kernels (AVX512-BF16 or AMX): there it is
    emulated, several times slower than fp32 (results/bench/cpu.md)."""
    if precision == "bf16" and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("trainer.precision=bf16 on a CPU without native bf16 (%s): it runs several times slower "
                    "than fp32 here (results/bench/cpu.md)", torch.backends.cpu.get_cpu_capability())


def keep_recorded_threads(resumed: list[Path], env: Environment) -> Environment:
    """With automatic threads (runtime.threads null), resumed runs keep the thread count they
    trained with, whatever else runs on the machine now: the count changes their numbers. More
    threads than this job's share of the cores is said, since it slows every job. Returns the
    job's environment with the count it trains with (torch's set to it)."""
    recorded = {start["threads"] for start in map(record.last_start, resumed) if start}
    share = env.threads
    if len(recorded) != 1 or (threads := recorded.pop()) == share:
        return env
    log.info("resuming with %d torch thread(s), as these runs trained (runtime.threads=null)", threads)
    if threads > share:
        log.warning("%d threads is more than this job's share of the cores (%d): jobs beside it slow down; "
                    "resume these runs with fewer jobs at a time", threads, share)
    torch.set_num_threads(threads)
    return replace(env, threads=threads)


def refuse_environment_change(resumed: list[Path], env: Environment, allowed: bool) -> None:
    """A run resumes only in the environment of its last start (record.ENVIRONMENT) unless
    `allowed` (runtime.allow_env_change): else one name would hold a mix of two sets of numbers."""
    here = environment(env)
    for directory in resumed:
        changed = record.environment_change(record.last_start(directory), here)
        if changed and not allowed:
            raise ConfigError(
                f"{directory.name} trained in another environment ({', '.join(changed)}): resuming here would "
                f"mix two sets of numbers under one name; resume it where it ran (runtime.threads, runtime.capture, "
                f"runtime.channels_last, torch, device) or "
                f"pass runtime.allow_env_change=true to continue and record the change")


def provenance(env: Environment, start: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """What ran a run: its environment, and the code's commit as the run's last `start` recorded it
    (the code that trained its last stretch; starts.jsonl holds every start's), or as it is now."""
    code = {key: start[key] for key in ("git_commit", "git_dirty") if key in start} if start else {}
    return {**environment(env, with_layout=False), **(code or code_version())}


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), or the platform's word for it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()
