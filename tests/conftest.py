"""Shared fixtures: a small generated CIFAR-like image-folder tree and composed Hydra configs (the
helpers they build on are in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from normexp.compose import compose
from tests.helpers import make_image_folder, tiny_run


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cifar-folder"))


@pytest.fixture
def make_cfg(image_folder: Path, tmp_path: Path):
    """Compose the real config as a tiny run (conf/experiment/debug.yaml) with these overrides."""

    def make(*overrides: str) -> DictConfig:
        return compose(tiny_run(image_folder, tmp_path) + list(overrides))

    return make
