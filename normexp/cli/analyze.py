"""`normexp-analyze RESULTS_DIR [RESULTS_DIR ...]`: tables, figures and the claim verdict from run records.

Needs no training and takes seconds: it only reads the records below the RESULTS_DIRs (several
pool their runs, e.g. two seed sets, and then need `--out`). It refuses to
pool runs that differ in anything but the swept fields (norm, batch size, devices, seed) or on
other data, and repeats of one run; the verdict's criteria come from the runs' recorded config
(fixed when the sweep was launched; conf/verdict/default.yaml), and `--set KEY=VALUE` overrides
are reported as such.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from normexp import record
from normexp.record import atomic

SWEPT = ("norm", "data.batch_size", "data.devices", "seed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="normexp-analyze", description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", type=Path, nargs="+", metavar="RESULTS_DIR",
                        help="folder whose subfolders hold run records; several are pooled")
    parser.add_argument("--out", type=Path,
                        help="where tables/, figures/ and verdict.json go "
                             "(default: the RESULTS_DIR when only one is given)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a verdict criterion (see conf/verdict/default.yaml), e.g. --set alpha=0.01")
    parser.add_argument("--vary", action="append", default=[], metavar="FIELD",
                        help=f"a further setting the runs may differ in (swept: {', '.join(SWEPT)})")
    parser.add_argument("--versus", action="append", default=[], metavar="NORM",
                        help="a further baseline for the versus_* tables, by its tag (e.g. frn): every other norm "
                             "minus it at each batch size, as against BN and GN")
    parser.add_argument("--thresholds", type=float, nargs="+",
                        help="accuracy thresholds for the convergence table (default: the 4 highest multiples of 10 "
                             "that the best run reaches; thresholds no run reaches are left out)")
    return parser.parse_args(argv)


def _overrides(pairs: list[str]) -> dict:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r} is invalid: use KEY=VALUE")
        parsed[key] = yaml.safe_load(value)
    return parsed


def _unknown_fields(fields: list[str], runs) -> str | None:
    """A line naming a --vary field that no run's identity has, with the nearest one that does."""
    import difflib

    from normexp.analysis.verdict import flat_settings

    known = set(SWEPT).union(*(flat_settings(identity) for identity in runs.get("identity", [])))
    groups = {key.rsplit(".", 1)[0] for key in known if "." in key}
    for field in fields:
        if field not in known and field not in groups:
            near = difflib.get_close_matches(field, sorted(known), n=1)
            return (f"--vary {field} is not a setting of these runs"
                    f"{f' (nearest: {near[0]})' if near else ''}; nothing written")
    return None


