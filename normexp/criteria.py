"""The claim verdict's criteria: their types, limits and loading (defaults in
conf/verdict/default.yaml, then a sweep's recorded values, then overrides).

Standard library and yaml only, so training jobs check the criteria at launch without importing
the analysis (normexp.analysis.verdict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml

from normexp.locations import CONF_DIR

DEFAULTS = CONF_DIR / "verdict" / "default.yaml"
METRICS = {"final": "final_test_acc", "median5": "median5_test_acc"}  # a criterion's name -> the runs' column


@dataclass(frozen=True)
class Criteria:
    """What the claim must show; the values live in conf/verdict/default.yaml (see its comments)."""

    bn: str
    gn: str
    reference_batch: int
    min_bn_drop: float
    gn_loss_margin: float
    alpha: float
    require_small_batch: bool
    require_parity: bool
    max_parity_gap: float
    metric: str
    min_seeds: int
    min_reference_accuracy: float


LIMITS = {"reference_batch": (lambda v: v >= 1, ">= 1"), "alpha": (lambda v: 0 < v < 1, "in (0, 1)"),
          "min_bn_drop": (lambda v: v >= 0, ">= 0"), "gn_loss_margin": (lambda v: v > 0, "> 0"),
          "max_parity_gap": (lambda v: v > 0, "> 0"), "min_seeds": (lambda v: v >= 2, ">= 2"),
          "min_reference_accuracy": (lambda v: 0 <= v < 100, "in [0, 100)"),
          "metric": (lambda v: v in METRICS, f"one of: {', '.join(METRICS)}")}
# Criteria of rules that were replaced: a run that recorded one is judged by today's rule, and the
# analysis says which recorded value it set aside (verdict.json's criteria_source).
RETIRED = {"max_gn_loss": "GN's trend from the largest to the smallest batch, replaced by gn_margin against the "
                          "reference batch (the largest batch is the most step-starved, so the trend could not fail)",
           "gn_margin": "GN's change from the reference to the smallest batch only, replaced on 2026-12-02 by "
                        "gn_loss_margin at every batch size below the reference (a loss between the ends went unseen)"}


def _checked(name: str, value: Any) -> Any:
    """`value` as criterion `name`'s type (an int is a valid float), or ValueError naming the field."""
    kind = {f.name: f.type for f in fields(Criteria)}[name]
    if kind == "float" and type(value) is int:
        value = float(value)
    if type(value).__name__ != kind:
        raise ValueError(f"verdict criterion {name}={value!r} must be a {kind}")
    ok, allowed = LIMITS.get(name, (lambda v: True, ""))
    if not ok(value):
        raise ValueError(f"verdict criterion {name}={value!r} must be {allowed}")
    return value


def load_criteria(overrides: Mapping[str, Any] | None = None,
                  recorded: Mapping[str, Any] | None = None) -> tuple[Criteria, dict[str, str]]:
    """Criteria from the YAML defaults, then those recorded in the runs' configs, then `overrides`;
    also where each value came from ("default", "recorded" or "override"; a recorded criterion of a
    retired rule (RETIRED) appears as "retired: <value>, set aside")."""
    allowed = [f.name for f in fields(Criteria)]
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for origin, layer in (("default", yaml.safe_load(DEFAULTS.read_text())), ("recorded", recorded),
                          ("override", overrides)):
        for key, value in (layer or {}).items():
            if origin == "recorded" and key in RETIRED:
                source[key] = f"retired: recorded {value!r}, set aside ({RETIRED[key]})"
                continue
            if key not in allowed:
                raise ValueError(f"unknown verdict criterion {key!r} ({origin}); allowed: {', '.join(allowed)}")
            values[key], source[key] = value, origin
    missing = [name for name in allowed if name not in values]
    if missing:
        raise ValueError(f"{DEFAULTS} lacks verdict criteria: {', '.join(missing)}")
    criteria = Criteria(**{key: _checked(key, value) for key, value in values.items()})
    if not (criteria.require_small_batch or criteria.require_parity):
        raise ValueError("verdict criteria require_small_batch and require_parity are both false: "
                         "a verdict must require at least one part")
    return criteria, source
