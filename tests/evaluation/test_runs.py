"""`padim evaluate` and `padim benchmark` as library calls: their tables and the JSON + Markdown pairs they write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from padim.errors import PadimError
from padim.evaluation.paper_tables import CategoryResult
from padim.evaluation.runs import evaluation_markdown, progress_line, write_tables


def test_evaluation_table_gives_percent_and_a_dash_for_a_missing_metric() -> None:
    rows = [{"dataset": "a/carpet", "n_test": 12.0, "image_auroc": 0.9876, "pixel_auroc": 0.5, "au_pro": 0.25},
            {"dataset": "b/stc", "n_test": 3.0, "image_auroc": 1.0}]
    lines = evaluation_markdown(rows).splitlines()
    assert lines[0].startswith("| dataset | test images |") and lines[1] == "|---|---|---|---|---|"
    assert lines[2:] == ["| a/carpet | 12 | 98.8 | 50.0 | 25.0 |", "| b/stc | 3 | 100.0 | - | - |"]


def test_tables_are_written_as_a_json_and_markdown_pair(tmp_path: Path) -> None:
    write_tables(tmp_path / "new" / "folder", "evaluation", {"results": [1, 2]}, "| a |\n")
    assert json.loads((tmp_path / "new" / "folder" / "evaluation.json").read_text()) == {"results": [1, 2]}
    assert (tmp_path / "new" / "folder" / "evaluation.md").read_text() == "| a |\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(PadimError, match="cannot create output folder"):
        write_tables(tmp_path / "file" / "sub", "x", {}, "")


def test_progress_line_names_the_category_metrics_and_fit_time() -> None:
    result = CategoryResult("carpet", {"image_auroc": 0.5, "au_pro": 0.123}, fit_seconds=2.04)
    assert progress_line(result) == "  carpet: image_auroc 50.0, au_pro 12.3 (fit 2.0 s)"
