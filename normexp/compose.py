"""Configs composed from conf/ and the jobs of a sweep: the one owner of where conf/ is and of how
a command line becomes jobs (Hydra's compose API and public override parser, no training).

The CLI checks a command line here before Hydra starts, so a bad setting anywhere in a sweep's
grid is one line and exit 2; the sweep report, the bench, normexp-fit and the tests
compose and expand grids here too.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any, Optional, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from normexp.config import register_configs
from normexp.locations import CONF_DIR

register_configs()  # the schema conf/config.yaml extends: every composition needs it


def compose(overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """The config `normexp-train` would run with these overrides (with Hydra's own node if `hydra`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def _values(override: Any) -> list[str]:
    """The override lines of one parsed override: one, or one per value of a sweep."""
    key = override.get_key_element()
    if override.is_sweep_override():
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    return [override.input_line]


def sweep_grid(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of `normexp-train -m OVERRIDES`, each as its override list (see `grid`), with the
    preset's sweep parameters composed from conf/."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed = [cast(str, o.input_line) for o in OverridesParser.create().parse_overrides(list(overrides))
             if not o.is_sweep_override()]  # parsed from a line
    return grid(compose(fixed, hydra=True).hydra.sweeper.get("params") or {}, overrides)


def checked_sweep_grid(overrides: Sequence[str]) -> tuple[list[list[str]], str | None]:
    """`sweep_grid`, or no jobs and why not as one line (a bad setting the sweep does not vary, or a
    malformed override)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return sweep_grid(overrides), None
    except (HydraException, OmegaConfBaseException) as error:
        return [], one_line(error, overrides)
    except Exception as error:  # a malformed override: the parser's message, on one line
        return [], " ".join(str(error).split())


def axes(params: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """The axes of a sweep of these `hydra.sweeper.params` and command-line overrides: key -> its
    override lines (a command-line value of a swept key replaces the preset's values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()]
                                                      + list(overrides))
    return {override.key_or_group: _values(override) for override in parsed}


def grid(params: Mapping[str, Any], overrides: Sequence[str]) -> list[list[str]]:
    """The jobs a sweep of these `hydra.sweeper.params` and command-line overrides makes, in
    Hydra's basic sweeper's order: the `axes` crossed as a cartesian product."""
    return [list(point) for point in itertools.product(*axes(params, overrides).values())]


def preset(overrides: Sequence[str]) -> tuple[DictConfig, dict[str, Any], dict[str, list[str]]]:
    """A preset as the benches time it: its composed config without Hydra's node, its sweeper's
    params and, per swept key, the values its sweep takes (e.g. {"norm": ["bn", "gn"]})."""
    cfg = compose(overrides, hydra=True)
    params = cast("dict[str, Any]", OmegaConf.to_container(cfg.hydra.sweeper.get("params") or {}))
    assert isinstance(params, dict)
    swept = {key: [line.split("=", 1)[1] for line in lines] for key, lines in axes(params).items()}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, params, swept


def unknown_key(cfg: DictConfig) -> Optional[str]:
    """A key that no setting of normexp's schema has (e.g. added with `+data.batchsize=4`), as one
    line naming it and the nearest valid key; None when every key is known. Norm settings and
    verdict criteria are checked by their own owners (normexp.nn.norms, normexp.criteria)."""
    from normexp.config import Config

    def walk(node: Any, schema: Any, prefix: str) -> Optional[str]:
        valid = [f.name for f in fields(schema)]
        for key in node:
            if key not in valid:
                near = difflib.get_close_matches(key, valid, n=1, cutoff=0.4)
                hint = f" (nearest valid key: {prefix}{near[0]})" if near else f" (valid keys: {', '.join(valid)})"
                return f"{prefix}{key} is not a setting{hint}"
            kind = next(f for f in fields(schema) if f.name == key).default_factory
            sub = kind() if callable(kind) else None
            if is_dataclass(sub) and isinstance(node[key], DictConfig):
                problem = walk(node[key], type(sub), f"{prefix}{key}.")
                if problem:
                    return problem
        return None

    return walk({k: cfg[k] for k in cfg if k != "hydra"}, Config, "")


def one_line(error: BaseException, point: Sequence[str]) -> str:
    """A Hydra composition error as one line naming the setting and what is allowed."""
    text = str(error)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        options = re.findall(r"^\t(\w[\w-]*)$", text.split("Config search path")[0], re.M)
        return (f"{missing[1]}={missing[2]} is invalid: no conf/{missing[1]}/{missing[2]}.yaml; "
                f"allowed: {', '.join(options)}")
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        prefix, _, leaf = unknown[1].rpartition(".")
        try:
            node = compose([o for o in point if not o.startswith((unknown[1] + "=", "+" + unknown[1] + "="))])
            valid = list(OmegaConf.select(node, prefix) or {}) if prefix else list(node)
        except Exception:  # another override is wrong too: name this one without suggestions
            valid = []
        near = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.4)
        hint = f"nearest valid key: {prefix}.{near[0]}" if near else f"valid keys: {', '.join(valid)}"
        return f"{unknown[1]} is not a setting ({hint})"
    merging = re.search(r"Error merging override (\S+)", text)
    cause = str(error.__cause__ or "").splitlines()
    if merging and cause:
        return f"{merging[1]} is invalid: {cause[0].strip()}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def check(points: Sequence[Sequence[str]]) -> tuple[list[DictConfig], Optional[str]]:
    """Each job's composed config, and the first problem of any as one line (composition, unknown
    keys, ranges and combinations: normexp.config.validate) or None."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from normexp.config import ConfigError, validate

    configs: list[DictConfig] = []
    for point in points:
        try:
            cfg = compose(point)
        except (HydraException, OmegaConfBaseException) as error:
            return configs, one_line(error, point)
        problem = unknown_key(cfg)
        if problem:
            return configs, problem
        try:
            validate(cfg)
        except ConfigError as error:
            return configs, str(error)
        configs.append(cfg)
    return configs, None


def model_problem(configs: Sequence[DictConfig]) -> Optional[str]:
    """The first norm setting that does not fit its job's model (e.g. a group count that does not
    divide a layer's width), found by building each distinct model once on the CPU, or None. Imports
    torch: the training CLI calls it after every cheaper check has passed."""
    from normexp.config import ConfigError
    from normexp.nn.models import build_model

    built = set()
    for cfg in configs:
        model, norm = (cast("dict[str, Any]", OmegaConf.to_container(cfg[key], resolve=True))
                       for key in ("model", "norm"))
        key = repr((model, norm))
        if key in built:
            continue
        built.add(key)
        try:
            build_model(model, norm)
        except ConfigError as error:
            return str(error)
    return None
