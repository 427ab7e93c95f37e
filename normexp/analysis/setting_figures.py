"""Figures of runs that vary further settings (e.g. the training budget): a panel per norm, a colour
(and marker) per value of one setting, a line style per value of the others, each value named as a
reader names it ("10 epochs", "fp32"), points dodged sideways where they share a position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D

from normexp.analysis import plots
from normexp.analysis.plots import MARKERS, axis_scale, dodged, natural, seeds_text
from normexp.analysis.tables import accuracy_table

NAMES = {"trainer.epochs": "training budget (epochs)", "trainer.precision": "precision", "numerics": "numerics version",
         "batch_size": "images per device"}
Style = tuple[Any, Any]  # a line style and a marker fill, as matplotlib names them
STYLES: tuple[Style, ...] = (("-", "full"), ("--", "none"), (":", "left"), ("-.", "bottom"))
UNSET = "unset"  # a setting a run's identity lacks (normexp.analysis.verdict.with_axes)


def name(setting: str) -> str:
    """A setting as a reader names it: "training budget" for trainer.epochs, else its last part."""
    return NAMES.get(setting, setting.split(".")[-1])


def value_text(setting: str, value: Any) -> str:
    """One value of a setting as a reader names it: "1 epoch", "fp32" (precision unset), "numerics v1"
    (unset: version 1), "2" (images per device); another setting "depth 20", unset: "depth default"."""
    if setting == "trainer.epochs":
        return f"{value} epoch{'' if str(value) == '1' else 's'}"
    if setting == "trainer.precision":
        return "fp32" if value == UNSET else str(value)
    if setting == "numerics":
        return f"numerics v{1 if value == UNSET else value}"
    if setting == "batch_size":  # under its name, "images per device"
        return str(value)
    return f"{name(setting)} {'default' if value == UNSET else value}"


def with_axis_labels(runs: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """`runs` whose `norm` labels also name their value of each further swept setting (e.g.
    `bn, 10 epochs`), so that figures drawn per norm keep those runs apart."""
    labelled = runs.copy()
    for axis in axes:
        labelled["norm"] = labelled["norm"] + ", " + [value_text(axis, v) for v in labelled[axis]]
    return labelled


def in_order(setting: str, values: Sequence[Any]) -> list[Any]:
    """Distinct values in reading order: numbers by size, then text naturally, unset (the default) first."""
    distinct = set(values)
    rest = sorted(distinct - {UNSET}, key=lambda v: (isinstance(v, str), natural(str(v))))
    return ([UNSET] if UNSET in distinct else []) + rest


def palette(values: Sequence[Any]) -> list[str]:
    """A colour per value in order: along a sequential colormap for three or more numbers (dark to
    light as they grow), else from a qualitative one."""
    if all(isinstance(v, (int, float, np.number)) for v in values) and len(values) > 2:
        return [to_hex(plt.get_cmap("viridis")(0.8 * i / (len(values) - 1))) for i in range(len(values))]
    dark2 = plt.get_cmap("Dark2").colors  # type: ignore[attr-defined]  # a ListedColormap's
    return [to_hex(dark2[i % len(dark2)]) for i in range(len(values))]


def _legend(fig: plt.Figure, colour_by: str, looks: dict[Any, dict[str, Any]], styles: dict[str, Style]) -> None:
    """One legend beside the panels: a colour and marker per value of `colour_by` under its name,
    then, where there are several, a line style per value of the other settings."""
    handles = [Line2D([], [], label=value_text(colour_by, v), **look) for v, look in looks.items()]
    if len(styles) > 1:
        handles += [Line2D([], [], color="grey", marker="o", linestyle=ls, fillstyle=fill, label=s)
                    for s, (ls, fill) in styles.items()]
    fig.legend(handles=handles, title=name(colour_by), loc="upper left", bbox_to_anchor=(1.0, 0.85),
               fontsize="small")


def _panels(table: pd.DataFrame, x: str, y: pd.Series, colour_by: str, style_by: Sequence[str], path: Path,
            axis: Callable[[plt.Axes], bool], labels: dict[str, str]) -> Path:
    """A panel per norm (shared y): for each value of `colour_by` x the `style_by` values a line of
    `y` (mean) +- the seeds' SD over `x`, its points dodged sideways where lines share an x; `axis`
    sets up each panel's x axis and says whether it is logarithmic; `labels` the x and y labels and
    the title."""
    table = table.assign(y=y.to_numpy(), style=[", ".join(value_text(s, row[s]) for s in style_by)
                                                for _, row in table.iterrows()])
    colours = in_order(colour_by, list(table[colour_by]))
    looks = {v: {"color": c, "marker": MARKERS[i % len(MARKERS)]} for i, (v, c) in enumerate(zip(colours,
                                                                                                palette(colours)))}
    styles = {s: STYLES[i % len(STYLES)] for i, s in enumerate(sorted(table["style"].unique(), key=natural))}
    norms = sorted(table["norm"].unique(), key=natural)
    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.8), squeeze=False, sharey=True)
    for ax, norm in zip(axes.flat, norms):
        log, panel = axis(ax), table[table["norm"] == norm]
        lines = {(v, s): rows.sort_values(x) for v in colours for s in styles
                 if len(rows := panel[(panel[colour_by] == v) & (panel["style"] == s)])}
        xs = dodged({key: list(rows[x]) for key, rows in lines.items()}, log)
        for (value, style), rows in lines.items():
            ax.errorbar(xs[(value, style)], rows["y"], yerr=rows["acc_std"], capsize=2,
                        markersize=5, linestyle=styles[style][0], fillstyle=styles[style][1], **looks[value])
        ax.set(title=norm, xlabel=labels["x"] + (", log scale" if log else ""))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(labels["y"])
    lone = "; one seed: no bar" if table["n"].min() == 1 else ""
    fig.suptitle(f"{labels['title']}\nmean over seeds, error bars ± 1 SD over seeds "
                 f"({seeds_text(table['n'])} per point{lone})")
    fig.tight_layout()
    _legend(fig, colour_by, looks, styles)
    return plots.save(fig, path)


def error_vs_batch(runs: pd.DataFrame, axes: Sequence[str], path: Path) -> Path:
    """Test error against batch size (log2 axis, largest first), a panel per norm, a colour per value
    of the first further setting, a line style per value of the others."""
    table = accuracy_table(runs, axes)

    def batch_axis(ax: plt.Axes) -> bool:
        ax.set_xscale("log", base=2)
        batches = sorted(table["batch_size"].unique())
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlim(max(batches) * 1.4, min(batches) / 1.4)  # largest first, dodged points inside
        return True

    return _panels(table, "batch_size", 100 - table["acc_mean"], axes[0], axes[1:], path, batch_axis,
                   {"x": "images per device (BN's statistics batch)", "y": "test error (%)",
                    "title": f"Test error vs batch size, by {name(axes[0])}"})


def accuracy_vs_axis(runs: pd.DataFrame, axis: str, others: Sequence[str], path: Path) -> Path:
    """Final test accuracy against a further swept setting (e.g. trainer.epochs), a panel per norm, a
    colour per batch size, a line style per value of the `others` settings; a setting with values
    other than numbers (e.g. unset and bf16) is drawn as categories, the default first."""
    table = accuracy_table(runs, [axis, *others])
    categories: list[Any] = []
    if not pd.api.types.is_numeric_dtype(table[axis]):
        categories = in_order(axis, list(table[axis]))
        table[axis] = table[axis].map({c: i for i, c in enumerate(categories)})

    def setting_axis(ax: plt.Axes) -> bool:
        if categories:
            ax.set_xticks(range(len(categories)), [value_text(axis, c) for c in categories])
            ax.set_xlim(-0.5, len(categories) - 0.5)
            return False
        return axis_scale(ax, list(table[axis]))

    return _panels(table, axis, table["acc_mean"], "batch_size", others, path, setting_axis,
                   {"x": name(axis), "y": "final test accuracy (%)", "title": f"Final test accuracy by {name(axis)}"})
