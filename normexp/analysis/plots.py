"""Figures (PNG) from the run tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from normexp.analysis.tables import accuracy_table  # noqa: E402
from normexp.files import atomic  # noqa: E402

K = TypeVar("K", bound=Hashable)  # a series' key
GROUP_ORDER = ["ln", "gn2", "gn4", "gn8", "gn16", "gn32", "in"]
# One colour per norm tag in every figure, whichever other norms it shows: the presets' tags are
# listed (all distinct); another tag takes a colour of tab20 that none of these uses, by its name.
COLOURS = {"bn": "#1f77b4", "gn8": "#ff7f0e", "ln": "#2ca02c", "in": "#d62728", "none": "#7f7f7f",
           "gn2": "#bcbd22", "gn4": "#17becf", "gn16": "#8c564b", "gn-cpg16": "#e377c2", "gn32": "#9467bd",
           "brn": "#000000", "bn-pbn": "#6a3d9a", "gn8-ws": "#b15928", "frn": "#33a02c", "evonorm8": "#fb9a99"}
# A variant of a norm (another evaluation, weight standardization, a renormalization) keeps a line
# style of its own, so it stays apart from its base norm in print and for colour-blind readers.
STYLES = {"bn-pbn": "--", "gn8-ws": "--", "brn": "-.", "frn": ":", "evonorm8": "-."}
MARKERS = "osD^vP*Xhp<>"
BARS = "mean over seeds, error bars ± 1 SD over seeds"  # what every figure's error bars are, in its title
# BN's three evaluations of the same weights (normexp.train.bn_evaluation), named as in docs/analysis.md
EVALUATION_LOOKS = (("test_acc", "running averages", {"color": "#1f77b4", "linestyle": "-"}),
                    ("test_acc_precise", "precise population statistics", {"color": "#2ca02c", "linestyle": "--"}),
                    ("test_acc_batch", "batch statistics", {"color": "#d62728", "linestyle": ":"}))


def style(norm: str) -> dict[str, str]:
    """Colour, line style and marker of a norm tag, the same in every figure."""
    order = sorted(COLOURS)
    marker = MARKERS[order.index(norm) % len(MARKERS)] if norm in order else MARKERS[sum(map(ord, norm)) % len(MARKERS)]
    return {"color": colour(norm), "linestyle": STYLES.get(norm, "-"), "marker": marker}


def _legend_outside(ax: plt.Axes) -> None:
    """The legend beside the axes, never over the data, its entries in natural order (2 before 10)."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: natural(labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0, fontsize="small")


