"""`report.html`: one self-contained page per sweep (the verdict with its statistics and criteria, the
headline error table beside published numbers, for sweeps of many norms their comparison tables, every
figure as a data URI, the convergence table and the runs), written by `normexp-analyze`. Plain HTML
and inline CSS, no JavaScript, so the file opens offline and can be mailed."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from normexp.analysis.formatting import is_p_column, p_text, with_p_text
from normexp.analysis.tables import gap_label
from normexp.analysis.verdict import PARTS
from normexp.analysis.verdict_text import budget_text, describe_verdict, overall, part_text
from normexp.files import atomic

# Published test error (%) by batch size, shown beside this sweep's numbers (the GN paper's batch is
# images per GPU; BeFranke/GroupNorm's is images per step on one device).
REFERENCE_BATCHES = (32, 16, 8, 4, 2)
REFERENCES: dict[str, tuple[str, dict[str, tuple[float, ...]]]] = {
    "GN paper (ImageNet)": (
        "Wu & He, Group Normalization (ECCV 2018), Table 2 / Figure 1: ResNet-50, ImageNet top-1 validation error",
        {"BN": (23.6, 23.7, 24.8, 27.3, 34.7), "GN": (24.1, 24.2, 24.0, 24.2, 24.1)}),
    "BeFranke/GroupNorm (CIFAR-10)": (
        "BeFranke/GroupNorm on GitHub (TensorFlow, ResNet-20 width 16, GN with G=8, 100 epochs, 5 seeds; one "
        "device, N images per step at LR 0.1 x N/32, crops padded with the mean colour): error = 100 - its accuracy",
        {"BN": tuple(round(100 - a, 1) for a in (86.4, 86.4, 86.1, 84.8, 80.3)),
         "GN": tuple(round(100 - a, 1) for a in (86.0, 85.7, 85.8, 86.0, 85.8))}),
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child, tbody th { text-align: left; }
table.text td, table.text th, table.runs td:nth-child(-n+3),
table.runs th:nth-child(-n+3) { text-align: left; } .wide { overflow-x: auto; }
pre { background: #f6f6f6; padding: 0.8em; font-size: 0.9em; white-space: pre-wrap; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.4em 0.8em; display: inline-block; color: #fff; }
.holds { background: #2e7d32; } .fails { background: #c62828; } .undecided { background: #757575; }
.verdict.optional { font-size: 1em; opacity: 0.75; }
.checks { display: flex; flex-wrap: wrap; gap: 0 1.5em; } .muted { color: #666; font-size: 0.9em; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
"""


def _table(frame: pd.DataFrame, index: bool = False, classes: str = "") -> str:
    """A DataFrame as an HTML table (headers may wrap at underscores); numbers to 2 decimals, p-values
    by formatting.p_text's rule; missing values as an en dash."""
    frame = with_p_text(frame).rename(columns=lambda c: str(c).replace("_", " "))
    return ("<div class='wide'>" + frame.to_html(index=index, border=0, na_rep="–", classes=classes or None,
                                                 float_format=lambda v: f"{v:.2f}") + "</div>")


