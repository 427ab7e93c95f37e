"""The claim verdict (normexp.analysis.verdict's result) in words: a few lines for one run set, or a table
comparing several (e.g. two disjoint seed sets and both pooled). It renders only: the parts and checks
are the verdict's (PARTS), numbers and p-values formatting's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from normexp.analysis.formatting import num, p_spec, p_text
from normexp.analysis.verdict import PARITY, PARTS, SMALL_BATCH, SMALL_BATCH_CHECKS


def budget_text(result: Mapping[str, Any]) -> str:
    """The training budget the runs had, e.g. "5-epoch budget", and the metric when not the final accuracy."""
    epochs = result.get("epochs") or []
    budget = f"{'/'.join(map(str, epochs))}-epoch budget" if epochs else "budget not recorded"
    median = result["criteria"].get("metric") == "median5"
    return budget + ("; median of the last 5 epochs' accuracy" if median else "")


def part_text(result: Mapping[str, Any], part: str) -> str:
    """One part's outcome, e.g. "small-batch half: HOLDS (required)"; a part the criteria do not
    require has none, e.g. "parity at 32: not assessed (not required at this budget)"."""
    state = result["parts"][part]
    label = "small-batch half" if part == SMALL_BATCH else f"parity at {result['reference_batch']}"
    if not state["required"]:  # parity is a converged claim; the small-batch half is left out by parity-only presets
        return f"{label}: not assessed (not required {'at this budget' if part == PARITY else 'by this preset'})"
    return f"{label}: {'UNDECIDED' if state['undecided'] else ('HOLDS' if state['holds'] else 'NO')} (required)"


def headline(result: Mapping[str, Any]) -> str:
    """The overall outcome and what it tested: the budget, each part's outcome, and which parts were
    required, e.g. "claim verdict: HOLDS (5-epoch budget) - small-batch half: HOLDS (required); ..."."""
    return f"claim verdict: {overall(result)} ({budget_text(result)}) - " + "; ".join(
        part_text(result, part) for part in PARTS)


def overall(result: Mapping[str, Any]) -> str:
    return "UNDECIDED" if result["undecided"] else ("HOLDS" if result["holds"] else "DOES NOT HOLD")


def describe_verdict(result: Mapping[str, Any]) -> str:
    """A few human lines: the headline, the machines where the runs came from more than one, then
    each part's checks with their comparisons and outcomes."""
    c, k = result["criteria"], result["checks"]
    level = f"{100 * (1 - c['alpha']):g}%"

    def compare(check: Mapping[str, Any], label: str, value: float | None, relation: str, limit: str,
                spec: str = ".2f") -> str:
        """"label value > limit" if the check held, else "label value, needed > limit"; more digits
        where rounding would put the value on the limit."""
        shown = num(value, spec)
        if value is not None and float(shown) == float(limit):
            shown = format(value, spec[:-2] + "6f")
        word = {True: "", False: ", needed", None: ", criterion"}[check["holds"]]
        return f"{label}{shown}{word} {relation} {limit}"

    small, ref, bn, gn = result["smallest_batch"], result["reference_batch"], c["bn"], c["gn"]
    mark = {True: "[yes]", False: "[NO]", None: "[--]"}
    parts = result["parts"]
    lines = [headline(result)]
    if len(result.get("trained_on") or {}) > 1:
        lines.append("  runs of more than one machine (as recorded), pooled and compared: "
                     + "; ".join(f"{name} ({n} runs)" for name, n in result["trained_on"].items()))
    if parts[SMALL_BATCH]["undecided"]:
        lines.append(f"  small-batch half {_unjudged(parts[SMALL_BATCH])}: {parts[SMALL_BATCH]['reason']}")
    else:
        d, g, i, b = (k[name] for name in SMALL_BATCH_CHECKS)
        lines += [
            f"  small-batch half ({gn} vs {bn}, batch sizes {', '.join(map(str, result['batch_sizes']))}; "
            f"reference {ref}){'' if parts[SMALL_BATCH]['required'] else ', not assessed'}:",
            f"  {mark[d['holds']]} {bn} degrades: drop {num(d['drop'])} points ({bn} {num(d['bn_ref_mean'])}% at {ref}"
            f" -> {num(d['bn_small_mean'])}% at {small}; n={d['n_ref']}/{d['n_small']}), "
            + compare(d, f"{level} lower bound ", d["lower_bound"], ">", f"{d['threshold']:.2f}"),
            f"  {mark[g['holds']]} {gn} holds at every batch below {ref} (worst: {g['batch_size']}): change {ref} -> "
            f"{g['batch_size']} {num(g['change'], '+.2f')} points ({gn} "
            f"{num(g['gn_ref_mean'])}% -> {num(g['gn_small_mean'])}%; SD pooled over batch sizes, df "
            f"{num(g['df'], '.0f')}, equal variances Bartlett p={p_text(g.get('equal_variance_p'))}), "
            + compare(g, f"{level} lower bound ", g["lower_bound"], ">", f"{g['threshold']:+.2f}", "+.2f"),
            f"  {mark[i['holds']]} interaction: {bn} drop minus {gn} drop {num(i['estimate'])} points, "
            + compare(i, f"{level} lower bound ", i["lower_bound"], ">", "0"),
            f"  {mark[b['holds']]} {gn} beats {bn} at batch {small}: {num(b['gn_mean'])}% vs {num(b['bn_mean'])}% "
            f"(gap {num(b['gap'], '+.2f')}; Welch t={num(b['welch_t'])}, df={num(b['df'], '.1f')}; "
            f"n={b['n_gn']}/{b['n_bn']}), "
            + compare(b, "one-sided p=", b["p_value_one_sided"], "<", f"{b['alpha']:g}",
                      p_spec(b["p_value_one_sided"]))]
    if parts[PARITY]["undecided"]:
        lines.append(f"  parity {_unjudged(parts[PARITY])}: {parts[PARITY]['reason']}")
    else:
        p = k[PARITY]
        ci = f"[{num(p['ci_low'], '+.2f')}, {num(p['ci_high'], '+.2f')}]"
        word = {True: " within", False: ", needed within", None: "; not assessed, criterion within"}[p["holds"]]
        lines.append(
            f"  {mark[p['holds']]} parity at batch {ref}: {bn} - {gn} {num(p['gap'], '+.2f')} points ({bn} "
            f"{num(p['bn_mean'])}%, {gn} {num(p['gn_mean'])}%), {level} CI {ci}{word} ±{p['max_gap']:.2f}")
    return "\n".join(lines)


