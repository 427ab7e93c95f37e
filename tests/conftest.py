"""Shared fixtures: a small generated CIFAR-like image-folder tree and composed Hydra configs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

import normexp.train.conductor as conductor
from normexp import record
from normexp.compose import CONF_DIR
from normexp.data.sources import CLASSES

TIMING = {"seconds", "train_seconds", "eval_seconds", "images_per_s"}


def record_numbers(directory: Path) -> list[dict]:
    """A run's per-epoch metrics without the timing fields: what must be reproducible."""
    return [{k: v for k, v in m.items() if k not in TIMING} for m in record.read_jsonl(directory / record.METRICS)]


@contextmanager
def interrupted_at(monkeypatch: pytest.MonkeyPatch, epoch: int) -> Iterator[None]:
    """Inside the block, the conductor is stopped as by Ctrl-C when it starts training `epoch`."""
    real_epoch = conductor.train_epoch

    def interrupted(pack, forward, optimizer, scheduler, train, current, *args):
        if current == epoch:
            raise KeyboardInterrupt
        return real_epoch(pack, forward, optimizer, scheduler, train, current, *args)

    with monkeypatch.context() as patch:
        patch.setattr(conductor, "train_epoch", interrupted)
        yield


def assert_packed_equals_members(models: list, mode: str) -> None:
    """Three models packed as one compute each member exactly as it computes alone, and the packed
    state splits back into each member's own state (norm statistics included)."""
    from normexp.nn import packing

    packed = packing.pack(models)
    inputs = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(10 + k)) for k in range(3)]
    for model in (*models, packed):
        model.train(mode == "train")
    out = packed(packing.join_inputs(inputs)).view(4, 3, 10)
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


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cifar-folder"))


@pytest.fixture
def make_cfg(image_folder: Path, tmp_path: Path):
    """Compose the real config with test overrides: tiny data, tiny model, one thread."""

    def make(*overrides: str) -> DictConfig:
        base = [
            f"paths.cifar10_folder={image_folder}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.results_root={tmp_path / 'runs'}",
            "data.source=folder",
            "data.batch_size=8",
            "model.base_width=4",
            "trainer.epochs=2",
            "runtime.threads=1",
            "trainer.log_every=5",
            "runtime.progress=false",
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=base + list(overrides))

    return make


def norm_spec(name: str, **settings: object) -> dict:
    """The `norm` config of conf/norm/<name>.yaml (where a norm's defaults live), with `settings`."""
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        spec = OmegaConf.to_container(compose(config_name="config", overrides=[f"norm={name}"]).norm)
    return {**spec, **settings}


def run_dir(cfg: DictConfig) -> Path:
    """Where the conductor puts the run of `cfg` (its name covers the data's content digest)."""
    return record.run_dir(cfg, conductor.load_data(cfg).digest)
