"""The claim "GN holds its accuracy at batch sizes where BN degrades", judged by statistical tests
whose criteria are fixed before a sweep runs (defaults: conf/verdict/default.yaml).

Torch-free: only the standard library, numpy, pandas, scipy and yaml.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from normexp.analysis.machines import machines
from normexp.criteria import METRICS, Criteria

# The claim's two parts and each part's checks, as the verdict names them (in the order the text
# names them); parity's one check shares its part's name.
SMALL_BATCH, PARITY = "small_batch", "parity"
BN_DEGRADES, GN_HOLDS, INTERACTION = "bn_degrades", "gn_holds", "interaction"
GN_BEATS_BN = "gn_beats_bn_at_smallest_batch"
SMALL_BATCH_CHECKS = (BN_DEGRADES, GN_HOLDS, INTERACTION, GN_BEATS_BN)
PARTS: dict[str, tuple[str, ...]] = {SMALL_BATCH: SMALL_BATCH_CHECKS, PARITY: (PARITY,)}


def welch_contrast(terms: Sequence[tuple[float, np.ndarray]], alpha: float) -> dict[str, float]:
    """Sum of coef x group mean with Welch-Satterthwaite df: estimate, SE, t, one-sided p (> 0),
    one-sided (1 - alpha) lower bound and two-sided (1 - alpha) CI."""
    parts = np.array([c * c * g.var(ddof=1) / len(g) for c, g in terms])
    estimate = float(sum(c * g.mean() for c, g in terms))
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(parts.sum())
        df = parts.sum() ** 2 / sum(p * p / (len(g) - 1) for p, (_, g) in zip(parts, terms))
    return _bounds(estimate, float(se), float(df), alpha)


def pooled_difference(a: np.ndarray, b: np.ndarray, cells: Sequence[np.ndarray], alpha: float) -> dict[str, float]:
    """mean(a) - mean(b) with the variance pooled over `cells` (all groups of one batch-independent
    norm, so its seed noise is estimated from every batch size it ran): estimate, SE, df, t,
    one-sided p (> 0), one-sided (1 - alpha) lower bound and two-sided CI."""
    residuals = np.concatenate([c - c.mean() for c in cells])
    df = len(residuals) - len(cells)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = float((residuals ** 2).sum() / df) if df > 0 else math.nan
    se = math.sqrt(variance * (1 / len(a) + 1 / len(b))) if df > 0 else math.nan
    return _bounds(float(a.mean() - b.mean()), se, float(df), alpha)


def _bounds(estimate: float, se: float, df: float, alpha: float) -> dict[str, float]:
    if not se > 0:  # no spread between seeds: nothing can be bounded
        se = math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        t = estimate / se
        half, one = stats.t.ppf(1 - alpha / 2, df) * se, stats.t.ppf(1 - alpha, df) * se
    return {"estimate": estimate, "se": se, "df": df, "t": float(t), "p_one_sided": float(stats.t.sf(t, df)),
            "lower_bound": float(estimate - one), "ci_low": float(estimate - half), "ci_high": float(estimate + half)}


def _batches_run(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria) -> dict[str, list[int]]:
    """The batch sizes each of the verdict's two norms ran."""
    return {tag: sorted(b for t, b in groups if t == tag) for tag in (c.bn, c.gn)}


def _missing_small_batch(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria, shared: list[int]) -> list[str]:
    """What the data lack for the small-batch half, as sentences; empty when it can be judged."""
    problems, have = _missing_parity(groups, c), _batches_run(groups, c)
    if all(have.values()) and not [b for b in shared if b < c.reference_batch]:  # also while 32 lacks seeds
        problems.append(f"no batch size below reference batch {c.reference_batch} run with both {c.bn} and {c.gn}; "
                        f"have {c.bn} {have[c.bn]}, {c.gn} {have[c.gn]}")
    if not problems:  # BN is compared at the smallest batch, GN at every batch below the reference
        problems += _too_few_seeds(groups, c, shared[0], (c.bn,))
        problems += [p for b in shared if b < c.reference_batch for p in _too_few_seeds(groups, c, b, (c.gn,))]
    return problems


def _missing_parity(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria) -> list[str]:
    """What the data lack for parity at the reference batch, as sentences."""
    have = _batches_run(groups, c)
    problems = [f"no finished {tag} runs" for tag in (c.bn, c.gn) if not have[tag]]
    problems += [f"no finished {tag} runs at reference batch {c.reference_batch}; have batches {have[tag]}"
                 for tag in (c.bn, c.gn) if have[tag] and c.reference_batch not in have[tag]]
    if not problems:
        problems += _too_few_seeds(groups, c, c.reference_batch) + _too_short(groups, c)
    return problems


