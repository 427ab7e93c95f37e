"""Test helpers: a generated CIFAR-like image folder, a run's reproducible numbers, a stopped
conductor, packed-model checks, the norm configs of conf/norm/, where a run lands."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

import normexp.train.conductor as conductor
import normexp.train.harness as harness
from normexp import record
from normexp.compose import compose
from normexp.data.sources import CLASSES

TIMING = {"seconds", "train_seconds", "eval_seconds", "images_per_s", "capture_seconds", "compile_seconds",
          "fill_seconds", "loop_seconds"}


def tiny_run(image_folder: Path, tmp_path: Path, results_root: Path | None = None) -> list[str]:
    """The overrides of a tiny run (conf/experiment/debug.yaml) on the test image folder, with its
    cache in `tmp_path` and its runs under `results_root` (default tmp_path/runs)."""
    return ["experiment=debug", f"paths.cifar10_folder={image_folder}", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.results_root={results_root or tmp_path / 'runs'}"]


def record_numbers(directory: Path) -> list[dict]:
    """A run's per-epoch metrics without the timing fields: what must be reproducible."""
    return [{k: v for k, v in m.items() if k not in TIMING} for m in record.read_jsonl(directory / record.METRICS)]


@contextmanager
def interrupted_at(monkeypatch: pytest.MonkeyPatch, epoch: int) -> Iterator[None]:
    """Inside the block, training is stopped as by Ctrl-C when it starts `epoch` (through the harness)."""
    real_epoch = harness.train_epoch

    def interrupted(pack, step, scheduler, train, current, *args):
        if current == epoch:
            raise KeyboardInterrupt
        return real_epoch(pack, step, scheduler, train, current, *args)

    with monkeypatch.context() as patch:
        patch.setattr(harness, "train_epoch", interrupted)
        yield


def killed_and_resumed(make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: tuple[str, ...],
                       epoch: int) -> tuple[Path, Path]:
    """A run of `settings` interrupted in `epoch` and resumed, and the same run uninterrupted (its
    results under tmp_path/reference): their folders, both finished."""
    reference = make_cfg(*settings, f"paths.results_root={tmp_path / 'reference'}")
    conductor.train_job(reference)
    cfg = make_cfg(*settings)
    with interrupted_at(monkeypatch, epoch), pytest.raises(KeyboardInterrupt):
        conductor.train_job(cfg)
    conductor.train_job(cfg)
    return run_dir(cfg), run_dir(reference)


def packed_input(images: list[torch.Tensor]) -> torch.Tensor:
    """Members' image batches (B, C, H, W) as the packed input (B, K*C, H, W) (loader.member_views)."""
    from normexp.data.loader import member_views

    n, c, h, w = images[0].shape
    x, y = torch.empty(n, len(images) * c, h, w), torch.empty(n, len(images))
    for (member, _), member_images in zip(member_views(x, y, len(images)), images):
        member.copy_(member_images)
    return x


def assert_packed_equals_members(models: list, mode: str) -> None:
    """Three models packed as one compute each member exactly as it computes alone, and the packed
    state splits back into each member's own state (norm statistics included)."""
    from normexp.nn import packing

    packed = packing.pack(models)
    inputs = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(10 + k)) for k in range(3)]
    for model in (*models, packed):
        model.train(mode == "train")
    out = packed(packed_input(inputs)).view(4, 3, 10)
    for k, (model, x) in enumerate(zip(models, inputs)):
        torch.testing.assert_close(out[:, k], model(x), rtol=1e-4, atol=1e-5)
    state = packed.state_dict()
    for k, model in enumerate(models):
        alone = model.state_dict()
        member = packing.member_state(state, 3, k)
        assert member.keys() == alone.keys()
        for key in alone:
            torch.testing.assert_close(member[key], alone[key], rtol=1e-5, atol=1e-6)


def make_image_folder(root: Path, train_per_class: int = 12, test_per_class: int = 4, seed: int = 0) -> Path:
    """Write train/<class>/*.png and test/<class>/*.png with class-dependent colours (learnable)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.array([25 * label, 255 - 25 * label, 128], dtype=np.float64)
                pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root



def norm_spec(name: str, **settings: object) -> dict:
    """The `norm` config of conf/norm/<name>.yaml (where a norm's defaults live), with `settings`."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(compose([f"norm={name}"]).norm)
    return {**spec, **settings}


def run_dir(cfg: DictConfig) -> Path:
    """Where the conductor puts the run of `cfg` (its name covers the data's content digest)."""
    return record.run_dir(cfg, conductor.load_data(cfg).digest)


# `normexp-train` with a fault injected at a chosen point (no timing involved): ARGS are
# KIND AT SIGNAL then the command line. KIND "step": the signal arrives before this process's
# AT-th training step (counted over all its runs and jobs); "checkpoint": right after the AT-th
# checkpoint's temporary file is written, before it is renamed into place.
_FAULTY_TRAIN = """
import os, signal, sys
import normexp.files.atomic as atomic
import normexp.train.runtime as runtime
from normexp.cli.train import main
kind, at, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as a terminal sends it, whatever this
# process inherited (a SIGINT ignored by the test process is ignored by its children, and Python keeps it so)
sys.argv = ["normexp-train", *sys.argv[4:]]
count = [0]
def hit():
    count[0] += 1
    if count[0] == at:
        os.kill(os.getpid(), sig)
if kind == "step":
    compiled = runtime.maybe_compiled
    def counted(flag, model, *args):
        forward = compiled(flag, model, *args)
        return lambda x: (hit(), forward(x))[1]
    runtime.maybe_compiled = counted
else:
    write = atomic.atomic_write
    def faulty(path, writer):
        wrapped = (lambda tmp: (writer(tmp), hit())) if path.name == "checkpoint.pt" else writer
        write(path, wrapped)
    atomic.atomic_write = faulty
main()
"""


def train_with_fault(args: list[str], kind: str, at: int, signal_name: str, cwd: Path) -> int:
    """Run `normexp-train ARGS` with a fault (see _FAULTY_TRAIN); its exit code (negative: killed)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _FAULTY_TRAIN, kind, str(at), signal_name, *args], cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300).returncode
