"""The results folder of a prediction run (what `padim predict` writes), written as the predictions come.

Memory stays flat in the number of images: each image's original-size map and mask live only while its
files are written. Overlays share one colour scale over every image, so they are drawn in a second pass
from the model-grid maps, which wait in an anonymous temporary file in the folder (gone even after a
SIGKILL). scores.csv and scores.json are written last, each atomically: a run that fails leaves none.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from padim import distributed
from padim.images import DEFAULT_MAX_PIXELS, Size, read_image
from padim.errors import InputError, PadimError
from padim.model import PaDiM, Prediction, add_verdicts
from padim.utils.atomic import atomic_write

# OWASP "CSV injection": a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that no spreadsheet runs as a formula (OWASP: prefix a single quote); other values as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def scores_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV text: every column any row has, text quoted and escaped against formulas."""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["image", "score"]
    writer = csv.DictWriter(buf, fieldnames=fields, quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically: readers see the old file or the whole new one."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files and folders as image paths: a folder becomes its images (padim.data.list_images)."""
    from padim.images import list_images

    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths += list_images(path)
        elif path.exists():
            paths.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return paths


def _save_mask(path: Path, mask: np.ndarray) -> None:
    """A boolean mask as a black-and-white PNG."""
    from padim.reporting.overlay import save_png

    save_png(path, np.repeat(mask[:, :, None].astype(np.uint8) * 255, 3, axis=2))


def _thresholds_how(model: PaDiM, given: bool, how: str | None) -> str:
    """How the thresholds in the tables were chosen."""
    if how is not None:
        return how
    if given:
        return "given by the caller"
    calibration = getattr(model, "calibration_", None)
    return calibration.describe() if calibration is not None else "none: model not calibrated"


class _Spill:
    """Model-grid maps of one run, appended to an anonymous temporary file and read back memory-mapped."""

    def __init__(self, folder: Path, shape: Size) -> None:
        self.shape, self.n = shape, 0
        try:
            self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder, prefix=".padim-maps-")  # noqa: SIM115
        except OSError as exc:
            raise PadimError(f"{folder}: cannot write ({exc.strerror})") from None

    def add(self, grid_map: torch.Tensor) -> None:
        """Append one (h, w) map."""
        self.file.write(np.ascontiguousarray(grid_map.cpu().numpy(), dtype=np.float32).tobytes())
        self.n += 1

    def maps(self) -> np.ndarray:
        """Every map so far, (n, h, w), memory-mapped."""
        self.file.flush()
        if self.n == 0:
            return np.zeros((0, *self.shape), np.float32)
        return np.memmap(self.file, dtype=np.float32, mode="r", shape=(self.n, *self.shape))

    def close(self) -> None:
        """Drop the file."""
        self.file.close()


class OriginalMaps(Sequence):
    """Model-grid maps shown at their images' original sizes, each resized when asked for (for the report).

    Parameters
    ----------
    grid_maps : array (n, h, w)
        The maps on the model's grid (a memory map is fine: one is read at a time).
    sizes : sequence of (height, width)
        Each image's original size.
    model : PaDiM
        The fitted model whose preprocessing maps the grid back to the original image.

    Attributes
    ----------
    grid_maps, sizes, preprocess
        As given (preprocess: the model's ``preprocessing``).
    """

    def __init__(self, grid_maps: np.ndarray, sizes: Sequence[Size], model: PaDiM) -> None:
        self.grid_maps, self.sizes, self.preprocess = grid_maps, list(sizes), model.preprocessing

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, k: int) -> np.ndarray:  # type: ignore[override]
        return original_map(self.preprocess, torch.from_numpy(np.array(self.grid_maps[k])), self.sizes[k])