def _too_few_seeds(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria, batch: int,
                   tags: Sequence[str] | None = None) -> list[str]:
    """Sentences for the norms `tags` (default: both of the verdict's) with fewer than `c.min_seeds`
    finished runs at `batch`."""
    return [f"only {len(groups[tag, batch])} finished {tag} run(s) at batch {batch}; the criteria need "
            f"{c.min_seeds} or more seeds (min_seeds)" for tag in (tags or (c.bn, c.gn))
            if len(groups[tag, batch]) < c.min_seeds]


def _too_short(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria) -> list[str]:
    """A sentence when a norm's mean accuracy at the reference batch is below `c.min_reference_accuracy`:
    runs that barely left chance (10 % on CIFAR-10) are too short for any part to be judged."""
    means = {tag: float(groups[tag, c.reference_batch].mean()) for tag in (c.bn, c.gn)}
    low = {tag: mean for tag, mean in means.items() if not mean >= c.min_reference_accuracy}
    if not low:
        return []
    return [f"runs too short to judge: at reference batch {c.reference_batch} "
            + ", ".join(f"{tag} reaches {mean:.1f}%" for tag, mean in low.items())
            + f", below the {c.min_reference_accuracy:g}% the criteria need (min_reference_accuracy)"]


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def verdict(runs: pd.DataFrame, criteria: Criteria) -> dict[str, Any]:
    """Judge the claim's two parts on finished runs (columns norm, batch_size, seed, and the
    accuracy of `criteria.metric`: final_test_acc, or median5_test_acc;
    `epochs` names the budget) over the batch sizes both norms ran; JSON-ready (NaN -> None).

    The small-batch half: BN degrades, GN holds, the interaction, GN beats BN at the smallest batch.
    Parity: BN - GN at the reference batch. A required part holds, fails or is undecided (too few
    seeds, runs too short, batch sizes missing); a part the criteria do not require is not assessed
    (its `holds` is None; its checks' statistics are still reported). The overall verdict holds when
    every required part holds, fails when one fails, and is undecided otherwise while one is.
    `trained_on` counts the two norms' runs by machine (normexp.analysis.machines), so a verdict that pools or
    compares machines says so."""
    c = criteria
    by_group = runs.groupby(["norm", "batch_size"])[METRICS[c.metric]]
    groups = {(str(n), int(b)): g.to_numpy(float) for (n, b), g in by_group}
    shared = sorted({b for t, b in groups if t == c.bn} & {b for t, b in groups if t == c.gn})
    small = shared[0] if shared else None
    epochs = sorted({int(e) for e in runs["epochs"]}) if "epochs" in runs else []
    result: dict[str, Any] = {"criteria": asdict(c), "batch_sizes": shared, "reference_batch": c.reference_batch,
                              "smallest_batch": small, "epochs": epochs,
                              "trained_on": machines(runs[runs["norm"].isin([c.bn, c.gn])]),
                              "checks": {}, "parts": {}}
    missing = {SMALL_BATCH: _missing_small_batch(groups, c, shared), PARITY: _missing_parity(groups, c)}
    if not missing[SMALL_BATCH]:
        result["checks"].update(_small_batch_checks(groups, c, shared))
    if not missing[PARITY]:
        result["checks"][PARITY] = _parity_check(groups, c)
    required = {SMALL_BATCH: c.require_small_batch, PARITY: c.require_parity}
    problems = {part: missing[part] + _no_spread(result["checks"], names) for part, names in PARTS.items()}
    for part, names in PARTS.items():
        result["parts"][part] = _judge_part(result["checks"], names, problems[part], required[part])
    required_parts = [p for p in result["parts"].values() if p["required"]]
    failed = any(not p["undecided"] and not p["holds"] for p in required_parts)
    result["undecided"] = not failed and any(p["undecided"] for p in required_parts)
    result["holds"] = not failed and not result["undecided"]
    unique = dict.fromkeys(problem for part in PARTS if required[part] for problem in problems[part])
    result["reason"] = "; ".join(unique) or None  # a cell that both parts lack, named once
    return _plain(result)


def _no_spread(checks: dict[str, dict[str, Any]], names: Sequence[str]) -> list[str]:
    """The problem of checks `names` left without a bound (e.g. seeds that all scored the same)."""
    undefined = [n for n in names if n in checks and not _defined(checks[n])]
    return [f"no spread between seeds, so no bound for {', '.join(undefined)}"] if undefined else []


def _judge_part(checks: dict[str, dict[str, Any]], names: Sequence[str], problems: list[str],
                required: bool) -> dict[str, Any]:
    """A part's outcome from its checks `names` and what its data lack (`problems`); a part that is not
    required is reported, not assessed: none of its checks holds or fails (their `holds` set to None)."""
    undecided = bool(problems)
    holds = not undecided and all(checks[n]["holds"] for n in names)
    if not required:
        for name in set(names) & set(checks):
            checks[name]["holds"] = None
    return {"required": required, "assessed": required and not undecided, "undecided": undecided,
            "holds": holds if required else None, "reason": "; ".join(problems) or None}


