"""A one-change-per-arm screen against a reference study: which change moves the BN - GN gap.

Each run's arm is what its identity changes against the reference run of its norm family (BN
against the reference's BN, any GN against its GN, same seed and batch): e.g. `data.crop_fill=reflect`
or `norm.groups=4`. An arm's gap is its BN minus its GN in final test accuracy; an arm without a BN
run of its own (a GN-only arm, e.g. `norm.groups=4` or `data.crop_fill=reflect, norm.groups=4`) is
measured against the BN run of its changes other than the norm's (the reference's BN when there are
none). The reading follows the thresholds the presets fixed before their runs
(conf/experiment/parity_screen.yaml, parity_combo.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd

from normexp.analysis.collect import load_runs
from normexp.analysis.pooling import flat_settings
from normexp.files import atomic

REFERENCE = "reference"
# What closing the reference's gap by this much reads as, and the gap (either sign) read as parity
# (parity_screen.yaml and parity_combo.yaml, fixed before their runs); gaps are read at 0.01
CARRIES, CARRIES_PART, PARITY = 1.0, 0.5, 1.0
# Changes only GN has: a GN-only arm is measured against the BN run of its other changes
GN_ONLY = ("norm.groups=", "norm.channels_per_group=")
# Identity entries that are the same setting for both families or no setting at all
NOT_A_CHANGE = {"data_digest", "numerics"}

# The screen's arms in the presets' order, as the table names them (ties between recipes: fewer arms,
# then the earlier arm; parity_combo.yaml)
ARMS = ("data.crop_fill=reflect", "data.devices=1, optim.ref_batch_size=32", "norm.groups=4", "norm.groups=2",
        "data.crop_fill=mean", "model.depth=20")
# parity_combo.yaml's partners: the later arms that combine with reflection (ARMS[0]); mean fill replaces
# reflection's padding instead
PARTNERS = tuple(arm for arm in ARMS[1:] if arm != "data.crop_fill=mean")
AT_PARITY = "carries the gap, at parity"


class NoFinishedRuns(ValueError):
    """The screen's folder has no finished run yet (nothing to read, not a refusal of its records)."""


def family(ident: Mapping[str, Any]) -> str:
    """`bn` for batch norm, `gn` for any group norm (the screen pairs runs by family)."""
    return "gn" if str(ident["norm"]["name"]).startswith("gn") else str(ident["norm"]["name"])


