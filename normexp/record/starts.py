"""How a run began and each time it started again: the setup it writes first (its identity and
whole config), its log of starts (`starts.jsonl`: time, code, environment), and what a resume
must find unchanged (the environment's ENVIRONMENT fields, config.RECORDED_AS_STARTED settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, cast

import yaml
from omegaconf import DictConfig, OmegaConf

from normexp.config import RECORDED_AS_STARTED
from normexp.files import atomic
from normexp.record.damage import DamagedRecord
from normexp.record.folder import CONFIG, IDENTITY, STARTS, read_jsonl

# What changes a run's numbers besides its identity (float rounding that grows into seed-level noise):
# a run resumes only where its last start ran, unless runtime.allow_env_change says otherwise.
ENVIRONMENT = ("device", "cpu_capability", "threads", "torch_version", "step", "layout")
# what a start recorded before a field of ENVIRONMENT was recorded held (all steps were eager then)
ENVIRONMENT_BEFORE = {"step": "eager"}


def write_setup(directory: Path, ident: Mapping[str, Any], config_yaml: str) -> None:
    """What a run writes when its job sets it up: its identity, and its whole resolved config as it
    first started (kept on later starts, so the criteria recorded are those in force when it began)."""
    atomic.write_json(directory / IDENTITY, ident)
    if not (directory / CONFIG).is_file():
        atomic.write_text(directory / CONFIG, config_yaml)


def append_start(directory: Path, start: Mapping[str, Any]) -> None:
    """Append `start` (time, code, environment) to the run's log of starts."""
    atomic.write_jsonl(directory / STARTS, [*read_jsonl(directory / STARTS), dict(start)])


def last_start(directory: Path) -> Optional[dict[str, Any]]:
    """The run's most recent recorded start, or None (a new run, or one trained before starts were logged)."""
    starts = read_jsonl(directory / STARTS)
    return starts[-1] if starts else None


def environment_change(previous: Optional[Mapping[str, Any]], environment: Mapping[str, Any]) -> list[str]:
    """How `environment` differs from a previous start's in the ENVIRONMENT fields, e.g.
    ["threads 1 -> 2"]; empty when they agree or nothing was recorded."""
    if previous is None:
        return []
    before = {**ENVIRONMENT_BEFORE, **previous}
    return [f"{key} {before[key]} -> {environment.get(key)}" for key in ENVIRONMENT
            if key in before and before[key] != environment.get(key)]


def setting_changes(directory: Path, cfg: DictConfig) -> list[str]:
    """How `cfg` differs from the run's recorded config (as it first started) in the groups that
    are not in the identity but change what it records (config.RECORDED_AS_STARTED), e.g.
    ["evaluation.precise_images 4096 -> 2048"]; a group the record lacks (older code) is not compared."""
    try:
        recorded = cast(DictConfig, OmegaConf.load(directory / CONFIG))
    except OSError:
        return []
    except yaml.YAMLError as error:
        raise DamagedRecord(directory / CONFIG, f"not valid YAML: {' '.join(str(error).split())}") from None
    changes = []
    for group in RECORDED_AS_STARTED:
        if group not in recorded:
            continue
        old, new = (cast("dict[str, Any]", OmegaConf.to_container(c[group], resolve=True)) for c in (recorded, cfg))
        changes += [f"{group}.{key} {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new))
                    if old.get(key) != new.get(key)]
    return changes
