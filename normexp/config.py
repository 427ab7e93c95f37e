"""Typed config schema (registered in Hydra's ConfigStore) and up-front validation.

The dataclasses give types only; every default lives in `conf/` (one place). Hydra rejects unknown
keys and wrong types while composing; `validate` checks ranges and combinations before any data is
decoded or any step is trained. Torch-free, so help, config printing and validation stay fast.

Which settings make up a run's identity is derived from the layout: everything except the groups
in `NOT_IDENTITY` (where things live, what runs them, how a sweep is judged) changes the numbers.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from normexp.errors import ConfigError  # noqa: F401 (re-exported: the CLI and the training wing raise it)

DATA_SOURCES = ("folder", "torchvision")
SCHEDULES = ("cosine", "step", "constant")
# data.crop_fill: a crop's padding is black (torch's constant pad), the mirrored border, or the mean colour
CROP_FILLS = ("zeros", "reflect", "mean")
PRECISIONS = ("bf16",)  # trainer.precision besides null (fp32)
DEVICES = ("auto", "cpu", "cuda")
# groups outside a run's identity; of runtime, the device, threads and torch version change the numbers by
# float rounding and are held fixed per run instead (record.ENVIRONMENT, checked on resume)
NOT_IDENTITY = ("runtime", "paths", "verdict", "logger", "hydra", "evaluation")
# groups outside the identity that still change what a run records: a run resumes only with the values
# it started with (its config.yaml), and the analysis refuses to pool runs that differ in them
RECORDED_AS_STARTED = ("evaluation",)


@dataclass
class DataConfig:
    source: str = MISSING
    batch_size: int = MISSING  # images per device: what BatchNorm normalizes over
    devices: int = MISSING  # virtual devices per optimizer step, each with its own BN statistics
    train_subset: Optional[int] = MISSING
    test_subset: Optional[int] = MISSING
    crop_padding: int = MISSING
    crop_fill: str = MISSING
    flip: bool = MISSING


@dataclass
class ModelConfig:
    depth: int = MISSING
    base_width: int = MISSING
    zero_init_residual: bool = MISSING
    num_classes: int = MISSING


@dataclass
class OptimConfig:
    lr: float = MISSING
    ref_batch_size: int = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    decay_norm_and_bias: bool = MISSING
    schedule: str = MISSING
    warmup_epochs: float = MISSING
    milestones: list[int] = MISSING
    gamma: float = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    eval_every: int = MISSING
    log_every: int = MISSING
    precision: Optional[str] = MISSING


@dataclass
class EvaluationConfig:
    precise_images: Optional[int] = MISSING
    batch_statistics: bool = MISSING


@dataclass
class RuntimeConfig:
    device: str = MISSING
    threads: Optional[int] = MISSING
    progress: bool = MISSING
    channels_last: Optional[bool] = MISSING
    compile: Optional[bool] = MISSING
    capture: Optional[bool] = MISSING
    pack_max_batch: Optional[int] = MISSING
    eval_batch_size: int = MISSING
    download: bool = MISSING
    allow_env_change: bool = MISSING


@dataclass
class PathsConfig:
    results_root: str = MISSING
    cifar10_folder: str = MISSING
    torchvision_root: str = MISSING
    cache_dir: str = MISSING


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    verdict: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    seed: Any = MISSING  # an integer, or a list of integers trained together as one packed model


def _images_per(total: int, per: int) -> int:
    """`${images_per:128,${data.batch_size}}`: how many devices of `per` images make `total`."""
    if int(total) % int(per):
        raise ConfigError(f"data.batch_size={per} does not divide the fixed step batch {total}")
    return int(total) // int(per)


def unwritable(path: str, field: str = "paths.results_root") -> Optional[str]:
    """Why nothing can be written under folder `path` (one line naming its `field`), or None."""
    folder = os.path.expanduser(path)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        return f"{field}={path!r} is not writable: {error.strerror or error}"
    return None


def _writable(path: str) -> str:
    """`${writable:${paths.results_root}}` in Hydra's output folders: a results root that cannot be
    written ends the command at once with one line (exit 2), before Hydra tries to create its log
    folder there."""
    problem = unwritable(path)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    return path


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` extends, and the resolvers the presets use."""
    ConfigStore.instance().store(name="normexp_schema", node=Config)
    if not OmegaConf.has_resolver("images_per"):
        OmegaConf.register_new_resolver("images_per", _images_per)
    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)  # cached like `now`: one per sweep
    if not OmegaConf.has_resolver("writable"):
        OmegaConf.register_new_resolver("writable", _writable)


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


def plain(node: DictConfig) -> dict[str, Any]:
    """A config node as plain Python dicts and lists, its interpolations resolved."""
    return cast("dict[str, Any]", OmegaConf.to_container(node, resolve=True))


def step_batch(cfg: DictConfig) -> int:
    """Images per optimizer step: devices x images per device."""
    return cfg.data.devices * cfg.data.batch_size


def first_frozen_epoch(freeze_after: Optional[float], epochs: int) -> Optional[int]:
    """FrozenBN (norm.freeze_after): the first epoch that trains with frozen BN statistics, the
    first whose start is at or past `freeze_after` of training; None when it is off."""
    if freeze_after is None:
        return None
    return math.ceil(freeze_after * epochs - 1e-9) + 1


def validate(cfg: DictConfig) -> None:
    """Check ranges and combinations; raise ConfigError naming the first bad field."""
    _check_resolvable(cfg)
    _require(_positive_int(cfg.trainer.epochs), "trainer.epochs", cfg.trainer.epochs, "must be an integer >= 1")
    _check_data(cfg)
    _check_model(cfg.model)
    _check_optim(cfg.optim, cfg.trainer.epochs)
    _check_trainer_evaluation_runtime(cfg)
    seeds(cfg)
    _check_norm(cfg)
    _check_verdict(cfg)


