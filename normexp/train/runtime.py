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
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, cast

import torch
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
        channels_last = device.type != "cpu" or not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    if not channels_last:
        return torch.contiguous_format
    if device.type == "cpu" and any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels // m.groups < 16
        for m in model.modules()
    ):
        log.info("runtime.channels_last ignored: a strided 1x1 convolution has < 16 input channels (oneDNN#6035)")
        return torch.contiguous_format
    return torch.channels_last


def maybe_compiled(flag: Optional[bool], model: nn.Module, device: torch.device, captured: bool = False) -> nn.Module:
    """The model, or with `runtime.compile` (null = on a GPU when the step is not `captured`)
    `torch.compile`d; on a GPU outside a captured step with torch's CUDA graphs ("reduce-overhead"),
    which removes most of the per-step launch overhead that dominates small batches there
    (results/bench); inside a captured step (its own graph) in the default mode. Off by default on
    CPU, where compiling has not been shown to pay for its compile time (`scripts/cpu_bench.py
    --compile` measures it)."""
    if not (flag if flag is not None else device.type == "cuda" and not captured):
        return model
    return cast(nn.Module, torch.compile(  # compiling a module gives a module (typed as a callable)
        model, mode="reduce-overhead" if device.type == "cuda" and not captured else None))


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


def environment(device: torch.device, captured: bool = False,
                fmt: Optional[torch.memory_format] = None) -> dict[str, Any]:
    """Where a run computes: device (on CPU also the instruction set torch's kernels use, e.g. AVX2
    or AVX512), torch threads, the step (`eager` or `captured`, normexp.train.step), the activations'
    memory layout (`fmt`, where given), versions, host (record.ENVIRONMENT are the fields among these
    that change its numbers)."""
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        **({"cpu_capability": torch.backends.cpu.get_cpu_capability()} if device.type == "cpu" else {}),
        "threads": torch.get_num_threads(),
        "step": "captured" if captured else "eager",
        **({"layout": layout(fmt)} if fmt is not None else {}),
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


def keep_recorded_threads(resumed: list[Path]) -> None:
    """With automatic threads (runtime.threads null), resumed runs keep the thread count they
    trained with, whatever else runs on the machine now: the count changes their numbers. More
    threads than this job's share of the cores is said, since it slows every job."""
    recorded = {start["threads"] for start in map(record.last_start, resumed) if start}
    share = torch.get_num_threads()
    if len(recorded) == 1 and (threads := recorded.pop()) != share:
        log.info("resuming with %d torch thread(s), as these runs trained (runtime.threads=null)", threads)
        if threads > share:
            log.warning("%d threads is more than this job's share of the cores (%d): jobs beside it slow down; "
                        "resume these runs with fewer jobs at a time", threads, share)
        torch.set_num_threads(threads)


def refuse_environment_change(resumed: list[Path], device: torch.device, captured: bool, allowed: bool,
                              fmt: torch.memory_format) -> None:
    """A run resumes only in the environment of its last start (record.ENVIRONMENT) unless
    `allowed` (runtime.allow_env_change): else one name would hold a mix of two sets of numbers."""
    here = environment(device, captured, fmt)
    for directory in resumed:
        changed = record.environment_change(record.last_start(directory), here)
        if changed and not allowed:
            raise ConfigError(
                f"{directory.name} trained in another environment ({', '.join(changed)}): resuming here would "
                f"mix two sets of numbers under one name; resume it where it ran (runtime.threads, runtime.capture, "
                f"runtime.channels_last, torch, device) or "
                f"pass runtime.allow_env_change=true to continue and record the change")


def provenance(device: torch.device, start: Optional[Mapping[str, Any]] = None,
               captured: bool = False) -> dict[str, Any]:
    """What ran a run: its environment, and the code's commit as the run's last `start` recorded it
    (the code that trained its last stretch; starts.jsonl holds every start's), or as it is now."""
    code = {key: start[key] for key in ("git_commit", "git_dirty") if key in start} if start else {}
    return {**environment(device, captured), **(code or code_version())}


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), or the platform's word for it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()
