"""Numbers and p-values as text, one rule for the tables, the report and the verdict's words:
numbers to 2 decimals unless asked otherwise, "n/a" where a value is missing, and p-values to four
decimals or two significant digits (never a p printed as 0.0000)."""

from __future__ import annotations

import pandas as pd


def num(value: float | None, spec: str = ".2f") -> str:
    """`value` formatted, or "n/a" where the verdict could not compute it."""
    return "n/a" if value is None else format(value, spec)


def mean_sd(values: pd.Series) -> str:
    """"mean ± SD" of the seeds' values to 2 decimals; the one value alone (no SD of a single run)."""
    return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else f"{values.mean():.2f}"


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