def _recorded_criteria(runs) -> dict | None:
    """The verdict criteria the runs' configs recorded; they must agree. Runs recorded before a
    criterion existed or after one was retired (criteria.RETIRED) agree when the rest does: each set
    is compared with today's defaults filled in and the retired keys left out."""
    from normexp.criteria import DEFAULTS, RETIRED

    defaults = yaml.safe_load(DEFAULTS.read_text())
    recorded = [c for c in runs["criteria"] if c]
    current = {yaml.safe_dump({**defaults, **{k: v for k, v in c.items() if k not in RETIRED}}, sort_keys=True)
               for c in recorded}
    if len(current) > 1:
        raise ValueError("the runs recorded different verdict criteria (see each config.yaml's `verdict`); "
                         "analyze them separately or fix one set with --set")
    if not recorded:
        return None
    agreed, named = yaml.safe_load(current.pop()), {k for c in recorded for k in c}
    return ({k: v for k, v in agreed.items() if k in named}
            | {k: v for c in recorded for k, v in c.items() if k in RETIRED})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for results_dir in args.results_dirs:
        if not results_dir.is_dir():
            print(f"normexp-analyze: RESULTS_DIR {results_dir} is not a folder", file=sys.stderr)
            return 2
    if len(args.results_dirs) > 1 and (args.out is None or args.out.resolve() in
                                       {d.resolve() for d in args.results_dirs}):
        print("normexp-analyze: several RESULTS_DIRs need an --out of their own (not one of them: the pooled "
              "analysis would replace that set's own)", file=sys.stderr)
        return 2
    from normexp.analysis import landscape, plots
    from normexp.analysis.bn_decomposition import carries_extra_evaluations
    from normexp.analysis.collect import load_runs
    from normexp.analysis.tables import accuracy_table, convergence_table, error_table, fit_table, thresholds_from
    from normexp.analysis.verdict import PoolingError, check_poolable, tag_norm_settings, with_axes
    from normexp.analysis.verdict_text import describe_verdict
    from normexp.criteria import load_criteria

    out = args.out or args.results_dirs[0]
    source = ", ".join(map(str, args.results_dirs))
    table_dir, figure_dir = out / "tables", out / "figures"
    try:
        tables = load_runs(*args.results_dirs)
    except FileNotFoundError as error:  # a shared-runs list naming a run that is not there
        print(f"normexp-analyze: {error}", file=sys.stderr)
        return 2
    if problem := _unknown_fields(args.vary, tables.runs):
        print(f"normexp-analyze: {problem}", file=sys.stderr)
        return 2
    for _, run in tables.excluded.iterrows():
        print(f"excluded {run['run']}: {run['status']} - {run['reason']}")
    finished = tables.finished
    if "evaluation" in finished and finished["evaluation"].nunique(dropna=False) > 1:
        counts = finished["evaluation"].fillna("not recorded").value_counts()
        print("note: the runs carry different `evaluation` settings (" + "; ".join(f"{v}: {n} runs" for v, n in
              counts.items()) + "); the tables and the verdict use the running-average evaluation every run has, "
              "the BN statistics tables only runs evaluated alike")
    if finished.empty:
        statuses = tables.runs["status"].value_counts().to_dict() if len(tables.runs) else {}
        print(f"normexp-analyze: no finished runs under {source} ({len(tables.runs)} run folder(s)"
              f"{': ' + ', '.join(f'{n} {s}' for s, n in statuses.items()) if statuses else ''}); nothing written",
              file=sys.stderr)
        return 1
    internal = ["path", "identity", "criteria"] + (["evaluation"] if tables.runs.get("evaluation") is not None
                                                   and tables.runs["evaluation"].isna().all() else [])
    _write_table(tables.runs.drop(columns=internal, errors="ignore"), table_dir, "runs")
    axes = [field for field in args.vary if field not in SWEPT]  # further swept settings: table columns
    try:
        finished = tag_norm_settings(with_axes(finished, axes))
        check_poolable(finished, SWEPT + tuple(args.vary), cell=("norm", "batch_size", *axes))
        criteria, provenance = load_criteria(_overrides(args.overrides), _recorded_criteria(finished))
    except (PoolingError, ValueError) as error:
        print(f"normexp-analyze: {error}", file=sys.stderr)
        return 2
    if unknown := sorted(set(args.versus) - set(finished["norm"])):
        print(f"normexp-analyze: --versus {', '.join(unknown)}: no finished runs of that norm here; "
              f"allowed: {', '.join(sorted(set(finished['norm'])))}", file=sys.stderr)
        return 2

    accuracy, error = accuracy_table(finished, axes), error_table(finished, criteria, axes)
    _write_table(accuracy, table_dir, "accuracy")
    _write_table(fit_table(finished, axes), table_dir, "fit")
    _write_table(error.reset_index() if axes else error, table_dir, "error_by_batch", index=not axes)
    finished_runs = set(finished["run"])
    epochs = tables.epochs[tables.epochs["run"].isin(finished_runs) & (tables.epochs["status"] == record.FINISHED)]
    convergence = convergence_table(finished, epochs, args.thresholds or thresholds_from(finished), axes)
    _write_table(convergence, table_dir, "convergence")
    labelled = plots.with_axis_labels(finished, axes)  # figures keep runs of other settings apart
    by_run = labelled.set_index("run")["norm"]
    epochs_shown = epochs.assign(norm=epochs["run"].map(by_run))
    figures = [plots.error_vs_batch(labelled, figure_dir / "error_vs_batch.png"),
               plots.accuracy_curves(epochs_shown, figure_dir / "accuracy_by_epoch.png")]
    figures += [plots.accuracy_vs_axis(finished, axis, figure_dir / f"accuracy_vs_{axis.split('.')[-1]}.png")
                for axis in axes]
    if not tables.train_loss.empty:
        losses = tables.train_loss[tables.train_loss["run"].isin(finished_runs)]
        figures.append(plots.train_loss_curves(losses.assign(norm=losses["run"].map(by_run)),
                                               figure_dir / "train_loss.png"))
    landscape_tables = {}  # name -> (table, what it holds); these compare norm x batch cells: no further axes
    if not axes and (finished["norm"].nunique() > 2 or args.versus):  # each norm against BN, GN (and --versus)
        for baseline in sorted(({criteria.bn, criteria.gn} | set(args.versus)) & set(finished["norm"])):
            landscape_tables[f"versus_{baseline}"] = (landscape.versus(finished, baseline, criteria.alpha),
                                                      landscape.caption(landscape.versus, baseline))
        landscape_tables["batch_change"] = (landscape.batch_change(finished, criteria.alpha),
                                            landscape.caption(landscape.batch_change))
    if not axes and finished[finished["norm_name"].isin(["gn", "ln", "in"])]["norm"].nunique() > 2:
        figures.append(plots.group_ablation(finished, figure_dir / "group_ablation.png"))
        # "flat" uses the verdict's parity margin: the same "close enough" as BN vs GN at the reference batch
        landscape_tables["group_shape"] = (landscape.group_shape(finished, criteria.alpha, criteria.max_parity_gap),
                                           landscape.caption(landscape.group_shape))
    if not axes and carries_extra_evaluations(finished):
        try:  # BN's three evaluations and FrozenBN (normexp.analysis.bn_decomposition)
            landscape_tables.update(_statistics_tables(finished, epochs_shown, criteria))
        except ValueError as error:
            print(f"normexp-analyze: {error}", file=sys.stderr)
            return 2
        figures.append(plots.statistics_curves(epochs_shown, figure_dir / "statistics_by_epoch.png"))
    if len(axes) == 1 and finished[axes[0]].nunique() == 2:  # one setting at two values: their paired difference
        landscape_tables[f"paired_{axes[0].split('.')[-1]}"] = (landscape.paired_setting(finished, axes[0],
                                                                                          criteria.alpha),
                                                                 landscape.caption(landscape.paired_setting))
    for name, (table, _) in landscape_tables.items():
        _write_table(table, table_dir, name)

    result = _verdicts(finished, criteria, axes)
    result["criteria_source"] = provenance
    result["runs"] = {"finished": len(finished),
                      "excluded": tables.excluded[["run", "status", "reason"]].to_dict("records")}
    atomic.write_json(out / "verdict.json", result)

    print(accuracy.to_string(index=False, float_format="%.2f"))
    for at, sliced in _slices(result):
        print((f"at {at}:\n" if at else "") + describe_verdict(sliced))
    print(f"tables: {table_dir}\nfigures: {', '.join(str(f) for f in figures)}\nverdict: {out / 'verdict.json'}")
    from normexp.analysis.report import write_report
    if axes:  # one verdict per value of the further axes: the report shows the tables, each verdict in verdict.json
        landscape_tables["error_by_batch"] = (error.reset_index(), "test error (%) by batch size at each setting")
    report = write_report(out / "report.html", source, tables.runs, result=result,
                          error=None if axes else error, figures=figures, convergence=convergence,
                          landscape=landscape_tables)
    print(f"report: {report}")
    return 0