def natural(label: str) -> list:
    """A sort key that orders the numbers inside labels by value: "bn 2" before "bn 10"."""
    return [(0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
            for t in re.split(r"(\d+(?:\.\d+)?)", label) if t]


def looks(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct style per label, each in its norm's colour family: labels that share a norm (the
    first word, e.g. "bn epochs=10" and "bn epochs=20") get shades of that norm's colour from light
    to dark in natural order and markers of their own; a norm alone keeps `style`."""
    families: dict[str, list[str]] = {}
    for label in sorted(set(labels), key=natural):
        families.setdefault(label.split(" ")[0].rstrip(","), []).append(label)
    out = {}
    for norm, members in families.items():
        if len(members) == 1:
            out[members[0]] = style(norm)
            continue
        base = colour(norm)
        dark = sum(matplotlib.colors.to_rgb(base)) < 0.3  # e.g. brn's black: its shades are greys up to black
        ramp = matplotlib.colors.LinearSegmentedColormap.from_list(norm, ["#ffffff", base] if dark else
                                                                   ["#ffffff", base, "#000000"])
        for i, label in enumerate(members):
            shade = 0.3 + 0.45 * i / (len(members) - 1)  # from a light tint to a dark shade of the norm's colour
            out[label] = {"color": matplotlib.colors.to_hex(ramp(shade)), "linestyle": STYLES.get(norm, "-"),
                          "marker": MARKERS[i % len(MARKERS)]}
    return out


def axis_scale(ax: plt.Axes, values: Sequence[float]) -> bool:
    """Ratio-like settings (positive numbers spanning a factor of 8 or more: learning rates, budgets,
    batch sizes) on a log axis with their values as ticks (True), others linear (False)."""
    numbers = sorted({float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if len(numbers) > 1 and numbers[0] > 0 and numbers[-1] / numbers[0] >= 8:
        ax.set_xscale("log")
        ax.set_xticks(numbers, [f"{v:g}" for v in numbers])
        ax.minorticks_off()
        return True
    return False


def colour(norm: str) -> str:
    if norm in COLOURS:
        return COLOURS[norm]
    tab20 = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]  # a ListedColormap's
    free = [h for h in map(matplotlib.colors.to_hex, tab20) if h not in COLOURS.values()]
    return free[sum(map(ord, norm)) % len(free)]


def seeds_text(counts: pd.Series) -> str:
    """How many seeds the points average, e.g. "3 seeds", "1-3 seeds", "1 seed"."""
    low, high = int(counts.min()), int(counts.max())
    return f"{low} seed{'' if high == 1 else 's'}" if low == high else f"{low}-{high} seeds"


def save(fig: plt.Figure, path: Path) -> Path:
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def error_vs_batch(runs: pd.DataFrame, path: Path) -> Path:
    """Test error vs batch size (log2 axis), mean +- SD over seeds: the GN paper's Figure 1 (with
    further swept settings: normexp.analysis.setting_figures.error_vs_batch)."""
    table = accuracy_table(runs)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    shown = looks(list(table["norm"]))
    for norm, rows in table.groupby("norm"):
        ax.errorbar(rows["batch_size"], 100 - rows["acc_mean"], yerr=rows["acc_std"], capsize=3,
                    label=f"{norm} ({seeds_text(rows['n'])})", **shown[norm])
    ax.set_xscale("log", base=2)
    batches = sorted(table["batch_size"].unique())
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.invert_xaxis()
    ax.set_xlabel("batch size (images per device: BN's statistics batch)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Test error vs batch size\n{BARS}")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return save(fig, path)


def _per_batch_grid(epochs: pd.DataFrame, x: str, y: str, ylabel: str, path: Path, title: str,
                    shown: dict[str, dict[str, Any]] | None = None) -> Path:
    """One panel per batch size, a line (mean over seeds, shaded +- SD) per label of `norm`, each label
    in one style in every panel (`shown`, else `looks`) and named once in a legend beside the grid; x
    from the start of training (0) to the panel's last value."""
    batches = sorted(epochs["batch_size"].unique())
    shown = shown or looks(list(epochs["norm"]))
    cols = min(3, len(batches))
    rows = -(-len(batches) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, sharey=True)
    named: dict[str, Any] = {}
    lengths = set()
    for ax, batch in zip(axes.flat, batches):
        subset = epochs[epochs["batch_size"] == batch]
        for norm, norm_rows in subset.groupby("norm"):
            curve = norm_rows.groupby(x)[y].agg(["mean", "std"]).reset_index()
            spread, look = curve["std"].fillna(0), dict(shown[norm])
            look["marker"] = look["marker"] if len(curve) < 30 else None  # markers keep one-point curves visible
            named[norm] = ax.plot(curve[x], curve["mean"], markersize=4, label=norm, **look)[0]
            if len(curve) == 1:  # a lone point: a band would have no width
                ax.errorbar(curve[x], curve["mean"], yerr=spread, fmt="none", ecolor=look["color"], capsize=3)
            else:
                ax.fill_between(curve[x], curve["mean"] - spread, curve["mean"] + spread, alpha=0.15,
                                color=look["color"])
            lengths.add(min(len(curve), 2))
        ax.set_title(f"batch {batch}")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_xlim(0, 1.04 * float(subset[x].max()))  # room for the last point's marker
        ax.xaxis.set_major_locator(MaxNLocator(steps=[1, 2, 2.5, 5, 10], integer=x == "epoch"))  # 0, 20, 40
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(batches):]:
        ax.set_visible(False)
    spread = {frozenset({1}): "error bars", frozenset({2}): "shaded"}.get(frozenset(lengths),
                                                                        "shaded (error bars at a lone point)")
    fig.suptitle(f"{title}\nmean over seeds, {spread}: ± 1 SD over seeds")
    fig.tight_layout()
    order = sorted(named, key=natural)
    fig.legend([named[n] for n in order], order, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small")
    return save(fig, path)


def accuracy_curves(epochs: pd.DataFrame, path: Path) -> Path:
    """Test accuracy vs epoch, one panel per batch size, mean +- SD over seeds."""
    return _per_batch_grid(epochs, "epoch", "test_acc", "test accuracy (%)", path, "Test accuracy by epoch")


def train_loss_curves(train_loss: pd.DataFrame, path: Path) -> Path:
    """Training loss vs epochs elapsed, one panel per batch size."""
    steps_per_epoch = (train_loss.groupby("run")["step"].transform("max")
                       / train_loss.groupby("run")["epoch"].transform("max"))
    curves = train_loss.assign(epochs_elapsed=(train_loss["step"] / steps_per_epoch).round(2))
    return _per_batch_grid(curves, "epochs_elapsed", "loss", "training loss", path, "Training loss")


def group_ablation(runs: pd.DataFrame, path: Path) -> Path:
    """Test accuracy of each group setting (LN ... IN, channels-per-group) at each batch size."""
    table = accuracy_table(runs)
    order = [n for n in GROUP_ORDER if n in set(table["norm"])]
    order += sorted(n for n in set(runs[runs["norm_name"] == "gn"]["norm"]) - set(order))
    table = table[table["norm"].isin(order)]
    batches = sorted(table["batch_size"].unique())
    fig, ax = plt.subplots(figsize=(1.1 * len(order) + 2, 4))
    width = 0.8 / len(batches)
    greys = plt.get_cmap("Greys")  # shades of grey for batch sizes: blue and orange mean BN and GN elsewhere
    for i, batch in enumerate(batches):
        rows = table[table["batch_size"] == batch].set_index("norm").reindex(order)
        positions = [k + (i - (len(batches) - 1) / 2) * width for k in range(len(order))]
        ax.bar(positions, rows["acc_mean"], width, yerr=rows["acc_std"], capsize=2, label=f"batch {batch}",
               color=greys(0.25 + 0.4 * i / max(1, len(batches) - 1)), edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(order)), order)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"GroupNorm group-count ablation\n{BARS}")
    ax.set_ylim(bottom=0)  # bars start at zero: a cut axis would exaggerate the gaps
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    return save(fig, path)


