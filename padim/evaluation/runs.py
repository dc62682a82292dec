"""`padim evaluate` and `padim benchmark` as library calls: metrics over datasets and paper benchmark runs,
each table written as a pair, NAME.json (the figures) beside NAME.md (the Markdown table)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padim import paper
from padim.errors import PadimError

if TYPE_CHECKING:
    from padim.evaluation.datasets import Split
    from padim.evaluation.paper_tables import CategoryResult, Config, Options
    from padim.model import PaDiM

METRIC_KEYS = ("image_auroc", "pixel_auroc", "au_pro")
Echo = Callable[[str], None]  # receives progress lines and tables, each ending in a newline


def write_tables(folder: str | os.PathLike, stem: str, data: Any, markdown: str) -> None:
    """Write folder/STEM.json and folder/STEM.md, each atomically (the folder is created)."""
    from padim.reporting.results import write_text

    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PadimError(f"{out}: cannot create output folder ({exc.strerror})") from None
    write_text(out / f"{stem}.json", json.dumps(data, indent=2))
    write_text(out / f"{stem}.md", markdown)


def evaluate_datasets(model: "PaDiM", datasets: Sequence[str | os.PathLike], *, stc: bool = False,
                      test_stride: int = 1) -> list[dict[str, Any]]:
    """Metrics of the model on each MVTec-layout category folder (or ShanghaiTech Campus root with stc)."""
    from padim.evaluation import datasets as layouts
    from padim.evaluation.paper_tables import evaluate

    rows = []
    for dataset in datasets:
        path = Path(dataset)
        split = layouts.stc(path, test_stride=test_stride) if stc else layouts.mvtec_category(path.parent, path.name)
        rows.append({"dataset": str(path), **evaluate(model, split)})
    return rows


def evaluation_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The evaluation table: test images and the three metrics in percent per dataset ('-' when missing)."""
    lines = ["| dataset | test images | image AUROC | pixel AUROC | AU-PRO |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {int(r['n_test'])} | " + " | ".join(
            f"{100 * r[k]:.1f}" if k in r else "-" for k in METRIC_KEYS) + " |")
    return "\n".join(lines) + "\n"


def write_evaluation(model: "PaDiM", datasets: Sequence[str | os.PathLike], folder: str | os.PathLike, *,
                     model_name: str = "", stc: bool = False, test_stride: int = 1,
                     echo: Echo | None = None) -> list[dict[str, Any]]:
    """Evaluate on each dataset and write folder/evaluation.json and .md (echo gets the table); returns the rows."""
    rows = evaluate_datasets(model, datasets, stc=stc, test_stride=test_stride)
    markdown = evaluation_markdown(rows)
    _say(echo, markdown)
    write_tables(folder, "evaluation", {"model": model_name, "results": rows}, markdown)
    return rows


def benchmark_inputs(dataset: str, root: str | os.PathLike, options: "Options", *,
                     categories: Sequence[str] | None = None, train_stride: int = 1,
                     test_stride: int = 1) -> tuple[list["Split"], "Options"]:
    """The splits of a benchmark ('mvtec' categories or the 'stc' root) and its options (STC: resize only)."""
    from padim.evaluation.datasets import mvtec, stc

    if dataset == "stc":
        options = dataclasses.replace(options, image_size=paper.STC_RESIZE, crop_size=None)
        return [stc(root, train_stride=train_stride, test_stride=test_stride)], options
    return mvtec(root, list(categories) if categories is not None else None), options


def progress_line(result: "CategoryResult") -> str:
    """One line per finished category: its metrics in percent and the fit time."""
    m = result.metrics
    return (f"  {result.category}: " + ", ".join(f"{k} {100 * m[k]:.1f}" for k in METRIC_KEYS if k in m)
            + f" (fit {result.fit_seconds:.1f} s)")


def _say(echo: Echo | None, text: str) -> None:
    """Hand text to echo, if any."""
    if echo is not None:
        echo(text)


def write_benchmarks(dataset: str, configs: Sequence["Config"], splits: Sequence["Split"], options: "Options", *,
                     folder: str | os.PathLike, table: str | None = None,
                     echo: Echo | None = None) -> list[tuple["Config", list["CategoryResult"]]]:
    """Run each configuration on the splits and write its tables, then the combined ones, into `folder`.

    One pair per configuration (DATASET-NAME), DATASET-combined with several, and for MVTec AD the
    paper's Table III (mvtec-table-iii). `table` is the paper table compared with (default: the
    configuration's first; table_IV for STC). `echo` gets progress lines and each table as it is done.
    """
    from padim.evaluation.paper_report import combined_table, markdown_table, paper_table, results_json
    from padim.evaluation.paper_tables import run_benchmark

    table = table or ("table_IV" if dataset == "stc" else None)
    runs = []
    for config in configs:
        _say(echo, f"benchmark {dataset} {config.name}: {len(splits)} categor{'y' if len(splits) == 1 else 'ies'}, "
                   f"{options.seeds} seed(s){', non-aligned' if options.non_aligned else ''}\n")
        results = run_benchmark(config, splits, options, on_result=lambda r: _say(echo, progress_line(r) + "\n"))
        markdown = markdown_table(config, results, table, options)
        _say(echo, markdown)
        write_tables(folder, f"{dataset}-{config.name}", results_json(config, results, options, table), markdown)
        runs.append((config, results))
    if len(runs) > 1:
        markdown = combined_table(runs, table, options)
        _say(echo, markdown)
        write_tables(folder, f"{dataset}-combined",
                     {"methods": [results_json(c, r, options, table) for c, r in runs]}, markdown)
    if dataset == "mvtec" and table in (None, "table_III"):
        markdown = paper_table(runs, "table_III", options)
        _say(echo, markdown)
        write_tables(folder, "mvtec-table-iii",
                     {"methods": [results_json(c, r, options, "table_III") for c, r in runs]}, markdown)
    return runs
