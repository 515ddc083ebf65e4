"""Plain Markdown and CSV tables (blank cells for missing values)."""

import csv
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right_aligned: Collection[str] = ()) -> str:
    """A GitHub-flavoured Markdown table with padded columns, readable in a terminal as well; ``None`` prints as
    an empty cell, and the columns named in ``right_aligned`` are right-aligned (``---:``) when rendered."""
    cells = [[str(name) for name in header]] + [["" if cell is None else str(cell) for cell in row] for row in rows]
    rule = [("---:" if name in right_aligned else "---") for name in header]
    widths = [max(len(rule[i]), *(len(row[i]) for row in cells)) for i in range(len(header))]
    lines = [cells[0], rule, *cells[1:]]
    return "\n".join("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |"
                     for line in lines) + "\n"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(["" if cell is None else cell for cell in row] for row in rows)
