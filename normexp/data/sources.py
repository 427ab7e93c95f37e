"""Read CIFAR-10 from an image-folder tree or the official torchvision release, decode once, cache.

Either source becomes four tensors: images uint8 (N, 3, 32, 32) and labels int64, for the train
and test splits, in torchvision's class order. They are cached under `paths.cache_dir` in a file
keyed by the source and a listing of its files (names, sizes, modification times): a changed
source gets a new cache, later runs load it in about a second, and parallel jobs build it once
(the first holds a lock, the others wait and load it). The cache also holds the arrays' content
digest: the data's identity, the same for two identical copies and for a touched file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from normexp.files import atomic, locks

if TYPE_CHECKING:  # a type only: data needs no Hydra
    from normexp.config import PathsConfig

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TORCHVISION_FOLDER = "cifar-10-batches-py"


class DataError(RuntimeError):
    """A problem with the dataset on disk; the message names the path and how to fix it."""


@dataclass
class CifarArrays:
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: Tensor
    std: Tensor
    source: str
    digest: str  # sha256 of the four arrays' bytes: what a run's identity records of its data


def expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path))).resolve()


def missing_folder(folder: str) -> Optional[str]:
    """Why `paths.cifar10_folder` names no folder, as one line, or None (the layout is checked on loading)."""
    root = expand(folder)
    if root.is_dir():
        return None
    return (f"CIFAR-10 image folder not found: {root}. Point paths.cifar10_folder (or the environment variable "
            f"NORMEXP_CIFAR10_FOLDER) at a folder holding train/<class>/ and test/<class>/, or use "
            f"data.source=torchvision runtime.download=true.")


def _folder_files(root: Path) -> dict[str, list[tuple[Path, int]]]:
    """List (file, label) per split, checking the train/<class>/ and test/<class>/ layout."""
    if problem := missing_folder(str(root)):
        raise DataError(problem)
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        split_dir = root / split
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
        missing = [name for name in CLASSES if name not in found]
        extra = [name for name in found if name not in CLASSES]
        if missing or extra:
            raise DataError(
                f"{split_dir} must hold exactly one folder per CIFAR-10 class ({', '.join(CLASSES)}); "
                + "; ".join(part for part in (f"missing: {', '.join(missing)}" if missing else "",
                                              f"not a class: {', '.join(extra)}" if extra else "") if part)
            )
        files[split] = [
            (path, label)
            for label, name in enumerate(CLASSES)
            for path in sorted((split_dir / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not files[split]:
            raise DataError(f"{split_dir} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _listing_key(root: Path, paths: list[Path]) -> str:
    """The cache key: the files' names, sizes and modification times (cheap; not the identity)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot decode image {path}: {error}. Replace or remove the file.") from error
    if array.shape != (32, 32, 3):
        raise DataError(f"image {path} is {array.shape[1]}x{array.shape[0]}; CIFAR-10 images are 32x32")
    return array