def _unjudged(state: Mapping[str, Any]) -> str:
    """How a part without an outcome is named: undecided when required, not assessed otherwise."""
    return "undecided" if state["required"] else "not assessed"


def outcome(check: Mapping[str, Any]) -> str:
    """A check's outcome in a table cell; "not assessed" for a check of a part that is not required."""
    return {True: "yes", False: "NO", None: "not assessed"}[check["holds"]]


def verdict_table(verdicts: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Several run sets' verdicts side by side: one row per part and check with its estimate, bound
    and outcome, one column per set, and the criteria each set was judged by."""
    columns = {}
    for label, result in verdicts.items():
        if result["undecided"] and not result.get("checks"):
            columns[label] = {"verdict": f"UNDECIDED: {result['reason']}"}
            continue
        c, k = result["criteria"], result["checks"]
        bn, gn = c["bn"], c["gn"]
        column = {
            "verdict": overall(result),
            "parts": "; ".join(part_text(result, part) for part in PARTS),
            "budget": budget_text(result),
            "batch sizes (reference)": f"{', '.join(map(str, result['batch_sizes']))} ({result['reference_batch']})",
            "finished runs": str(result["runs"]["finished"]),
            "trained on (runs)": "; ".join(f"{name} ({n})" for name, n in (result.get("trained_on") or {}).items()),
            "criteria": (f"{bn} drop > {c['min_bn_drop']:g}, {gn} change at every batch > -{c['gn_loss_margin']:g}, "
                         f"alpha {c['alpha']:g}, parity ±{c['max_parity_gap']:g}, {c['min_seeds']}+ seeds"),
        }
        if any(name in k for name in SMALL_BATCH_CHECKS):
            d, g, i, b = (k[name] for name in SMALL_BATCH_CHECKS)
            column.update({
                "BN degrades: drop (lower bound)": f"{num(d['drop'])} ({num(d['lower_bound'])}) {outcome(d)}",
                "GN holds vs reference: worst change (lower bound)": f"{num(g['change'], '+.2f')} at {g['batch_size']} "
                                                                     f"({num(g['lower_bound'], '+.2f')}) {outcome(g)}",
                "interaction (lower bound)": f"{num(i['estimate'])} ({num(i['lower_bound'])}) {outcome(i)}",
                "GN beats BN at smallest batch: gap (p)": f"{num(b['gap'], '+.2f')} "
                                                          f"({p_text(b['p_value_one_sided'])}) {outcome(b)}"})
        if PARITY in k:
            p = k[PARITY]
            column["parity at reference: BN - GN [CI]"] = (
                f"{num(p['gap'], '+.2f')} [{num(p['ci_low'], '+.2f')}, {num(p['ci_high'], '+.2f')}] {outcome(p)}")
        columns[label] = column
    return pd.DataFrame(columns).fillna("").rename_axis("check")
