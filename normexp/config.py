"""Typed config schema (registered in Hydra's ConfigStore) and up-front validation.

The dataclasses make Hydra reject unknown keys and wrong types while composing; `validate`
checks ranges and combinations before any data is decoded or any step is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the field and what is allowed."""


DATA_SOURCES = ("folder", "torchvision")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DataConfig:
    source: str = "folder"
    folder: str = "../shared/data/cifar10-jpeg"
    torchvision_root: str = "~/.cache/normexp/cifar10"
    download: bool = False
    cache_dir: str = "~/.cache/normexp"
    batch_size: int = 64
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    crop_padding: int = 4
    flip: bool = True


@dataclass
class ModelConfig:
    depth: int = 8
    base_width: int = 16
    zero_init_residual: bool = True
    num_classes: int = 10


@dataclass
class OptimConfig:
    lr: float = 0.1
    ref_batch_size: int = 32
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    epochs: int = 10
    eval_batch_size: int = 1000
    eval_every: int = 1
    log_every: int = 50
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True
    channels_last: bool = True
    compile: Optional[bool] = None
    pack_max_batch: Optional[int] = None
    accuracy_thresholds: list[float] = field(default_factory=lambda: [50.0, 60.0, 70.0, 80.0])


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: dict[str, Any] = field(default_factory=lambda: {"name": "bn"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: Any = 0  # an integer, or a list of integers trained together as one packed model
    results_root: str = "results/runs"


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` extends."""
    ConfigStore.instance().store(name="normexp_schema", node=Config)


def _require(ok: bool, field_name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name}={value!r} is invalid: {allowed}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def seeds(cfg: DictConfig) -> list[int]:
    """The run's seed as a list: `seed=3` is one run, `seed=[0,1,2]` three runs packed together."""
    value = cfg.seed
    values = list(value) if isinstance(value, (ListConfig, list, tuple)) else [value]
    _require(bool(values) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
             and len(set(values)) == len(values), "seed", value if len(values) != 1 else values[0],
             "must be an integer >= 0, or a list of distinct ones (seed=[0,1,2]) to train those runs packed "
             "as one model")
    return values


def validate(cfg: DictConfig) -> None:
    """Check ranges and combinations; raise ConfigError naming the first bad field."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.trainer
    _require(_positive_int(t.epochs), "trainer.epochs", t.epochs, "must be an integer >= 1")
    _require(d.source in DATA_SOURCES, "data.source", d.source, f"allowed: {', '.join(DATA_SOURCES)}")
    _require(_positive_int(d.batch_size), "data.batch_size", d.batch_size, "must be an integer >= 1")
    for name in ("train_subset", "test_subset"):
        value = d[name]
        _require(value is None or (_positive_int(value) and value >= 10), f"data.{name}", value,
                 "must be null (all images) or an integer >= 10 (one per class)")
    if d.train_subset is not None:
        _require(d.batch_size <= d.train_subset, "data.batch_size", d.batch_size,
                 f"must be <= data.train_subset={d.train_subset} (drop-last would leave no batch)")
    _require(0 <= d.crop_padding <= 16, "data.crop_padding", d.crop_padding, "allowed: 0..16")
    _require(m.depth >= 8 and (m.depth - 2) % 6 == 0, "model.depth", m.depth,
             "CIFAR ResNet depth is 6n+2: 8, 14, 20, 32, 44, 56, 110, ...")
    _require(_positive_int(m.base_width), "model.base_width", m.base_width, "must be an integer >= 1")
    _require(_positive_int(m.num_classes), "model.num_classes", m.num_classes, "must be an integer >= 1")
    _require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _require(_positive_int(o.ref_batch_size), "optim.ref_batch_size", o.ref_batch_size,
             "must be an integer >= 1")
    _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "allowed: 0 <= momentum < 1")
    _require(not o.nesterov or o.momentum > 0, "optim.nesterov", o.nesterov,
             "Nesterov needs optim.momentum > 0")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _require(o.schedule in SCHEDULES, "optim.schedule", o.schedule, f"allowed: {', '.join(SCHEDULES)}")
    _require(0 <= o.warmup_epochs < t.epochs, "optim.warmup_epochs", o.warmup_epochs,
             f"allowed: 0 <= warmup_epochs < trainer.epochs={t.epochs}")
    _require(all(_positive_int(x) for x in o.milestones) and list(o.milestones) == sorted(o.milestones),
             "optim.milestones", list(o.milestones), "must be increasing epoch numbers >= 1")
    _require(o.schedule != "step" or len(o.milestones) > 0, "optim.milestones", list(o.milestones),
             "optim.schedule=step needs at least one milestone epoch")
    _require(0 < o.gamma <= 1, "optim.gamma", o.gamma, "allowed: 0 < gamma <= 1")
    _require(_positive_int(t.eval_batch_size), "trainer.eval_batch_size", t.eval_batch_size,
             "must be an integer >= 1")
    _require(_positive_int(t.eval_every), "trainer.eval_every", t.eval_every,
             "must be an integer >= 1 (the last epoch is always evaluated)")
    _require(t.pack_max_batch is None or (isinstance(t.pack_max_batch, int) and t.pack_max_batch >= 0),
             "trainer.pack_max_batch", t.pack_max_batch, "must be null (auto) or an integer >= 0 (0: never pack)")
    _require(_positive_int(t.log_every), "trainer.log_every", t.log_every, "must be an integer >= 1")
    _require(t.device in DEVICES, "trainer.device", t.device, f"allowed: {', '.join(DEVICES)}")
    _require(t.threads is None or _positive_int(t.threads), "trainer.threads", t.threads,
             "must be null (torch default) or an integer >= 1")
    _require(all(0 < x <= 100 for x in t.accuracy_thresholds), "trainer.accuracy_thresholds",
             list(t.accuracy_thresholds), "must be percentages in (0, 100]")
    seeds(cfg)
    _require("name" in cfg.norm, "norm.name", None, "pick a norm with norm=<name> (see conf/norm/)")
