"""`normexp-analyze RESULTS_DIR [RESULTS_DIR ...]`: tables, figures and the claim verdict from run records.

Needs no training and takes seconds: it only reads the records below the RESULTS_DIRs (several
pool their runs, e.g. two seed sets, and then need `--out`). It refuses to
pool runs that differ in anything but the swept fields (norm, batch size, devices, seed) or on
other data, and repeats of one run; the verdict's criteria come from the runs' recorded config
(fixed when the sweep was launched; conf/verdict/default.yaml), and `--set KEY=VALUE` overrides
are reported as such. What a run set gets is decided in normexp.analysis.pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from normexp import record
from normexp.config import unwritable

SWEPT = tuple(record.SWEPT.values())


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


def _refused(problem: object, code: int = 2) -> int:
    print(f"normexp-analyze: {problem}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for results_dir in args.results_dirs:
        if not results_dir.is_dir():
            return _refused(f"RESULTS_DIR {results_dir} is not a folder")
    if len(args.results_dirs) > 1 and (args.out is None or args.out.resolve() in
                                       {d.resolve() for d in args.results_dirs}):
        return _refused("several RESULTS_DIRs need an --out of their own (not one of them: the pooled "
                        "analysis would replace that set's own)")
    if problem := unwritable(str(args.out or args.results_dirs[0]), "--out" if args.out else "RESULTS_DIR"):
        return _refused(f"{problem}; nothing written (give an --out you can write)")
    from normexp.analysis import pipeline
    from normexp.analysis.collect import load_runs
    from normexp.analysis.verdict_text import describe_verdict

    source = ", ".join(map(str, args.results_dirs))
    try:
        tables = load_runs(*args.results_dirs)
        overrides = _overrides(args.overrides)
    except (FileNotFoundError, ValueError) as error:  # a shared-runs list naming a run that is not there
        return _refused(error)
    if problem := pipeline.unknown_field(args.vary, tables.runs):
        return _refused(problem)
    for line in pipeline.notes(tables):
        print(line)
    if tables.finished.empty:
        statuses = tables.runs["status"].value_counts().to_dict() if len(tables.runs) else {}
        return _refused(f"no finished runs under {source} ({len(tables.runs)} run folder(s)"
                        f"{': ' + ', '.join(f'{n} {s}' for s, n in statuses.items()) if statuses else ''}); "
                        f"nothing written", code=1)
    request = pipeline.Request(out=args.out or args.results_dirs[0], source=source, vary=args.vary,
                               overrides=overrides, versus=args.versus, thresholds=args.thresholds)
    try:
        outcome = pipeline.analyze(tables, request)
    except pipeline.AnalysisError as error:
        return _refused(error)
    except OSError as error:  # the folder became unwritable, or the disk filled, while writing
        return _refused(f"cannot write {error.filename or request.out}: {error.strerror or error}")
    print(outcome.accuracy.to_string(index=False, float_format="%.2f"))
    for at, sliced in outcome.slices():
        print((f"at {at}:\n" if at else "") + describe_verdict(sliced))
    print(f"tables: {outcome.table_dir}\nfigures: {', '.join(str(f) for f in outcome.figures)}\n"
          f"verdict: {request.out / 'verdict.json'}\nreport: {outcome.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