def _value(value: Any) -> str:
    """A statistic as text: 4 significant digits, yes/no for booleans, "n/a" for None."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items())
    return "n/a" if value is None else str(value)


def _verdict(result: Mapping[str, Any] | None) -> str:
    """Overall outcome, the verdict's text, one table of statistics per check, and the criteria;
    for a run set analysed along further settings (--vary), one such verdict per value."""
    if result is None:
        return "<p><span class='verdict undecided'>NO STATISTICS</span></p><p>No finished runs.</p>"
    if "slices" in result:
        return "\n".join(f"<h3>At {html.escape(', '.join(f'{k}={v}' for k, v in piece['at'].items()))}</h3>"
                         + _verdict({**piece, "criteria_source": result.get("criteria_source", {})})
                         for piece in result["slices"])
    c = result["criteria"]
    badges = [_badge(f"{overall(result)} ({budget_text(result)})", result["undecided"], result["holds"])]
    badges += [_badge(part_text(result, part), state["undecided"], state["holds"], state["required"])
               for part, state in ((part, result["parts"][part]) for part in PARTS)]
    parts = [f"<p>Claim: {html.escape(c['gn'])} holds its accuracy at batch sizes where {html.escape(c['bn'])} "
             f"degrades (small-batch half), and is about as accurate as {html.escape(c['bn'])} at the reference "
             f"batch (parity).</p><p>{' '.join(badges)}</p>",
             f"<pre>{html.escape(describe_verdict(result))}</pre>", "<div class='checks'>"]
    for name, check in result["checks"].items():
        rows = pd.DataFrame({"statistic": list(check),
                             "value": [p_text(v) if is_p_column(k) else _value(v) for k, v in check.items()]})
        parts.append(f"<div><h3>{html.escape(name.replace('_', ' '))}</h3>{_table(rows, classes='text')}</div>")
    sources = result.get("criteria_source", {})
    criteria = pd.DataFrame({"criterion": list(c), "value": [_value(v) for v in c.values()],
                             "from": [sources.get(k, "?") for k in c]})
    parts.append(f"</div><h3>Criteria</h3>{_table(criteria, classes='text')}<p class='muted'>from: default = "
                 "conf/verdict/default.yaml, recorded = the runs' config.yaml, override = --set.</p>")
    return "\n".join(parts)


def _badge(text: str, undecided: bool, holds: bool | None, required: bool = True) -> str:
    """An outcome badge: green holds, red fails, grey undecided or not assessed (a part that is not
    required, which is also drawn smaller)."""
    kind = "undecided" if undecided or holds is None else ("holds" if holds else "fails")
    return f"<span class='verdict {kind}{'' if required else ' optional'}'>{html.escape(text)}</span>"


def _headline(error: pd.DataFrame | None, criteria: Mapping[str, Any] | None) -> str:
    """This sweep's BN and GN error by batch size and BN - GN in accuracy points (the verdict's sign),
    and the reference rows, in one table."""
    rows = {}
    if error is not None and criteria is not None:
        bn, gn = criteria["bn"], criteria["gn"]
        for label in (bn, gn, gap_label(bn, gn)):
            if label in error.index:
                rows["this sweep", label] = {int(col.split()[-1]): v for col, v in error.loc[label].items()}
    for source, (_, values) in REFERENCES.items():
        for norm, errors in values.items():
            rows[source, norm] = dict(zip(REFERENCE_BATCHES, errors))
        rows[source, gap_label("BN", "GN")] = {b: round(y - x, 1) for b, x, y in
                                               zip(REFERENCE_BATCHES, values["BN"], values["GN"])}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table[sorted(table.columns, reverse=True)].rename(columns=lambda b: f"batch {b}")
    notes = "".join(f"<li>{html.escape(source)}: {html.escape(text)}</li>" for source, (text, _) in REFERENCES.items())
    return (f"{_table(table, index=True)}<p class='muted'>Test error (%), except the BN - GN rows: BN's accuracy "
            f"minus GN's in points (above 0: BN ahead, as in the verdict); this sweep: mean over finished seeds "
            f"(batch = images per device). The references use other models and data: compare how error changes "
            f"as the batch shrinks, not its level.</p><ul class='muted'>{notes}</ul>")


def _figures(figures: Sequence[Path]) -> str:
    """Each PNG inline as a base64 data URI, captioned with its file name."""
    if not figures:
        return "<p>No figures.</p>"
    return "\n".join(
        f"<figure><img src=\"data:image/png;base64,{base64.b64encode(Path(f).read_bytes()).decode('ascii')}\" "
        f"alt=\"{html.escape(Path(f).stem)}\"><figcaption class='muted'>figures/{html.escape(Path(f).name)}"
        "</figcaption></figure>" for f in figures)


def _landscape(tables: Mapping[str, tuple[pd.DataFrame, str]]) -> str:
    """The many-norm tables, each under its file name with what it holds."""
    return "\n".join(
        f"<h3>tables/{html.escape(name)}</h3><p class='muted'>{html.escape(caption)}</p>"
        + (_table(table) if len(table) else "<p>No cells with 2 or more seeds on both sides.</p>")
        for name, (table, caption) in tables.items())


def _runs(runs: pd.DataFrame) -> str:
    """Status counts, the excluded runs with their reasons, then every run."""
    if runs.empty:
        return "<p>No run folders.</p>"
    counts = ", ".join(f"{n} {html.escape(str(s))}" for s, n in runs["status"].value_counts().items())
    excluded = runs[runs["status"] != "finished"][["run", "status", "reason"]]
    columns = [c for c in ("run", "norm", "status", "batch_size", "devices", "seed", "epochs_done",
                           "final_test_acc", "best_test_acc", "compute_seconds") if c in runs]
    listed = runs[columns].sort_values([c for c in ("norm", "batch_size", "seed") if c in runs])
    return (f"<p>{len(runs)} runs: {counts}. Only finished runs enter the statistics.</p>"
            + (f"<h3>Excluded</h3>{_table(excluded, classes='text')}" if len(excluded) else "<p>No runs excluded.</p>")
            + f"<h3>All runs</h3>{_table(listed, classes='runs')}")


def render(source: str | Path, runs: pd.DataFrame, result: Mapping[str, Any] | None = None,
           error: pd.DataFrame | None = None, convergence: pd.DataFrame | None = None,
           figures: Sequence[Path] = (), landscape: Mapping[str, tuple[pd.DataFrame, str]] | None = None) -> str:
    """The report page; without `result` (no finished runs) it holds only the runs. `landscape`
    (sweeps of many norms: name -> (table, what it holds)) adds a section with those tables."""
    sections = [
        ("verdict", "Verdict", _verdict(result)),
        ("headline", "Test error by batch size", _headline(error, result.get("criteria") if result else None)),
        *([("landscape", "Every norm", _landscape(landscape))] if landscape else []),
        ("figures", "Figures", _figures(figures)),
        ("convergence", "Convergence",
         "<p>No finished runs.</p>" if convergence is None else
         f"{_table(convergence)}<p class='muted'>Mean epochs to reach each test accuracy (over the seeds that "
         "reached it; 'reached N' counts them) and final training loss and accuracy.</p>"),
        ("runs", "Runs", _runs(runs)),
    ]
    contents = " · ".join(f"<a href='#{key}'>{title}</a>" for key, title, _ in sections)
    body = "\n".join(f"<h2 id='{key}'>{title}</h2>\n{text}" for key, title, text in sections)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>normexp report: "
            f"{html.escape(str(source))}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>BatchNorm vs GroupNorm: sweep report</h1><p class='muted'>{html.escape(str(source))} · "
            f"written by normexp-analyze (the same records give the same page)</p><p>{contents}</p>\n{body}\n"
            "</body></html>\n")


def write_report(path: Path, source: str | Path, runs: pd.DataFrame, **sections: Any) -> Path:
    """Render the report (see `render`) to `path` atomically; returns `path`."""
    atomic.write_text(path, render(source, runs, **sections))
    return path