class Images(Sequence):
    """Image files read again as RGB uint8 when asked for (their frames were reported the first time).

    Parameters
    ----------
    names : sequence of str
        The image files.
    model : PaDiM
        Its ``max_pixels`` bounds what is decoded.

    Attributes
    ----------
    names : list of str
    max_pixels : int
    """

    def __init__(self, names: Sequence[str], model: PaDiM) -> None:
        self.names, self.max_pixels = list(names), getattr(model, "max_pixels", DEFAULT_MAX_PIXELS)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, k: int) -> np.ndarray:  # type: ignore[override]
        rgb = read_image(self.names[k], self.max_pixels, warn=False)
        return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def original_map(preprocess: Any, grid_map: torch.Tensor, size: Size) -> np.ndarray:
    """One (h, w) model-grid map on its image's original (height, width) grid."""
    return preprocess.to_original(grid_map[None].cpu(), size)[0].numpy()


@dataclass
class _Run:
    """One write_results call: the model, the folder and what was asked for."""

    model: PaDiM
    folder: Path
    image_threshold: float | None  # given by the caller (None: the model's calibration, if any)
    pixel_threshold: float | None
    overlays: bool
    spill: _Spill | None  # model-grid maps, for the overlays' second pass and the report


def prediction_record(prediction: Prediction, i: int) -> dict[str, Any]:
    """Image i of a prediction in plain Python types: score, normalized_score, defective, frame_score and
    reason, None where the prediction has none (the one place a Prediction becomes table rows and answers)."""
    def item(values: Any, kind: type) -> Any:
        return None if values is None else kind(values[i])

    return {"score": float(prediction.scores[i]), "normalized_score": item(prediction.normalized_scores, float),
            "defective": item(prediction.decisions, bool), "frame_score": item(prediction.frame_scores, float),
            "reason": item(prediction.reasons, str)}


def _row(one: Prediction, name: str, i: int, overlays: bool) -> dict[str, Any]:
    """The table row of one scored image (input position i), naming its overlay and mask files."""
    row: dict[str, Any] = {"image": name}
    row.update((k, v) for k, v in prediction_record(one, 0).items() if v is not None)
    if overlays:
        row["overlay"] = f"overlays/{i:04d}_{Path(name).stem}.png"
    if one.masks is not None:
        row["mask"] = f"masks/{i:04d}_{Path(name).stem}.png"
    return row


def _score_pass(run: _Run, paths: list[Path], indices: list[int]) -> Iterator[tuple[dict[str, Any], Size, tuple]]:
    """Predict batch by batch; write each mask at once; yield (row, original size, colour range) per image."""
    from padim.reporting.overlay import colour_scale

    calibration = getattr(run.model, "calibration_", None)
    mine = [paths[i] for i in indices]
    if not mine:
        return
    k = 0
    for batch, maps, scores, checks in run.model.scored_batches(mine):
        scores = scores.cpu().numpy()
        for j, (name, size) in enumerate(zip(batch.names, batch.original_sizes)):
            i = indices[k]
            k += 1
            amap = original_map(run.model.preprocessing, maps[j], size)
            frame = {key: None if v is None else v[j : j + 1] for key, v in checks.items()}
            one = add_verdicts(Prediction([name], scores[j : j + 1], [amap], frame_scores=frame["frame_scores"],
                                          contrast=frame["contrast"], blank=frame["blank"]),
                               calibration, run.image_threshold, run.pixel_threshold)
            row = _row(one, name, i, run.overlays)
            if one.masks is not None:
                _save_mask(run.folder / row["mask"], one.masks[0])
            if run.spill is not None:
                run.spill.add(maps[j])
            yield row, size, colour_scale([amap], basis="range")  # NaN (not inspected) left out


def _draw_overlays(run: _Run, rows: list[dict[str, Any]], sizes: list[Size], scale: tuple[float, float],
                   pixel_threshold: float | None) -> None:
    """Second pass: re-read each image and save its heat-map overlay on the shared colour scale."""
    from padim.reporting.overlay import heatmap_overlay, save_png, side_by_side

    assert run.spill is not None
    grid_maps, (vmin, vmax) = run.spill.maps(), scale
    images = Images([row["image"] for row in rows], run.model)
    for k, row in enumerate(rows):
        rgb = images[k]
        amap = original_map(run.model.preprocessing, torch.from_numpy(np.array(grid_maps[k])), sizes[k])
        panel = side_by_side(rgb, heatmap_overlay(rgb, amap, vmin=vmin, vmax=vmax, threshold=pixel_threshold))
        save_png(run.folder / row["overlay"], panel)


