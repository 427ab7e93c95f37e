"""What a training command's machine must have, checked before Hydra starts, each problem as one
line: torch and torchvision built for each other, SLURM's commands for the SLURM launcher, and
(`python -m normexp.cli.preflight`, scripts/gpu_check.sh's first step) every package a run imports.
Torch-free: package metadata and PATH only."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from omegaconf import DictConfig

TORCHVISION_MINOR_OFFSET = 15  # torchvision 0.(m + 15) is built for torch 2.m
# what a training run, the threads launcher and the analysis import (a module of each package)
MODULES = ("torch", "torchvision", "hydra", "omegaconf", "antlr4", "hydra_plugins.hydra_joblib_launcher",
           "pandas", "scipy", "matplotlib", "tqdm", "yaml", "tabulate", "PIL")


def torchvision_problem() -> Optional[str]:
    """Why the installed torchvision does not fit the installed torch (`import torchvision` would fail
    on its compiled operators), or None."""
    try:
        torch, vision = metadata.version("torch"), metadata.version("torchvision")
    except metadata.PackageNotFoundError as missing:
        return f"{missing.name} is not installed: pip install -e . (see README.md, Quick start)"
    torch_minor, vision_minor = (int(v.split("+")[0].split(".")[1]) for v in (torch, vision))
    if torch.startswith("2.") and vision.startswith("0.") and vision_minor != torch_minor + TORCHVISION_MINOR_OFFSET:
        wanted = f"0.{torch_minor + TORCHVISION_MINOR_OFFSET}"
        return (f"torchvision {vision} is not built for torch {torch} (that is torchvision {wanted}.*): "
                f"pip install 'torch=={torch.split('+')[0]}' 'torchvision=={wanted}.*' from one index")
    return None


def launcher_problem(hydra: DictConfig) -> Optional[str]:
    """Why the sweep's launcher cannot run on this machine (SLURM's without srun and sbatch), or None."""
    if str(hydra.launcher.get("_target_", "")).endswith(".SlurmLauncher"):
        missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
        if missing:
            return (f"hydra/launcher=slurm needs SLURM ({', '.join(missing)} not found on PATH): run it on a "
                    f"SLURM login node, or use hydra/launcher=joblib (this machine's cores) or slurm_local")
    return None


def _has_nvidia_gpu() -> bool:
    """Whether an NVIDIA driver with a GPU is loaded (torch-free; what runtime.device=auto will find)."""
    return Path("/proc/driver/nvidia/gpus").is_dir()


def gpu_problem(points: Sequence[Sequence[str]], configs: Sequence[DictConfig]) -> Optional[str]:
    """Why jobs meant for a GPU cannot run here (no NVIDIA GPU): runtime.device=cuda, or a GPU preset
    (experiment=*_gpu) without runtime.device=cpu asked for; or None."""
    if _has_nvidia_gpu():
        return None
    if any(c.runtime.device == "cuda" for c in configs):
        return "runtime.device='cuda' is invalid here: this machine has no NVIDIA GPU; allowed: auto, cpu"
    for point, cfg in zip(points, configs):
        preset = next((o.split("=", 1)[1] for o in point if o.startswith("experiment=")), "")
        if preset.endswith("_gpu") and cfg.runtime.device != "cpu":
            return (f"experiment={preset} is a GPU preset and this machine has no NVIDIA GPU: run it on a GPU, "
                    f"or add runtime.device=cpu to train it on this CPU anyway (its plan: normexp-plan)")
    return None


def missing_modules() -> Optional[str]:
    """The packages of MODULES this Python cannot import, as one line, or None."""
    missing = [name for name in MODULES if _findable(name) is None]
    if not missing:
        return None
    return (f"cannot import {', '.join(missing)}: pip install -e . here, or on a machine without internet carry "
            f"the wheels of `bash scripts/gpu_pack.sh` (.travel/wheels) and install them")


def _findable(name: str) -> Optional[object]:
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # its parent package is missing
        return None


if __name__ == "__main__":
    problem = missing_modules() or torchvision_problem()
    if problem:
        print(f"preflight: {problem}", file=sys.stderr)
        sys.exit(2)
