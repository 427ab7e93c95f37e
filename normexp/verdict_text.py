"""The claim verdict (normexp.verdict's result) in words: a few lines for one run set, or a table
comparing several (e.g. two disjoint seed sets and both pooled)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

CHECKS = ("bn_degrades", "gn_holds", "interaction", "gn_beats_bn_at_smallest_batch", "parity")


def num(value: float | None, spec: str = ".2f") -> str:
    """`value` formatted, or "n/a" where the verdict could not compute it."""
    return "n/a" if value is None else format(value, spec)


def p_spec(p: float | None) -> str:
    """Four decimals, or two significant digits below 0.0001 (never a p printed as 0.0000)."""
    return ".1e" if p is not None and p < 1e-4 else ".4f"


def is_p_column(name: object) -> bool:
    """Whether a table column holds p-values: "p" or "p_..." (e.g. p_two_sided)."""
    return str(name) == "p" or str(name).startswith("p_")


def p_text(p: float | None) -> str:
    """A p-value as text by `p_spec`'s rule; "n/a" where it is missing."""
    return "n/a" if p is None or pd.isna(p) else format(p, p_spec(p))


def with_p_text(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its p-value columns (`is_p_column`) as text by `p_text`, for display."""
    return table.assign(**{c: table[c].map(p_text) for c in table.columns if is_p_column(c)})


def describe_verdict(result: Mapping[str, Any]) -> str:
    """A few human lines: the overall verdict, then each check's comparison and its outcome."""
    if result["undecided"]:
        return f"claim verdict: UNDECIDED - {result['reason']}"
    c, k = result["criteria"], result["checks"]
    level = f"{100 * (1 - c['alpha']):g}%"

    def compare(check: Mapping[str, Any], label: str, value: float | None, relation: str, limit: str,
                spec: str = ".2f") -> str:
        """"label value > limit" if the check held, else "label value, needed > limit"; more digits
        where rounding would put the value on the limit."""
        shown = num(value, spec)
        if value is not None and float(shown) == float(limit):
            shown = format(value, spec[:-2] + "6f")
        return f"{label}{shown}{'' if check['holds'] else ', needed'} {relation} {limit}"

    d, g, i, b, p = (k[name] for name in CHECKS)
    small, ref, bn, gn = result["smallest_batch"], result["reference_batch"], c["bn"], c["gn"]
    mark = {True: "[yes]", False: "[NO]"}
    ci = f"[{num(p['ci_low'], '+.2f')}, {num(p['ci_high'], '+.2f')}]"
    return "\n".join([
        f"claim verdict: {'HOLDS' if result['holds'] else 'DOES NOT HOLD'} ({gn} vs {bn}, batch sizes "
        f"{', '.join(map(str, result['batch_sizes']))}; reference {ref})",
        f"  {mark[d['holds']]} {bn} degrades: drop {num(d['drop'])} points ({bn} {num(d['bn_ref_mean'])}% at {ref} -> "
        f"{num(d['bn_small_mean'])}% at {small}; n={d['n_ref']}/{d['n_small']}), "
        + compare(d, f"{level} lower bound ", d["lower_bound"], ">", f"{d['threshold']:.2f}"),
        f"  {mark[g['holds']]} {gn} holds: predicted change {g['largest_batch']} -> {small} {num(g['change'], '+.2f')}"
        f" points (slope {num(g['slope_per_doubling'], '+.2f')} ± {num(g['slope_se'])} per doubling), "
        + compare(g, f"{level} lower bound ", g["lower_bound"], ">", f"{g['threshold']:+.2f}", "+.2f"),
        f"  {mark[i['holds']]} interaction: {bn} drop minus {gn} drop {num(i['estimate'])} points, "
        + compare(i, f"{level} lower bound ", i["lower_bound"], ">", "0"),
        f"  {mark[b['holds']]} {gn} beats {bn} at batch {small}: {num(b['gn_mean'])}% vs {num(b['bn_mean'])}% (gap "
        f"{num(b['gap'], '+.2f')}; Welch t={num(b['welch_t'])}, df={num(b['df'], '.1f')}; "
        f"n={b['n_gn']}/{b['n_bn']}), "
        + compare(b, "one-sided p=", b["p_value_one_sided"], "<", f"{b['alpha']:g}",
                  p_spec(b["p_value_one_sided"])),
        f"  {mark[p['holds']]} parity at batch {ref} ({'required' if p['required'] else 'reported; not required'}): "
        f"{bn} - {gn} {num(p['gap'], '+.2f')} points, "
        + (f"{level} CI {ci} within ±{p['max_gap']:.2f}" if p["holds"]
           else f"{level} CI {ci}, needed within ±{p['max_gap']:.2f}"),
    ])


def outcome(check: Mapping[str, Any]) -> str:
    """A check's outcome in a table cell."""
    return "yes" if check["holds"] else "NO"


def verdict_table(verdicts: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Several run sets' verdicts side by side: one row per check with its estimate, bound and
    outcome, one column per set, and the criteria each set was judged by."""
    columns = {}
    for label, result in verdicts.items():
        if result["undecided"]:
            columns[label] = {"verdict": f"UNDECIDED: {result['reason']}"}
            continue
        c, (d, g, i, b, p) = result["criteria"], (result["checks"][name] for name in CHECKS)
        bn, gn = c["bn"], c["gn"]

        columns[label] = {
            "verdict": "HOLDS" if result["holds"] else "DOES NOT HOLD",
            "batch sizes (reference)": f"{', '.join(map(str, result['batch_sizes']))} ({result['reference_batch']})",
            "finished runs": str(result["runs"]["finished"]),
            "criteria": (f"{bn} drop > {c['min_bn_drop']:g}, {gn} change > -{c['max_gn_loss']:g}, "
                         f"alpha {c['alpha']:g}, parity ±{c['max_parity_gap']:g}"
                         f"{' required' if c['require_parity'] else ''}"),
            "BN degrades: drop (lower bound)": f"{num(d['drop'])} ({num(d['lower_bound'])}) {outcome(d)}",
            "GN holds: change (lower bound)": f"{num(g['change'], '+.2f')} ({num(g['lower_bound'], '+.2f')}) "
                                              f"{outcome(g)}",
            "interaction (lower bound)": f"{num(i['estimate'])} ({num(i['lower_bound'])}) {outcome(i)}",
            "GN beats BN at smallest batch: gap (p)": f"{num(b['gap'], '+.2f')} "
                                                      f"({p_text(b['p_value_one_sided'])}) "
                                                      f"{outcome(b)}",
            "parity at reference: BN - GN [CI]": f"{num(p['gap'], '+.2f')} [{num(p['ci_low'], '+.2f')}, "
                                                 f"{num(p['ci_high'], '+.2f')}] {outcome(p)}"
                                                 f"{'' if p['required'] else ' (not required)'}",
        }
    return pd.DataFrame(columns).fillna("").rename_axis("check")
