"""The budget study behind `claim`: accuracy of BN and GN at the smallest and the reference batch
for each training budget, the gaps the verdict looks at, and the compute each budget cost.

Usage: python scripts/budget_study.py results/budget --also results/claim
(writes table.md, table.csv, budget.png in the first folder). `--also` adds the runs of another
folder that belong to the study's grid (its norms, batch sizes and seeds): the study's longest
budget is the `claim` budget, whose seed-0 runs at those batches are trained once, in results/claim.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from normexp.analysis.collect import load_runs  # noqa: E402
from normexp.analysis.plots import colour  # noqa: E402
from normexp.analysis.verdict import check_poolable  # noqa: E402
from normexp.cli.analyze import SWEPT  # noqa: E402
from normexp.criteria import load_criteria  # noqa: E402
from normexp.record import atomic  # noqa: E402


def budget_table(runs: pd.DataFrame, bn: str, gn: str) -> pd.DataFrame:
    """One row per budget (epochs; images: training images presented per run): mean accuracy (and seeds) per norm x batch,
    the gaps, and the compute minutes of that budget's runs (each run's share of its job)."""
    small, ref = min(runs["batch_size"]), max(runs["batch_size"])
    wanted = pd.MultiIndex.from_product([[bn, gn], [ref, small]])
    cells = runs.pivot_table(index="epochs", columns=["norm", "batch_size"], values="final_test_acc",
                             aggfunc=["mean", "count"])
    acc = cells["mean"].reindex(columns=wanted)  # a budget still training: NaN
    seeds = cells["count"].reindex(columns=wanted).fillna(0).astype(int)
    table = pd.DataFrame(index=acc.index)
    table["images per run"] = runs.groupby("epochs")["images"].max()  # up to a drop-last batch
    for norm, batch in wanted:
        table[f"{norm} {batch}"] = acc[(norm, batch)]
    table[f"{bn} drop {ref}->{small}"] = acc[(bn, ref)] - acc[(bn, small)]
    table[f"{gn} - {bn} at {small}"] = acc[(gn, small)] - acc[(bn, small)]
    table[f"{bn} - {gn} at {ref}"] = acc[(bn, ref)] - acc[(gn, ref)]
    table["seeds per cell"] = [", ".join(sorted({str(n) for n in row})) for row in seeds.to_numpy()]
    table["compute min"] = runs.groupby("epochs")["compute_seconds"].sum() / 60
    return table.reset_index().round(2)


def budget_figure(runs: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (norm, batch), rows in runs.sort_values("epochs").groupby(["norm", "batch_size"]):
        ax.plot(rows["images"] / 1e3, rows["final_test_acc"], marker="o", color=colour(norm),
                linestyle="-" if batch == runs["batch_size"].max() else "--", label=f"{norm}, {batch} per device")
    ax.set_xlabel("training images per run (thousands)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy by training budget")
    ax.grid(alpha=0.3)
    ax.legend()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--also", type=Path, action="append", default=[], help="another folder to take grid runs from")
    args = parser.parse_args()
    tables = [load_runs(folder) for folder in (args.results_dir, *args.also)]
    finished = tables[0].finished
    grid = finished[["norm", "batch_size", "seed"]].drop_duplicates()
    for extra in (t.finished.merge(grid, on=["norm", "batch_size", "seed"]) for t in tables[1:]):
        finished = pd.concat([finished, extra[~extra["run"].isin(finished["run"])]], ignore_index=True)
    epochs = pd.concat([t.epochs for t in tables], ignore_index=True).drop_duplicates(["run", "epoch"])
    seen = (epochs["images_per_s"] * epochs["train_seconds"]).groupby(epochs["run"]).sum().round()
    finished = finished.assign(images=finished["run"].map(seen))  # training images presented per run
    if finished.empty:
        print(f"no finished runs under {args.results_dir}", file=sys.stderr)
        return 1
    check_poolable(finished, (*SWEPT, "trainer.epochs"), cell=("norm", "batch_size", "epochs"))
    criteria, _ = load_criteria()
    table = budget_table(finished, criteria.bn, criteria.gn)
    atomic.write_text(args.results_dir / "table.csv", table.to_csv(index=False))
    atomic.write_text(args.results_dir / "table.md", table.to_markdown(index=False, floatfmt=".2f") + "\n")
    budget_figure(finished, args.results_dir / "budget.png")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