def change(ident: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """The settings `ident` changes against `reference`, as `key=value, ...` (REFERENCE when none)."""
    run, base = flat_settings(ident), flat_settings(reference)
    keys = sorted(k for k in run.keys() | base.keys() if k not in NOT_A_CHANGE and run.get(k) != base.get(k))
    return ", ".join(f"{k}={run.get(k, 'unset')}" for k in keys) or REFERENCE


def bn_arm(arm: str) -> str:
    """The arm whose BN run a GN-only `arm` is measured against: its changes without the norm's."""
    kept = [part for part in arm.split(", ") if part != REFERENCE and not part.startswith(GN_ONLY)]
    return ", ".join(kept) or REFERENCE


def _reading(gap: float, closed: float) -> str:
    if abs(gap) <= PARITY:
        return AT_PARITY
    if closed >= CARRIES:
        return "carries the gap"
    return "carries part" if closed >= CARRIES_PART else "does not carry it"


def _reference_run(ref: pd.DataFrame, run: pd.Series, kind: str, reference: Path) -> pd.Series:
    """The reference's finished run of family `kind` at `run`'s seed and batch (exactly one)."""
    base = ref[(ref["seed"] == run["seed"]) & (ref["batch_size"] == run["batch_size"])
               & (ref["identity"].map(family) == kind)]
    if len(base) != 1:
        raise ValueError(f"{len(base)} {kind} runs at seed {run['seed']} and batch {run['batch_size']} in "
                         f"{reference}; the screen needs exactly 1")
    return base.iloc[0]


def arm_runs(screen: Path, reference: Path) -> pd.DataFrame:
    """One row per finished run of the screen and of the reference's BN and GN runs at the screen
    runs' seed and batch: arm, family, final accuracy, compute hours."""
    runs, ref = load_runs(screen).finished, load_runs(reference).finished
    if runs.empty:
        raise NoFinishedRuns(f"no finished runs in {screen}")
    rows = []
    for _, run in runs.iterrows():
        base = {kind: _reference_run(ref, run, kind, reference) for kind in ("bn", "gn")}
        arm = change(run["identity"], base[family(run["identity"])]["identity"])
        for row, name in ((run, arm), (base["bn"], REFERENCE), (base["gn"], REFERENCE)):
            rows.append({"arm": name, "family": family(row["identity"]), "run": row["run"],
                         "acc": row["final_test_acc"], "hours": row["compute_seconds"] / 3600})
    return pd.DataFrame(rows).drop_duplicates("run")


def _row(arm: str, bn: Optional[pd.Series], gn: Optional[pd.Series], borrowed_from: Optional[str],
         reference_gap: float) -> dict[str, Any]:
    """One arm's row; no gap while its BN or GN run has not finished (`bn` or `gn` None). A GN-only
    arm's BN is borrowed from the arm named by `borrowed_from` (marked `(ref)` or `(<arm>)`)."""
    gap = None if bn is None or gn is None else round(bn["acc"] - gn["acc"], 2)
    closed = None if gap is None else round(reference_gap - gap, 2)
    if gap is None or closed is None:
        reading = f"its {'GN' if gn is None else 'BN'} run has not finished"
    else:
        reading = "the reference" if arm == REFERENCE else _reading(gap, closed)
    mark = "" if borrowed_from is None else " (ref)" if borrowed_from == REFERENCE else f" ({borrowed_from})"
    return {"arm": arm, "BN": "-" if bn is None else f"{bn['acc']:.2f}" + mark,
            "GN": "-" if gn is None else f"{gn['acc']:.2f}",
            "gap BN - GN": gap, "closes": closed, "reading": reading,
            "compute h BN / GN": ("-" if bn is None or borrowed_from else f"{bn['hours']:.1f}") + " / "
                                 + ("-" if gn is None else f"{gn['hours']:.1f}")}


def screen_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm (the reference first, then by name): BN, GN, gap (BN - GN), how much of the reference's
    gap it closes, the reading, and each run's compute hours. A GN-only arm borrows the BN run of its
    changes other than the norm's (`bn_arm`); an arm with a run not finished has no gap yet."""
    bn_runs, gn_runs = (runs[runs["family"] == f].set_index("arm") for f in ("bn", "gn"))
    for kind, found in (("BN", bn_runs), ("GN", gn_runs)):
        if found.index.duplicated().any():
            twice = sorted(set(found.index[found.index.duplicated()]))
            raise ValueError(f"more than one {kind} run of arm(s) {twice} (other seeds?): the screen reads one per arm")
    reference_gap = round(bn_runs.loc[REFERENCE, "acc"] - gn_runs.loc[REFERENCE, "acc"], 2)
    rows = []
    for arm, gn in gn_runs.iterrows():
        source = arm if arm in bn_runs.index else bn_arm(arm)
        bn = bn_runs.loc[source] if source in bn_runs.index else None
        rows.append(_row(arm, bn, gn, None if source == arm else source, reference_gap))
    rows += [_row(arm, bn, None, None, reference_gap) for arm, bn in bn_runs.iterrows() if arm not in gn_runs.index]
    table = pd.DataFrame(rows)
    arms = table[table["arm"] != REFERENCE].sort_values("arm")
    return pd.concat([table[table["arm"] == REFERENCE], arms], ignore_index=True)


def arms_of(arm: str) -> list[str]:
    """The screen's arms (ARMS) that a table row's `arm` combines, in the presets' order."""
    parts = set(arm.split(", "))
    return [unit for unit in ARMS if set(unit.split(", ")) <= parts]


def _only_arms(arm: str) -> bool:
    """Whether `arm` changes nothing but the screen's arms (a row changing anything else is no recipe)."""
    return set(arm.split(", ")) == {part for unit in arms_of(arm) for part in unit.split(", ")}


def recipe(table: pd.DataFrame) -> Optional[str]:
    """The arm read as at parity, by parity_combo.yaml's ties: the smaller gap (its size), then fewer
    arms, then the earlier arm; None when no arm made of the screen's arms only is at parity. Which
    of two readings came first is the caller's to record (the first recipe stands)."""
    rows = [row for _, row in table[table["reading"] == AT_PARITY].iterrows() if _only_arms(str(row["arm"]))]
    if not rows:
        return None

    def order(row: pd.Series) -> tuple[float, int, list[int]]:
        units = arms_of(str(row["arm"]))
        return abs(row["gap BN - GN"]), len(units), [ARMS.index(unit) for unit in units]

    return str(min(rows, key=order)["arm"])


def _split_arm(arm: str) -> tuple[Optional[str], list[str]]:
    """`arm`'s GN if it changes GN's groups (`gnG`, else None) and its other changes as overrides."""
    groups, common = None, []
    for part in arm.split(", "):
        if part.startswith("norm.groups="):
            groups = "gn" + part.split("=", 1)[1]
        elif part.startswith(GN_ONLY):
            raise ValueError(f"{part}: only norm.groups= becomes a run's overrides")
        elif part != REFERENCE:
            common.append(part)
    return groups, common


def training_overrides(arm: str) -> dict[str, list[str]]:
    """The command-line overrides of `arm`'s screen runs per family: a change of GN's groups trains GN
    only (`norm=gnG`; its BN is borrowed, `bn_arm`)."""
    groups, common = _split_arm(arm)
    runs = {"gn": [f"norm={groups or 'gn'}", *common]}
    return runs if groups else {"bn": ["norm=bn", *common], **runs}


def recipe_overrides(arm: str) -> dict[str, list[str]]:
    """The command-line overrides that train `arm` as the BN and the GN run of parity_figure.yaml: a
    change of GN's groups replaces GN (`norm=gnG`) and the verdict's challenger (`verdict.gn=gnG`)."""
    groups, common = _split_arm(arm)
    if groups:
        common.append(f"verdict.gn={groups}")
    return {"bn": ["norm=bn", *common], "gn": [f"norm={groups or 'gn'}", *common]}


def gap_figure(table: pd.DataFrame, path: Path) -> Path:
    """The gap per arm as bars, the reference's gap and the parity target (1 point) as lines."""
    import matplotlib.pyplot as plt

    arms = table[(table["arm"] != REFERENCE) & table["gap BN - GN"].notna()]
    reference_gap = float(table.loc[table["arm"] == REFERENCE, "gap BN - GN"].iloc[0])
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(arms) + 1.6))
    ax.barh(arms["arm"], arms["gap BN - GN"], color="tab:orange")
    ax.axvline(reference_gap, color="tab:blue", label=f"reference gap {reference_gap:.2f}")
    ax.axvline(reference_gap - CARRIES, color="tab:blue", ls="--", label=f"closes {CARRIES:g} point: carries the gap")
    ax.axvline(1.0, color="grey", ls=":", label="about parity (1 point)")
    ax.invert_yaxis()
    ax.set_xlim(0, max([reference_gap, *arms["gap BN - GN"]]) + 0.5)
    if arms.empty:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no arm has finished both runs yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("BN - GN, final test accuracy (points; one seed per run)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=1, frameon=False)
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def write(screen: Path, reference: Path, out: Path) -> pd.DataFrame:
    """The screen's table (tables/screen.md and .csv) and figure (figures/gap_by_arm.png) under `out`."""
    from normexp.analysis.pipeline import write_table

    table = screen_table(arm_runs(screen, reference))
    write_table(table, out / "tables", "screen")
    gap_figure(table, out / "figures" / "gap_by_arm.png")
    return table