def _verdicts(finished, criteria, axes: list[str]) -> dict:
    """The claim verdict on the runs, or with further swept `axes`, one on each of their values
    ({"by": axes, "slices": [{"at": {axis: value}, ...verdict}]})."""
    from normexp.analysis.verdict import verdict

    if not axes:
        return verdict(finished, criteria)
    return {"by": axes, "slices": [{"at": dict(zip(axes, key if isinstance(key, tuple) else (key,))),
                                    **verdict(group, criteria)} for key, group in finished.groupby(axes)]}


def _slices(result: dict) -> list[tuple[str, dict]]:
    """(where, verdict) for each verdict in `result`: one without axes, one per slice with them."""
    if "slices" not in result:
        return [("", result)]
    return [(", ".join(f"{k}={v}" for k, v in s["at"].items()), s) for s in result["slices"]]


def _statistics_tables(finished, epochs, criteria) -> dict:
    """The tables of BN's evaluations of the same weights (at the end and, precise against
    population, by epoch) and, where BN has the reference batch and smaller ones, the decomposition
    of its small-batch loss (name -> (table, what it holds))."""
    from normexp.analysis import bn_decomposition as bd

    bd.evaluated_alike(finished)
    tables = {"bn_statistics": (bd.statistics_table(finished), bd.statistics_table.__doc__.split("\n\n")[0])}
    by_epoch = bd.precise_by_epoch(epochs, criteria.bn, criteria.alpha)
    if not by_epoch.empty:
        tables["precise_by_epoch"] = (by_epoch, bd.precise_by_epoch.__doc__.split("\n\n")[0])
    bn_batches = set(finished.loc[finished["norm"] == criteria.bn, "batch_size"])
    if criteria.reference_batch in bn_batches and min(bn_batches) < criteria.reference_batch:
        frozen = sorted(n for n in finished["norm"].unique() if n.startswith(f"{criteria.bn}-frozen"))
        tables["bn_decomposition"] = (
            bd.decomposition(finished, criteria.bn, frozen[0] if len(frozen) == 1 else None,
                             criteria.reference_batch, criteria.alpha),
            bd.decomposition.__doc__.split("\n\n")[0])
    return tables


def _write_table(table, directory: Path, name: str, index: bool = False) -> None:
    """CSV, and Markdown with numbers to 2 decimals and p-values (columns "p", "p_...") by the verdict
    text's rule (never a p printed as 0.00)."""
    from normexp.analysis.verdict_text import is_p_column, with_p_text
    atomic.write_text(directory / f"{name}.csv", table.to_csv(index=index))
    shown = with_p_text(table)
    p_at = [i + index for i, c in enumerate(table.columns)
            if is_p_column(c) and not table.empty]  # tabulate must not reformat them
    atomic.write_text(directory / f"{name}.md",
                      shown.to_markdown(index=index, floatfmt=".2f", disable_numparse=p_at or False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
