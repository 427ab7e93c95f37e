"""The analysis of a run set: which tables, figures, statistics and verdicts it gets, written below
an output folder. `normexp-analyze` (normexp.cli.analyze) parses its arguments and calls `analyze`.

Every run set gets the runs, provenance, accuracy, fit, error-by-batch and convergence tables, the
accuracy figures and the claim verdict (one per value of further swept settings, `axes`). The statistics in
STATISTICS declare when they apply to a run set; adding one touches this wing only.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

import pandas as pd
import yaml

from normexp import record
from normexp.analysis import bn_decomposition as bd
from normexp.analysis import landscape, plots, setting_figures
from normexp.analysis.collect import RunTables
from normexp.analysis.formatting import is_p_column, with_p_text
from normexp.analysis.pooling import PoolingError, check_poolable, flat_settings, tag_norm_settings, with_axes
from normexp.analysis.provenance import provenance_table
from normexp.analysis.report import write_report
from normexp.analysis.tables import accuracy_table, convergence_table, error_table, fit_table, thresholds_from
from normexp.analysis.verdict import verdict
from normexp.criteria import DEFAULTS, RETIRED, Criteria, load_criteria
from normexp.files import atomic

SWEPT = tuple(record.SWEPT.values())  # config keys of the swept settings
SIGNIFICANT = ("lr",)  # table columns (or the last part of a dotted one) of settings never rounded to 2 decimals
Tables = dict[str, tuple[pd.DataFrame, str]]  # name -> (table, what it holds)


class AnalysisError(ValueError):
    """A run set or request the analysis refuses; the message says why and what to do."""


@dataclass(frozen=True)
class Request:
    """What to analyse and how: further settings the runs may vary in (`vary`), criteria overrides,
    further baselines (`versus`), convergence thresholds, and where the output goes."""

    out: Path
    source: str
    vary: Sequence[str] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    versus: Sequence[str] = ()
    thresholds: Optional[Sequence[float]] = None

    @property
    def axes(self) -> list[str]:
        """The varied settings that are not swept ones: table columns and verdict slices."""
        return [f for f in self.vary if f not in SWEPT]


@dataclass(frozen=True)
class RunSet:
    """The finished runs (with their axes' columns), their epochs, the criteria and the request."""

    finished: pd.DataFrame
    epochs: pd.DataFrame
    criteria: Criteria
    request: Request

    @property
    def axes(self) -> list[str]:
        return self.request.axes


@dataclass(frozen=True)
class Statistic:
    """Tables (and a figure) that a run set gets when `applies` says so."""

    applies: Callable[[RunSet], bool]
    tables: Callable[[RunSet], Tables]
    figure: Optional[Callable[[RunSet, Path], Path]] = None


def _versus_tables(runs: RunSet) -> Tables:
    finished, criteria = runs.finished, runs.criteria
    tables = {f"versus_{baseline}": (landscape.versus(finished, baseline, criteria.alpha),
                                     landscape.caption(landscape.versus, baseline))
              for baseline in sorted(({criteria.bn, criteria.gn} | set(runs.request.versus))
                                     & set(finished["norm"]))}
    tables["batch_change"] = (landscape.batch_change(finished, criteria.alpha),
                              landscape.caption(landscape.batch_change))
    return tables


def _group_tables(runs: RunSet) -> Tables:  # "flat" uses the verdict's parity margin, the same "close enough"
    table = landscape.group_shape(runs.finished, runs.criteria.alpha, runs.criteria.max_parity_gap)
    return {"group_shape": (table, landscape.caption(landscape.group_shape))}


def _statistics_tables(runs: RunSet) -> Tables:
    """BN's evaluations of the same weights (at the end and, precise against population, by epoch)
    and, where BN has the reference batch and smaller ones, the decomposition of its small-batch loss."""
    finished, criteria = runs.finished, runs.criteria
    bd.evaluated_alike(finished)
    tables = {"bn_statistics": (bd.statistics_table(finished),
                                cast(str, bd.statistics_table.__doc__).split("\n\n")[0])}
    by_epoch = bd.precise_by_epoch(runs.epochs, criteria.bn, criteria.alpha)
    if not by_epoch.empty:
        tables["precise_by_epoch"] = (by_epoch, cast(str, bd.precise_by_epoch.__doc__).split("\n\n")[0])
    bn_batches = set(finished.loc[finished["norm"] == criteria.bn, "batch_size"])
    if criteria.reference_batch in bn_batches and min(bn_batches) < criteria.reference_batch:
        frozen = sorted(n for n in finished["norm"].unique() if n.startswith(f"{criteria.bn}-frozen"))
        tables["bn_decomposition"] = (
            bd.decomposition(finished, criteria.bn, frozen[0] if len(frozen) == 1 else None,
                             criteria.reference_batch, criteria.alpha),
            cast(str, bd.decomposition.__doc__).split("\n\n")[0])
    return tables


def _paired_tables(runs: RunSet) -> Tables:
    [axis] = runs.axes
    return {f"paired_{axis.split('.')[-1]}": (landscape.paired_setting(runs.finished, axis, runs.criteria.alpha),
                                              landscape.caption(landscape.paired_setting))}


def _many_groupings(runs: RunSet) -> bool:
    return runs.finished[runs.finished["norm_name"].isin(["gn", "ln", "in"])]["norm"].nunique() > 2


STATISTICS = (  # in the order the report shows them
    Statistic(lambda r: not r.axes and (r.finished["norm"].nunique() > 2 or bool(r.request.versus)), _versus_tables),
    Statistic(lambda r: not r.axes and _many_groupings(r), _group_tables,
              lambda r, d: plots.group_ablation(r.finished, d / "group_ablation.png")),
    Statistic(lambda r: not r.axes and bd.carries_extra_evaluations(r.finished), _statistics_tables,
              lambda r, d: plots.statistics_curves(r.epochs, d / "statistics_by_epoch.png")),
    Statistic(lambda r: len(r.axes) == 1 and r.finished[r.axes[0]].nunique() == 2, _paired_tables),
)


@dataclass
class Outcome:
    """What `analyze` wrote: the accuracy table, the verdict(s), the figures and the report."""

    accuracy: pd.DataFrame
    result: dict[str, Any]
    table_dir: Path
    figures: list[Path]
    report: Path

    def slices(self) -> list[tuple[str, dict[str, Any]]]:
        """(where, verdict) for each verdict: one without axes, one per slice with them."""
        if "slices" not in self.result:
            return [("", self.result)]
        return [(", ".join(f"{k}={v}" for k, v in s["at"].items()), s) for s in self.result["slices"]]


def unknown_field(fields: Sequence[str], runs: pd.DataFrame) -> Optional[str]:
    """A line naming a --vary field that no run's identity has, with the nearest one that does."""
    known = set(SWEPT).union(*(flat_settings(identity) for identity in runs.get("identity", [])))
    groups = {key.rsplit(".", 1)[0] for key in known if "." in key}
    for name in fields:
        if name not in known and name not in groups:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            return (f"--vary {name} is not a setting of these runs"
                    f"{f' (nearest: {near[0]})' if near else ''}; nothing written")
    return None


def recorded_criteria(runs: pd.DataFrame, overridden: Collection[str] = ()) -> Optional[dict[str, Any]]:
    """The verdict criteria the runs' configs recorded; they must agree, except in the `overridden`
    keys (--set fixes those). Runs recorded before a criterion existed or after one was retired
    (criteria.RETIRED) agree when the rest does: each set is compared with today's defaults filled
    in and the retired keys left out."""
    defaults = yaml.safe_load(DEFAULTS.read_text())
    recorded = [{k: v for k, v in c.items() if k not in overridden} for c in runs["criteria"] if c]
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


def notes(tables: RunTables) -> list[str]:
    """Lines for the reader: runs left out and why, and evaluations that differ among the finished."""
    notes = [f"excluded {run['run']}: {run['status']} - {run['reason']}" for _, run in tables.excluded.iterrows()]
    finished = tables.finished
    if "evaluation" in finished and finished["evaluation"].nunique(dropna=False) > 1:
        counts = finished["evaluation"].fillna("not recorded").value_counts()
        notes.append("note: the runs carry different `evaluation` settings (" + "; ".join(
            f"{v}: {n} runs" for v, n in counts.items()) + "); the tables and the verdict use the running-average "
            "evaluation every run has, the BN statistics tables only runs evaluated alike")
    return notes


def prepare(tables: RunTables, request: Request) -> tuple[RunSet, dict[str, str]]:
    """The finished runs with their axes, checked poolable, and the criteria with their provenance;
    AnalysisError if they cannot be pooled, the criteria disagree, or a --versus norm is absent."""
    axes = request.axes
    try:
        finished = tag_norm_settings(with_axes(tables.finished, axes))
        check_poolable(finished, SWEPT + tuple(request.vary), cell=("norm", "batch_size", *axes))
        criteria, provenance = load_criteria(request.overrides, recorded_criteria(finished, request.overrides))
    except (PoolingError, ValueError) as error:
        raise AnalysisError(str(error)) from error
    if unknown := sorted(set(request.versus) - set(finished["norm"])):
        raise AnalysisError(f"--versus {', '.join(unknown)}: no finished runs of that norm here; "
                            f"allowed: {', '.join(sorted(set(finished['norm'])))}")
    names = set(finished["run"])
    epochs = tables.epochs[tables.epochs["run"].isin(names) & (tables.epochs["status"] == record.FINISHED)]
    by_run = setting_figures.with_axis_labels(finished, axes).set_index("run")["norm"]  # other settings apart
    return RunSet(finished, epochs.assign(norm=epochs["run"].map(by_run)), criteria, request), provenance


def verdicts(finished: pd.DataFrame, criteria: Criteria, axes: Sequence[str]) -> dict[str, Any]:
    """The claim verdict on the runs, or with further swept `axes`, one on each of their values
    ({"by": axes, "slices": [{"at": {axis: value}, ...verdict}]})."""
    if not axes:
        return verdict(finished, criteria)
    return {"by": list(axes), "slices": [{"at": dict(zip(axes, key if isinstance(key, tuple) else (key,))),
                                          **verdict(group, criteria)} for key, group in finished.groupby(list(axes))]}


def analyze(tables: RunTables, request: Request) -> Outcome:
    """Write tables/, figures/, verdict.json and report.html for the finished runs of `tables` below
    `request.out`; AnalysisError (nothing but the runs table written) if the set is refused."""
    table_dir, figure_dir = request.out / "tables", request.out / "figures"
    internal = ["path", "identity", "criteria"] + (["evaluation"] if tables.runs.get("evaluation") is not None
                                                   and tables.runs["evaluation"].isna().all() else [])
    write_table(tables.runs.drop(columns=internal, errors="ignore"), table_dir, "runs")
    write_table(provenance_table(tables.runs["path"]), table_dir, "provenance")
    runs, provenance = prepare(tables, request)
    finished, criteria, axes = runs.finished, runs.criteria, runs.axes
    accuracy, error = accuracy_table(finished, axes), error_table(finished, criteria, axes)
    write_table(accuracy, table_dir, "accuracy")
    write_table(fit_table(finished, axes), table_dir, "fit")
    write_table(error.reset_index() if axes else error, table_dir, "error_by_batch", index=not axes)
    convergence = convergence_table(finished, runs.epochs, request.thresholds or thresholds_from(finished), axes)
    write_table(convergence, table_dir, "convergence")
    figures = _figures(runs, tables.train_loss, figure_dir)
    statistics: Tables = {}
    for statistic in STATISTICS:
        if statistic.applies(runs):
            try:
                statistics.update(statistic.tables(runs))
            except ValueError as problem:  # e.g. BN statistics tables over runs evaluated differently
                raise AnalysisError(str(problem)) from problem
            if statistic.figure is not None:
                figures.append(statistic.figure(runs, figure_dir))
    for name, (table, _) in statistics.items():
        write_table(table, table_dir, name)
    result = verdicts(finished, criteria, axes)
    result["criteria_source"] = provenance
    result["runs"] = {"finished": len(finished),
                      "excluded": tables.excluded[["run", "status", "reason"]].to_dict("records")}
    atomic.write_json(request.out / "verdict.json", result)
    if axes:  # one verdict per value of the further axes: the report shows the tables, each verdict in verdict.json
        statistics["error_by_batch"] = (error.reset_index(), "test error (%) by batch size at each setting; "
                                                             "BN - GN in accuracy points, as in the verdict")
    report = write_report(request.out / "report.html", request.source, tables.runs, result=result,
                          error=None if axes else error, figures=figures, convergence=convergence,
                          landscape=statistics)
    return Outcome(accuracy, result, table_dir, figures, report)


def _figures(runs: RunSet, train_loss: pd.DataFrame, figure_dir: Path) -> list[Path]:
    """Error against batch size, accuracy by epoch, accuracy along each axis where a line (at one
    value of the other axes) has two points, and the training loss."""
    finished, axes = runs.finished, runs.axes
    error_path = figure_dir / "error_vs_batch.png"
    figures = [setting_figures.error_vs_batch(finished, axes, error_path) if axes
               else plots.error_vs_batch(finished, error_path),
               plots.accuracy_curves(runs.epochs, figure_dir / "accuracy_by_epoch.png")]
    for axis in axes:
        others = [other for other in axes if other != axis]
        if finished.groupby(["norm", "batch_size", *others])[axis].nunique().max() < 2:
            continue
        figures.append(setting_figures.accuracy_vs_axis(finished, axis, others,
                                                        figure_dir / f"accuracy_vs_{axis.split('.')[-1]}.png"))
    if not train_loss.empty:
        by_run = setting_figures.with_axis_labels(finished, axes).set_index("run")["norm"]
        losses = train_loss[train_loss["run"].isin(set(finished["run"]))]
        figures.append(plots.train_loss_curves(losses.assign(norm=losses["run"].map(by_run)),
                                               figure_dir / "train_loss.png"))
    return figures


def write_table(table: pd.DataFrame, directory: Path, name: str, index: bool = False) -> None:
    """CSV, and Markdown with numbers to 2 decimals, settings of SIGNIFICANT (e.g. an lr of 0.00625)
    to their significant digits, p-values (columns "p", "p_...") by `formatting.p_text` (never a p
    printed as 0.00) and a missing value as "-"."""
    atomic.write_text(directory / f"{name}.csv", table.to_csv(index=index))
    shown = with_p_text(table)
    shown = shown.astype(object).where(shown.notna(), None)  # tabulate writes None, not NaN, as missingval
    p_at = [i + index for i, c in enumerate(table.columns) if is_p_column(c) and not table.empty]
    formats = [".2f"] * index + ["g" if str(c).split(".")[-1] in SIGNIFICANT else ".2f" for c in table.columns]
    atomic.write_text(directory / f"{name}.md",
                      shown.to_markdown(index=index, floatfmt=formats, disable_numparse=p_at or False,
                                        missingval="-") + "\n")