def _parity_check(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria) -> dict[str, Any]:
    """Parity: BN - GN at the reference batch, whose two-sided (1 - alpha) CI must lie within
    ±max_parity_gap."""
    ref = c.reference_batch
    bn_ref, gn_ref = groups[c.bn, ref], groups[c.gn, ref]
    parity = welch_contrast([(1, bn_ref), (-1, gn_ref)], c.alpha)
    return {"holds": -c.max_parity_gap < parity["ci_low"] and parity["ci_high"] < c.max_parity_gap,
            "required": c.require_parity, "batch_size": ref, "bn_mean": bn_ref.mean(), "gn_mean": gn_ref.mean(),
            "n_bn": len(bn_ref), "n_gn": len(gn_ref), "gap": parity["estimate"], "ci_low": parity["ci_low"],
            "ci_high": parity["ci_high"], "max_gap": c.max_parity_gap}


def _defined(check: Mapping[str, Any]) -> bool:
    """Whether a check's bound or p-value could be computed (not NaN)."""
    values = [check.get(k) for k in ("lower_bound", "p_value_one_sided", "ci_low") if k in check]
    return all(v is not None and math.isfinite(v) for v in values)


def _small_batch_checks(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria,
                        shared: list[int]) -> dict[str, dict[str, Any]]:
    """The small-batch half's four checks, each against the reference batch; BN's drop, the
    interaction and GN beating BN at the smallest batch both norms ran. "GN holds" covers every batch
    size below the reference: GN's change from the reference to each, with GN's seed variance pooled
    over the batch sizes both norms ran (assumed equal, as GN does not see the batch; the check
    reports Bartlett's p of that assumption), must have its one-sided lower bound above -gn_loss_margin at
    every one of them. An intersection-union test: concluding that GN holds at all of them errs at
    most alpha without a multiplicity correction; the worst bound decides and is reported. Anchored at
    the reference (not at the largest batch, which at a fixed number of epochs is the most
    step-starved, so a trend from it rises and cannot fail)."""
    small, ref = shared[0], c.reference_batch
    bn_ref, bn_small, gn_ref, gn_small = (groups[t, b] for t in (c.bn, c.gn) for b in (ref, small))
    drop = welch_contrast([(1, bn_ref), (-1, bn_small)], c.alpha)
    gn_cells = [groups[c.gn, b] for b in shared]
    changes = {b: pooled_difference(groups[c.gn, b], gn_ref, gn_cells, c.alpha) for b in shared if b < ref}
    worst = min(changes, key=lambda b: changes[b]["lower_bound"])
    change = changes[worst]
    with np.errstate(divide="ignore", invalid="ignore"):  # the pooling's assumption, reported: equal variances
        equal_variance_p = float(stats.bartlett(*gn_cells).pvalue) if len(gn_cells) > 1 else math.nan
    interaction = welch_contrast([(1, bn_ref), (-1, bn_small), (-1, gn_ref), (1, gn_small)], c.alpha)
    beats = welch_contrast([(1, gn_small), (-1, bn_small)], c.alpha)
    return {
        BN_DEGRADES: {"holds": drop["lower_bound"] > c.min_bn_drop, "bn_ref_mean": bn_ref.mean(),
                      "n_ref": len(bn_ref), "bn_small_mean": bn_small.mean(), "n_small": len(bn_small),
                      "drop": drop["estimate"], "se": drop["se"], "df": drop["df"],
                      "lower_bound": drop["lower_bound"], "threshold": c.min_bn_drop},
        GN_HOLDS: {"holds": change["lower_bound"] > -c.gn_loss_margin, "batch_size": worst, "reference_batch": ref,
                   "gn_small_mean": groups[c.gn, worst].mean(), "gn_ref_mean": gn_ref.mean(),
                   "n_small": len(groups[c.gn, worst]), "n_ref": len(gn_ref), "change": change["estimate"],
                   "se": change["se"], "df": change["df"], "lower_bound": change["lower_bound"],
                   "threshold": -c.gn_loss_margin, "pooled_over": shared, "equal_variance_p": equal_variance_p,
                   "gn_mean_by_batch": {b: groups[c.gn, b].mean() for b in shared},
                   "lower_bound_by_batch": {b: changes[b]["lower_bound"] for b in changes}},
        INTERACTION: {"holds": interaction["lower_bound"] > 0, "estimate": interaction["estimate"],
                      "se": interaction["se"], "df": interaction["df"],
                      "lower_bound": interaction["lower_bound"], "threshold": 0.0},
        GN_BEATS_BN: {
            "holds": beats["p_one_sided"] < c.alpha, "batch_size": small, "gn_mean": gn_small.mean(),
            "bn_mean": bn_small.mean(), "gap": beats["estimate"], "n_gn": len(gn_small), "n_bn": len(bn_small),
            "welch_t": beats["t"], "df": beats["df"], "p_value_one_sided": beats["p_one_sided"], "alpha": c.alpha},
    }
