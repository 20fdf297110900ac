"""The Markdown tables of the experiments' ``results.md`` files."""

from __future__ import annotations

from typing import Callable, Sequence


def cell(value, float_format: str = "{:.3f}") -> str:
    """One table cell: ``-`` for None, floats with ``float_format``, anything else as ``str``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], float_format: str = "{:.3f}",
                   formats: dict[int, Callable] | None = None) -> list[str]:
    """The lines of a Markdown table.

    Args:
      header: the column titles.
      rows: one sequence of values per row, as long as ``header``.
      float_format: how floats are written (``cell``).
      formats: per column index, a function writing that column's value instead.

    Returns:
      The header line, the separator line and one line per row.

    Raises:
      ValueError: a row whose length differs from the header's.
    """
    formats = formats or {}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under {len(header)} columns: {row!r}")
        lines.append("| " + " | ".join(formats[i](v) if i in formats else cell(v, float_format)
                                       for i, v in enumerate(row)) + " |")
    return lines
