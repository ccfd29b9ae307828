"""Tables shared by the analysis modules: markdown table lines, CSV files, numbers as 'mean +- half'."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def spread(
    mean: float | None, half: float | None, fmt: str, scale: float = 1, half_fmt: str = "", end: str = ""
) -> str:
    """'mean +- half' (a std or an interval's half-width; the mean alone without one), both times `scale`
    in `fmt` (`half_fmt` for the half when given), then `end`; '-' without a mean."""
    if mean is None:
        return "-"
    text = fmt.format(scale * mean)
    if half is not None:
        text += " +- " + (half_fmt or fmt).format(scale * half)
    return text + end


def markdown_table(columns: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table: the header, its rule and one line per row of cells."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def csv_cell(value: Any) -> Any:
    """None as an empty cell, a list (per seed) ';'-joined with empty items for its Nones."""
    if isinstance(value, list):
        return ";".join("" if v is None else str(v) for v in value)
    return "" if value is None else value


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """`columns` of each row (a missing key or None is an empty cell, a list ';'-joined)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([csv_cell(row.get(key)) for key in columns] for row in rows)
    return path
