"""The experiments' Markdown tables."""

import pytest

from experiments.tables import markdown_table


def test_markdown_table_cells_and_errors():
    lines = markdown_table(["method", "auc", "pointing", "n"], [["rise", 61.234, None, 3], ["lime", 0.5, 0.25, 4]],
                           formats={1: "{:.1f}".format})
    assert lines == ["| method | auc | pointing | n |", "|---|---|---|---|",
                     "| rise | 61.2 | - | 3 |", "| lime | 0.5 | 0.250 | 4 |"]
    with pytest.raises(ValueError, match="a row of 2 cells under 4 columns"):
        markdown_table(["method", "auc", "pointing", "n"], [["rise", 1.0]])