def _resolved_thresholds(model: PaDiM, image_threshold: float | None,
                         pixel_threshold: float | None) -> tuple[float | None, float | None]:
    """The thresholds in force: given ones, else the model's calibration, else none."""
    pred = add_verdicts(Prediction([], np.zeros(0, np.float32), []), getattr(model, "calibration_", None),
                        image_threshold, pixel_threshold)
    return pred.image_threshold, pred.pixel_threshold


def _make_folder(out: Path, overlays: bool) -> None:
    """The output folder (with overlays/ when wanted), or a one-line error."""
    try:
        (out / "overlays" if overlays else out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PadimError(f"{out}: cannot create output folder ({exc.strerror})") from None


def write_results(
    model: PaDiM,
    images: Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    *,
    overlays: bool = True,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    report: bool = False,
    model_name: str | None = None,
    thresholds_how: str | None = None,
) -> list[dict[str, Any]] | None:
    """Score image files (folders: their images) into a folder: overlays/, masks/ (with a pixel threshold),
    scores.csv, scores.json; what `padim predict` writes.

    report=True also writes report.html. Under torchrun (padim.distributed) each process scores its share
    and rank 0 writes the tables; the rows (input order) come back on rank 0, None elsewhere.
    """
    paths = expand_inputs(images)
    if not paths:
        raise InputError("no images given")
    if report and torch.distributed.is_initialized():
        raise InputError("report.html needs every heat map in one process: write it without torchrun")
    out = Path(folder)
    _make_folder(out, overlays)
    indices = distributed.shard_indices(len(paths))
    it, pt = _resolved_thresholds(model, image_threshold, pixel_threshold)
    spill = _Spill(out, model.preprocessing.output_size) if overlays or report else None
    run = _Run(model, out, image_threshold, pixel_threshold, overlays, spill)
    try:
        rows, sizes, low, high = [], [], np.inf, -np.inf
        for row, size, (lo, hi) in _score_pass(run, paths, indices):
            rows.append(row)
            sizes.append(size)
            low, high = min(low, lo), max(high, hi)  # the range of all maps: the lowest low, the highest high
        if overlays:
            _draw_overlays(run, rows, sizes, distributed.global_range(low, high), pt)
        all_rows = distributed.gather_rows(list(zip(indices, rows)))
        if all_rows is None:  # not rank 0: rank 0 writes the tables
            return None
        rows = [row for _, row in sorted(all_rows, key=lambda pair: pair[0])]
        given = image_threshold is not None or pixel_threshold is not None
        _write_tables(out, rows, model_name=model_name, thresholds={
            "image": it, "pixel": pt, "how": _thresholds_how(model, given, thresholds_how)})
        if report:
            _write_report(run, rows, sizes)
    finally:
        if spill is not None:
            spill.close()
    return rows


def _write_tables(out: Path, rows: list[dict[str, Any]], *, model_name: str | None,
                  thresholds: dict[str, Any]) -> None:
    """scores.csv and scores.json, each written atomically, with the thresholds and how they were chosen."""
    write_text(out / "scores.csv", scores_csv(rows))
    write_text(out / "scores.json", json.dumps({"model": model_name or "", "thresholds": thresholds, "images": rows},
                                               indent=2))


def _write_report(run: _Run, rows: list[dict[str, Any]], sizes: list[Size]) -> None:
    """report.html from the rows and the spilled maps: images read one at a time, maps resized when drawn."""
    from padim.reporting.report import given_note, write_report

    assert run.spill is not None
    model, names = run.model, [row["image"] for row in rows]
    scores = np.array([row["score"] for row in rows], dtype=np.float32)
    pred = add_verdicts(Prediction(names, scores, []), getattr(model, "calibration_", None), run.image_threshold,
                        run.pixel_threshold)
    pred.maps, pred.masks = OriginalMaps(run.spill.maps(), sizes, model), None  # the report outlines maps > threshold
    write_report(run.folder / "report.html", names, Images(names, model), pred, model=model,
                 threshold_note=given_note(model, run.image_threshold, run.pixel_threshold))