def _check_resolvable(cfg: DictConfig) -> None:
    """Every interpolation resolves; a ConfigError raised while resolving one is raised as itself."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as error:  # e.g. a preset's ${images_per:...} that does not fit
        cause: Optional[BaseException] = error
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise ConfigError(str(cause)) from None


def _check_data(cfg: DictConfig) -> None:
    d = cfg.data
    _require(d.source in DATA_SOURCES, "data.source", d.source, f"allowed: {', '.join(DATA_SOURCES)}")
    _require(_positive_int(d.batch_size), "data.batch_size", d.batch_size, "must be an integer >= 1")
    _require(_positive_int(d.devices), "data.devices", d.devices, "must be an integer >= 1")
    for name in ("train_subset", "test_subset"):
        value = d[name]
        _require(value is None or (_positive_int(value) and value >= 10), f"data.{name}", value,
                 "must be null (all images) or an integer >= 10 (one per class)")
    if d.train_subset is not None:
        _require(step_batch(cfg) <= d.train_subset, "data.batch_size", d.batch_size,
                 f"x data.devices={d.devices} must be <= data.train_subset={d.train_subset} "
                 f"(drop-last would leave no batch)")
    _require(0 <= d.crop_padding <= 16, "data.crop_padding", d.crop_padding, "allowed: 0..16")
    _require(d.crop_fill in CROP_FILLS, "data.crop_fill", d.crop_fill, f"allowed: {', '.join(CROP_FILLS)}")


def _check_model(m: DictConfig) -> None:
    _require(m.depth >= 8 and (m.depth - 2) % 6 == 0, "model.depth", m.depth,
             "CIFAR ResNet depth is 6n+2: 8, 14, 20, 32, 44, 56, 110, ...")
    _require(_positive_int(m.base_width), "model.base_width", m.base_width, "must be an integer >= 1")
    _require(_positive_int(m.num_classes), "model.num_classes", m.num_classes, "must be an integer >= 1")


def _check_optim(o: DictConfig, epochs: int) -> None:
    _require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _require(_positive_int(o.ref_batch_size), "optim.ref_batch_size", o.ref_batch_size,
             "must be an integer >= 1")
    _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "allowed: 0 <= momentum < 1")
    _require(not o.nesterov or o.momentum > 0, "optim.nesterov", o.nesterov,
             "Nesterov needs optim.momentum > 0")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _require(o.schedule in SCHEDULES, "optim.schedule", o.schedule, f"allowed: {', '.join(SCHEDULES)}")
    _require(0 <= o.warmup_epochs < epochs, "optim.warmup_epochs", o.warmup_epochs,
             f"allowed: 0 <= warmup_epochs < trainer.epochs={epochs}")
    _require(all(_positive_int(x) for x in o.milestones) and list(o.milestones) == sorted(o.milestones),
             "optim.milestones", list(o.milestones), "must be increasing epoch numbers >= 1")
    _require(o.schedule != "step" or len(o.milestones) > 0, "optim.milestones", list(o.milestones),
             "optim.schedule=step needs at least one milestone epoch")
    _require(0 < o.gamma <= 1, "optim.gamma", o.gamma, "allowed: 0 < gamma <= 1")


def _check_trainer_evaluation_runtime(cfg: DictConfig) -> None:
    t, r = cfg.trainer, cfg.runtime
    _require(_positive_int(t.eval_every), "trainer.eval_every", t.eval_every,
             "must be an integer >= 1 (the last epoch is always evaluated)")
    _require(_positive_int(t.log_every), "trainer.log_every", t.log_every, "must be an integer >= 1")
    _require(t.precision is None or t.precision in PRECISIONS, "trainer.precision", t.precision,
             f"allowed: null (fp32), {', '.join(PRECISIONS)}")
    _require(cfg.evaluation.precise_images is None or _positive_int(cfg.evaluation.precise_images),
             "evaluation.precise_images", cfg.evaluation.precise_images, "must be null (off) or an integer >= 1")
    _require(_positive_int(r.eval_batch_size), "runtime.eval_batch_size", r.eval_batch_size,
             "must be an integer >= 1")
    _require(r.pack_max_batch is None or (isinstance(r.pack_max_batch, int) and r.pack_max_batch >= 0),
             "runtime.pack_max_batch", r.pack_max_batch, "must be null (auto) or an integer >= 0 (0: never pack)")
    _require(r.device in DEVICES, "runtime.device", r.device, f"allowed: {', '.join(DEVICES)}")
    _require(r.threads is None or _positive_int(r.threads), "runtime.threads", r.threads,
             "must be null (auto) or an integer >= 1")


def _check_norm(cfg: DictConfig) -> None:
    freeze_after, epochs = cfg.norm.get("freeze_after"), cfg.trainer.epochs
    frozen_from = first_frozen_epoch(freeze_after, epochs) if isinstance(freeze_after, float) else None
    _require(frozen_from is None or frozen_from <= epochs, "norm.freeze_after", freeze_after,
             f"freezes no epoch of trainer.epochs={epochs}: FrozenBN starts at an epoch boundary")
    _require("name" in cfg.norm, "norm.name", None, "pick a norm with norm=<name> (see conf/norm/)")


def _check_verdict(cfg: DictConfig) -> None:
    """The verdict criteria are fixed when a run starts: a bad one must not wait for the analysis."""
    from normexp.criteria import load_criteria

    try:
        load_criteria(recorded=plain(cfg.verdict))
    except ValueError as error:
        raise ConfigError(f"verdict: {error}") from None