def _decode_folder(files: dict[str, list[tuple[Path, int]]]) -> dict[str, Tensor]:
    arrays: dict[str, Tensor] = {}
    for split, items in files.items():
        log.info("decoding %d %s images (once; later runs use the cache)", len(items), split)
        images = np.stack([_decode_image(path) for path, _ in items])
        arrays[f"{split}_images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        arrays[f"{split}_labels"] = torch.tensor([label for _, label in items], dtype=torch.int64)
    return arrays


def _torchvision_files(root: Path, download: bool) -> list[Path]:
    batches = root / TORCHVISION_FOLDER
    if not batches.is_dir():
        if not download:
            raise DataError(
                f"official CIFAR-10 not found at {batches}. Set runtime.download=true to fetch it there, "
                f"point paths.torchvision_root (or NORMEXP_CIFAR10_ROOT) at the folder that holds "
                f"{TORCHVISION_FOLDER}/, or use data.source=folder."
            )
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    return sorted(p for p in batches.iterdir() if p.is_file())


def _decode_torchvision(root: Path) -> dict[str, Tensor]:
    from torchvision.datasets import CIFAR10

    arrays: dict[str, Tensor] = {}
    for split in SPLITS:
        try:
            dataset = CIFAR10(str(root), train=split == "train", download=False)
        except RuntimeError as error:
            raise DataError(f"{root / TORCHVISION_FOLDER} is incomplete or corrupt ({error}); "
                            f"delete it and rerun with runtime.download=true") from error
        if list(dataset.classes) != list(CLASSES):
            raise DataError(f"{root} has classes {dataset.classes}; expected {list(CLASSES)}")
        arrays[f"{split}_images"] = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        arrays[f"{split}_labels"] = torch.tensor(dataset.targets, dtype=torch.int64)
    return arrays


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 images on a 0..1 scale."""
    x = images.double().div_(255)
    return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).float()


ARRAYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


def content_digest(arrays: dict[str, Tensor]) -> str:
    """sha256 over the four arrays' shapes and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for name in ARRAYS:
        array = arrays[name].contiguous()
        digest.update(f"{name}{tuple(array.shape)}{array.dtype}".encode())
        digest.update(array.numpy().tobytes())
    return digest.hexdigest()


def _complete(arrays: dict[str, Tensor]) -> dict[str, object]:
    """Add the training split's per-channel mean and std (used to normalize both splits) and the
    content digest."""
    arrays["mean"], arrays["std"] = channel_stats(arrays["train_images"])
    return {**arrays, "digest": content_digest(arrays)}


def _valid_cache(arrays: object) -> bool:
    if not isinstance(arrays, dict):
        return False
    for split in SPLITS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if not (isinstance(images, Tensor) and isinstance(labels, Tensor)):
            return False
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
            return False
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            return False
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < len(CLASSES)):
            return False
    if not isinstance(arrays.get("digest"), str):
        return False
    stats = [arrays.get("mean"), arrays.get("std")]
    return all(isinstance(t, Tensor) and t.shape == (3,) and bool(torch.isfinite(t).all()) for t in stats)


@contextmanager
def _building(cache: Path) -> Iterator[None]:
    """Hold the cache's build lock: one process decodes, the others wait for it, then load."""
    lock = cache.with_suffix(".lock")
    with locks.exclusive(lock, wait=False) as free:
        if free:
            yield
            return
    log.info("another process is building %s; waiting for it", cache)
    with locks.exclusive(lock, wait=True):
        yield


def _read_cache(cache: Path) -> dict[str, object] | None:
    if cache.is_file():
        try:
            arrays = torch.load(cache, weights_only=True)
        except Exception as error:  # a truncated or foreign file: rebuild, never trust it
            log.warning("cache %s is unreadable (%s); rebuilding it", cache, error)
        else:
            if _valid_cache(arrays):
                return arrays
            log.warning("cache %s does not hold CIFAR-10 arrays; rebuilding it", cache)
    return None


def _load_or_build(cache: Path, build: Callable[[], dict[str, Tensor]]) -> dict[str, Any]:
    arrays = _read_cache(cache)
    if arrays is not None:
        return arrays
    with _building(cache):
        arrays = _read_cache(cache)  # built by the process we waited for
        if arrays is None:
            arrays = _complete(build())
            atomic.atomic_write(cache, lambda tmp: torch.save(arrays, tmp))
            log.info("cached decoded CIFAR-10 at %s", cache)
    return arrays


def load_cifar10(source: str, paths: PathsConfig, download: bool = False) -> CifarArrays:
    """Load both splits of `source` (data.source) as uint8/int64 tensors, through the cache."""
    if source == "folder":
        root = expand(paths.cifar10_folder)
        files = _folder_files(root)
        key = _listing_key(root, [path for items in files.values() for path, _ in items])

        def build() -> dict[str, Tensor]:
            return _decode_folder(files)
    else:
        root = expand(paths.torchvision_root)
        key = _listing_key(root, _torchvision_files(root, download))

        def build() -> dict[str, Tensor]:
            return _decode_torchvision(root)

    cache = expand(paths.cache_dir) / f"cifar10-{source}-{key[:16]}.pt"
    return CifarArrays(**_load_or_build(cache, build), source=source)
