"""A run's identity: what determines its numbers, its folder name, and its table columns.

Torch-free; normexp.record re-exports these names (`record.identity`, `record.run_name`, ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, cast

from omegaconf import DictConfig, OmegaConf

from normexp.config import NOT_IDENTITY

# The version of the training numerics: bump it with any change to the code that moves a run's losses
# (tests/test_golden.py pins the first steps' losses and fails on such a change). It is in every
# run's identity from version 2 on, so a new version gives new names; the runs of version 1
# (identities without `numerics`) keep theirs. Changes per version: docs/protocol.md, "Numerics versions".
NUMERICS = 2

# Settings added after runs were recorded, (group, key) -> the value those runs trained with: left out
# of an identity at that value, so the recorded runs keep their names; any other value enters it.
ADDED_LATER = {("data", "crop_fill"): "zeros"}

# The swept settings, table column -> config key: a table pools the seeds of a cell of the others,
# and the analysis refuses runs that differ in anything else (unless told to vary it).
SWEPT = {"norm": "norm", "batch_size": "data.batch_size", "devices": "data.devices", "seed": "seed"}


def norm_tag(spec: Mapping[str, Any]) -> str:
    """A short readable label for a norm config, e.g. `bn`, `gn8`, `gn-cpg16`, `gn8-ws`, `evonorm8`
    (no underscores: run folder names split on them)."""
    name = spec["name"]
    if name in ("gn", "gn_ws"):
        groups = spec.get("groups")
        tag = f"gn{groups}" if groups is not None else f"gn-cpg{spec['channels_per_group']}"
        return tag + ("-ws" if name == "gn_ws" else "")
    if name == "evonorm":
        return f"evonorm{spec['groups']}"
    if spec.get("precise_bn_batches") is not None:
        return f"{name}-pbn"
    if spec.get("skip_tlu_before_addition"):
        return f"{name}-noaddtlu"
    if spec.get("freeze_after") is not None:
        return f"{name}-frozen{spec['freeze_after']:g}"
    return str(name).replace("_", "-")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def identity(cfg: DictConfig, data_digest: str, numerics: int = NUMERICS) -> dict[str, Any]:
    """Everything that determines a run's numbers: the resolved config without the groups that
    never change them (config.NOT_IDENTITY) and without null settings, the content digest of the
    data it trains on, and the version of the code's numerics (`numerics`, left out for version 1).
    Null settings, and those of ADDED_LATER at their old value, are left out, so that a setting added
    later leaves the names of existing runs unchanged."""
    container = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(container, dict)
    ident = {key: _without_nulls(value) for key, value in container.items() if key not in NOT_IDENTITY}
    for (group, key), value in ADDED_LATER.items():
        if ident.get(group, {}).get(key) == value:
            del ident[group][key]
    ident["data_digest"] = data_digest
    if numerics > 1:
        ident["numerics"] = numerics
    return ident


def numerics_version(ident: Mapping[str, Any]) -> int:
    """The numerics version a recorded identity was trained under (1 where it names none)."""
    return int(ident.get("numerics", 1))


def run_label(norm: Mapping[str, Any], batch_size: int, devices: int, seed: int) -> str:
    """A run's name without its hash, e.g. `gn8_b4x8_s1`: norm, images per device x devices (left
    out for one device), seed."""
    return f"{norm_tag(norm)}_b{batch_size}{f'x{devices}' if devices != 1 else ''}_s{seed}"


def run_name(ident: Mapping[str, Any]) -> str:
    """e.g. `gn8_b4x8_s1_3f2a9c1e`: the run's label (`run_label`) and the hash of its identity."""
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    data = ident["data"]
    return f"{run_label(ident['norm'], data['batch_size'], data['devices'], ident['seed'])}_{digest}"


def run_dir(cfg: DictConfig, data_digest: str) -> Path:
    return Path(cfg.paths.results_root).expanduser().resolve() / run_name(identity(cfg, data_digest))


def pace_setup(norm: str, batch_size: int, devices: int, depth: int, base_width: int, train_subset: Any,
               precision: Any, device_kind: str) -> tuple[Any, ...]:
    """What sets a run's pace per epoch, for the plan's estimate from finished runs of the same setup."""
    return (norm, batch_size, devices, depth, base_width, train_subset, precision or "fp32", device_kind)


def columns(ident: Mapping[str, Any]) -> dict[str, Any]:
    """The table columns of a run's identity: its swept settings first, then the rest of its setup."""
    norm, data = ident["norm"], ident["data"]
    return {
        "norm": norm_tag(norm),
        "batch_size": data["batch_size"],
        "devices": data["devices"],
        "seed": ident["seed"],
        "step_batch": data["batch_size"] * data["devices"],
        "norm_name": norm["name"],
        "groups": norm.get("groups"),
        "channels_per_group": norm.get("channels_per_group"),
        "depth": ident["model"]["depth"],
        "base_width": ident["model"]["base_width"],
        "epochs": ident["trainer"]["epochs"],
        "train_subset": data.get("train_subset"),
        "data_digest": ident["data_digest"],
    }
