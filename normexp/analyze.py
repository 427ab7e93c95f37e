"""`normexp-analyze RESULTS_DIR`: tables, figures and the claim verdict from run records.

Needs no training and takes seconds: it only reads the records below RESULTS_DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from normexp import atomic, plots
from normexp.analysis import Criteria, accuracy_table, convergence_table, describe_verdict, error_table, verdict
from normexp.store import load_runs


def _write_table(table: pd.DataFrame, directory: Path, name: str, index: bool = False) -> None:
    atomic.write_text(directory / f"{name}.csv", table.to_csv(index=index))
    atomic.write_text(directory / f"{name}.md", table.to_markdown(index=index, floatfmt=".2f") + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Criteria()
    parser = argparse.ArgumentParser(prog="normexp-analyze", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="folder whose subfolders hold run records")
    parser.add_argument("--out", type=Path, help="where tables/, figures/ and verdict.json go (default: RESULTS_DIR)")
    parser.add_argument("--bn", default=defaults.bn, help="norm tag of the baseline (default: %(default)s)")
    parser.add_argument("--gn", default=defaults.gn, help="norm tag of the challenger (default: %(default)s)")
    parser.add_argument("--min-bn-drop", type=float, default=defaults.min_bn_drop,
                        help="points BN must lose at the smallest batch vs its best (default: %(default)s)")
    parser.add_argument("--max-gn-range", type=float, default=defaults.max_gn_range,
                        help="most points GN may vary across batch sizes (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=defaults.alpha,
                        help="significance level of the one-sided Welch t-test (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"normexp-analyze: RESULTS_DIR {args.results_dir} is not a folder", file=sys.stderr)
        return 2
    out = args.out or args.results_dir
    tables = load_runs(args.results_dir)
    for _, run in tables.excluded.iterrows():
        print(f"excluded {run['run']}: {run['status']} - {run['reason']}")
    finished = tables.finished
    if finished.empty:
        print(f"normexp-analyze: no finished runs under {args.results_dir}", file=sys.stderr)
        return 1

    table_dir, figure_dir = out / "tables", out / "figures"
    _write_table(tables.runs.drop(columns=["path"]), table_dir, "runs")
    _write_table(accuracy_table(finished), table_dir, "accuracy")
    _write_table(error_table(finished, args.bn, args.gn), table_dir, "error_by_batch", index=True)
    _write_table(convergence_table(finished), table_dir, "convergence")

    finished_runs = set(finished["run"])
    epochs = tables.epochs[tables.epochs["run"].isin(finished_runs)]
    figures = [plots.error_vs_batch(finished, figure_dir / "error_vs_batch.png"),
               plots.accuracy_curves(epochs, figure_dir / "accuracy_by_epoch.png")]
    if not tables.train_loss.empty:
        losses = tables.train_loss[tables.train_loss["run"].isin(finished_runs)]
        figures.append(plots.train_loss_curves(losses, figure_dir / "train_loss.png"))
    if finished["norm_name"].isin(["gn", "ln", "in"]).sum() and finished["norm"].nunique() > 2:
        figures.append(plots.group_ablation(finished, figure_dir / "group_ablation.png"))

    criteria = Criteria(args.bn, args.gn, args.min_bn_drop, args.max_gn_range, args.alpha)
    result = verdict(finished, criteria)
    result["runs"] = {"finished": len(finished), "excluded": tables.excluded[["run", "status", "reason"]].to_dict("records")}
    atomic.write_json(out / "verdict.json", result)

    print(accuracy_table(finished).to_string(index=False, float_format="%.2f"))
    print(describe_verdict(result))
    print(f"tables: {table_dir}\nfigures: {', '.join(str(f) for f in figures)}\nverdict: {out / 'verdict.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
