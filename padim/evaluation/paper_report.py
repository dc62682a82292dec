"""The reports of a paper reproduction: Markdown tables of our results beside the paper's numbers, and a JSON record."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from padim.evaluation.datasets import MVTEC_TEXTURES
from padim.evaluation.paper_tables import CategoryResult, Config, Options, paper_results, paper_row


def group_means(results: list[CategoryResult]) -> dict[str, dict[str, float]]:
    """Mean metrics over texture classes, object classes and all classes (the paper's summary rows)."""
    groups = {
        "texture": [r for r in results if r.category in MVTEC_TEXTURES],
        "object": [r for r in results if r.category not in MVTEC_TEXTURES],
        "all": results,
    }
    out = {}
    for name, members in groups.items():
        if members and (name == "all" or len(members) < len(results)):
            keys = set.intersection(*(set(r.metrics) for r in members))
            out[name] = {k: float(np.mean([r.metrics[k] for r in members])) for k in sorted(keys)}
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _paper_pair(row: dict[str, list], key: str) -> tuple[float | None, float | None]:
    values = row.get(key) or [None, None]
    return values[0], values[1]


def _diff(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None:
        return "-"
    return f"{100 * ours - theirs:+.1f}"


def markdown_table(config: Config, results: list[CategoryResult], table: str | None = None,
                   options: Options | None = None) -> str:
    """Per-category table with the paper's value beside ours and the difference, then the group means."""
    table_name, row = paper_row(config, table)
    source = f"paper {table_name.replace('_', ' ')}" if table_name else "paper: no value for this configuration"
    if options is not None and options.weights == "random":
        source += "; RANDOM backbone weights, not ImageNet: not comparable with the paper"
    if options is not None and options.non_aligned:
        source += "; non-aligned protocol (Section V-C)"
    head = ("| category | image AUROC | pixel AUROC | paper | diff | AU-PRO | paper | diff | fit s | predict s "
            "| peak fit MB | peak predict MB |")
    lines = [f"**{config.name}** ({source}; percentages; means over {results[0].seeds if results else 1} seed(s))",
             "", head, "|" + "---|" * 12]

    def line(name: str, m: dict[str, float], extra: str) -> str:
        pa, pp = _paper_pair(row, name)
        pix, pro = m.get("pixel_auroc"), m.get("au_pro")
        return (f"| {name} | {_pct(m.get('image_auroc'))} | {_pct(pix)} | {pa if pa is not None else '-'} | "
                f"{_diff(pix, pa)} | {_pct(pro)} | {pp if pp is not None else '-'} | {_diff(pro, pp)} | {extra}")

    for r in results:
        lines.append(line(r.category, r.metrics, f"{r.fit_seconds:.1f} | {r.predict_seconds:.1f} | "
                                                  f"{r.peak_fit_mb:.0f} | {r.peak_predict_mb:.0f} |"))
    for name, m in group_means(results).items():
        lines.append(line(f"{name}", m, " |  |  |  |").replace(f"| {name} |", f"| **{name}** |", 1))
    if results and results[0].seeds > 1:
        lines += ["", "Standard error of the mean over seeds (pixel AUROC, AU-PRO), per category: " + ", ".join(
            f"{r.category} {100 * r.sem.get('pixel_auroc', 0):.2g}/{100 * r.sem.get('au_pro', 0):.2g}" for r in results)]
    return "\n".join(lines) + "\n"


def results_json(config: Config, results: list[CategoryResult], options: Options,
                 table: str | None = None) -> dict[str, Any]:
    """Everything a report needs, JSON-ready."""
    table_name, row = paper_row(config, table)
    return {
        "config": asdict(config),
        "options": asdict(options),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "categories": [asdict(r) for r in results],
        "means": group_means(results),
        "paper": {"table": table_name, "values": row},
    }


def combined_table(runs: list[tuple[Config, list[CategoryResult]]], table: str | None = None,
                   options: Options | None = None) -> str:
    """Methods side by side: each one's pixel AUROC and AU-PRO beside the paper's value for it."""
    rows = [(config, paper_row(config, table)[1], {r.category: r.metrics for r in results}, group_means(results))
            for config, results in runs]
    names = list(dict.fromkeys(r.category for _, results in runs for r in results))
    groups = list(dict.fromkeys(g for *_, means in rows for g in means))
    head = "| category | " + " | ".join(f"{c.name} pixel AUROC | paper | {c.name} AU-PRO | paper" for c, *_ in rows) + " |"
    caption = "Methods side by side (percentages; paper: Table III for MVTec AD, Table IV for STC)"
    if options is not None and options.weights == "random":
        caption += "; RANDOM backbone weights, not ImageNet: not comparable with the paper"
    lines = [caption, "", head, "|" + "---|" * (1 + 4 * len(rows))]

    def cells(paper_values: dict[str, list], metrics: dict[str, float] | None, name: str) -> str:
        pa, pp = _paper_pair(paper_values, name)
        m = metrics or {}
        return " | ".join([_pct(m.get("pixel_auroc")), _num(pa), _pct(m.get("au_pro")), _num(pp)])

    for name in names:
        lines.append(f"| {name} | " + " | ".join(cells(pv, per.get(name), name) for _, pv, per, _ in rows) + " |")
    for group in groups:
        lines.append(f"| **{group}** | " + " | ".join(cells(pv, means.get(group), group) for _, pv, _, means in rows) + " |")
    return "\n".join(lines) + "\n"


def paper_table(runs: list[tuple[Config, list[CategoryResult]]], table: str = "table_III",
                options: Options | None = None) -> str:
    """The paper's table with every one of its columns: ours beside the paper where we ran it, else quoted.

    Methods we did not run (AE-SSIM, AE-L2, Student, Patch SVDD, ...) show the paper's numbers, marked
    "quoted": they are transcribed, not reproduced. Cells are (pixel AUROC, PRO) percentages.
    """
    spec = paper_results()[table]
    ours = {config.name: ({r.category: r.metrics for r in results}, group_means(results)) for config, results in runs}
    columns = list(spec["columns"]) + [c.name for c, _ in runs if c.name not in spec["columns"]]
    heads = [spec["column_names"].get(c, c) + ("" if c in ours else " (quoted)") for c in columns]
    caption = f"{spec['caption']}: ours / paper where run here, the paper's value (quoted) elsewhere"
    if options is not None and options.weights == "random":
        caption += "; RANDOM backbone weights, not ImageNet: not comparable with the paper"
    names = list(dict.fromkeys([r.category for _, results in runs for r in results]))
    groups = list(dict.fromkeys(g for per, means in ours.values() for g in means))

    def cell(column: str, name: str) -> str:
        pair = "(" + ", ".join(_num(v) for v in _paper_pair(spec["rows"].get(column, {}), name)) + ")"
        if column not in ours:
            return pair
        per, means = ours[column]
        m = per.get(name) or means.get(name) or {}
        return f"({_pct(m.get('pixel_auroc'))}, {_pct(m.get('au_pro'))}) / {pair}"

    lines = [caption, "", "| category | " + " | ".join(heads) + " |", "|" + "---|" * (1 + len(columns))]
    for name in names + groups:
        label = name if name in names else f"**{name}**"
        lines.append(f"| {label} | " + " | ".join(cell(c, name) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value}"