def statistics_curves(epochs: pd.DataFrame, path: Path) -> Path:
    """Test accuracy vs epoch of the runs evaluated three ways (normexp.train.bn_evaluation): running
    averages, precise population statistics and batch statistics of the same weights, one panel per
    batch size, mean +- SD over seeds."""
    runs = epochs.loc[epochs["test_acc_batch"].notna(), "run"].unique()
    carrying, controls = epochs[epochs["run"].isin(runs)], epochs[~epochs["run"].isin(runs)]
    curves = pd.concat([carrying.assign(norm=carrying["norm"] + f" {label}", accuracy=carrying[column])
                        for column, label, _ in EVALUATION_LOOKS if column in carrying]
                       + [controls.assign(accuracy=controls["test_acc"])])  # e.g. GN, the control: one evaluation
    shown = looks(list(controls["norm"]))
    for i, norm in enumerate(sorted(carrying["norm"].unique(), key=natural)):  # a marker per norm
        shown.update({f"{norm} {label}": {**look, "marker": MARKERS[i % len(MARKERS)]}
                      for _, label, look in EVALUATION_LOOKS})
    return _per_batch_grid(curves.dropna(subset=["accuracy"]), "epoch", "accuracy", "test accuracy (%)", path,
                           "The same weights evaluated with three kinds of BN statistics", shown)


def dodged(positions: Mapping[K, Sequence[float]], log: bool) -> dict[K, list[float]]:
    """Each series' x positions moved sideways where several series share a value, in the order of
    `positions`, left to right and centred on the value, so that no point hides another (a dodge):
    neighbours spaced by up to 15 % of the narrowest gap between values (in decades on a log axis),
    less where more series share it. Positions are finite numbers (positive on a log axis)."""
    scale = np.log10 if log else np.asarray
    values = sorted({v for xs in positions.values() for v in xs})
    gap = float(np.diff(scale(values)).min()) if len(values) > 1 else 1.0
    sharing = {v: [label for label, xs in positions.items() if v in xs] for v in values}
    out = {}
    for label, xs in positions.items():
        steps = [(sharing[v].index(label) - (len(sharing[v]) - 1) / 2) * gap * min(0.15, 0.6 / len(sharing[v]))
                 for v in xs]
        out[label] = [v * 10 ** step if log else v + step for v, step in zip(xs, steps)]
    return out
