"""The results folder of a prediction run: streamed (flat memory), exact, complete tables, spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import io
import json
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from padim import PaDiM
from padim.errors import PadimError
from padim.reporting.overlay import heatmap_overlay, side_by_side
from padim.reporting.results import scores_csv, spreadsheet_safe, write_results


@pytest.fixture(scope="module")
def model(texture_set: Path) -> PaDiM:
    """TINY model with thresholds from a 25% hold-out (so masks are written too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few hold-out images for a 1% FPR: expected here
        return PaDiM(**TINY, holdout=0.25).fit(texture_set / "train" / "good")


def test_results_match_an_in_memory_prediction_exactly(model: PaDiM, texture_set: Path, tmp_path: Path) -> None:
    paths = sorted((texture_set / "test").glob("*/*.png"))[:10]
    rows = write_results(model, paths, tmp_path / "out", report=True)
    pred = model.predict(paths, original_size=True)
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    assert np.array_equal([r["score"] for r in rows], pred.scores.astype(float))
    assert [r["defective"] for r in rows] == pred.decisions.tolist()
    vmin, vmax = min(float(m.min()) for m in pred.maps), max(float(m.max()) for m in pred.maps)
    for row, path, amap, mask in zip(rows, paths, pred.maps, pred.masks):
        with Image.open(tmp_path / "out" / row["mask"]) as written:
            assert np.array_equal(np.asarray(written)[:, :, 0] > 0, mask)
        rgb = np.asarray(Image.open(path).convert("RGB"))
        expected = side_by_side(rgb, heatmap_overlay(rgb, amap, vmin=vmin, vmax=vmax, threshold=pred.pixel_threshold))
        with Image.open(tmp_path / "out" / row["overlay"]) as written:
            assert np.array_equal(np.asarray(written), expected)  # one colour scale over every image
    doc = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert doc["images"] == rows and doc["thresholds"]["image"] == pred.image_threshold
    assert "thresholds at a" in doc["thresholds"]["how"]
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000
    # nothing else is left in the folder (the spilled maps were an anonymous temporary file)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["masks", "overlays", "report.html",
                                                                    "scores.csv", "scores.json"]


def test_memory_stays_flat_in_the_number_of_images(model: PaDiM, tmp_path: Path, monkeypatch) -> None:
    """At most a couple of original-size maps (and their masks) are alive at any time, however many images."""
    import padim.reporting.results

    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        path = tmp_path / "in" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    made: list[weakref.ref] = []
    alive_at_most = [0]
    real = padim.reporting.results.original_map

    def tracked(*args):
        amap = real(*args)
        made.append(weakref.ref(amap))
        alive_at_most[0] = max(alive_at_most[0], sum(r() is not None for r in made))
        return amap

    monkeypatch.setattr(padim.reporting.results, "original_map", tracked)
    write_results(model, paths, tmp_path / "out")
    assert len(made) == 2 * len(paths)  # once for the mask and range, once for the overlay
    assert alive_at_most[0] <= 2


def test_a_failing_image_leaves_no_score_tables(model: PaDiM, texture_set: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = sorted((texture_set / "test" / "good").glob("*.png"))
    with pytest.raises(PadimError, match=str(bad)):
        write_results(model, [*good, bad], tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} <= {"masks", "overlays"}  # no tables, no temporary files


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\",\"y\").png", "+1.png", "-2.png", "@SUM(A1).png",
                                  "\tx.png", "\rx.png"])
def test_formula_like_names_are_escaped_in_the_csv(name: str) -> None:
    assert spreadsheet_safe(name) == "'" + name
    text = scores_csv([{"image": name, "score": -1.5, "defective": True}])
    (row,) = list(csv.DictReader(io.StringIO(text, newline="")))
    assert row["image"] == "'" + name
    assert float(row["score"]) == -1.5  # numbers stay numbers, even negative ones


def test_ordinary_names_and_awkward_characters_survive_the_csv() -> None:
    names = ["a.png", "with, comma.png", 'with "quotes".png', "new\nline.png", "naïve 'x'.png"]
    text = scores_csv([{"image": n, "score": 1.0} for n in names])
    assert [r["image"] for r in csv.DictReader(io.StringIO(text, newline=""))] == names
    assert text.splitlines()[1] == '"a.png",1.0'  # text quoted, numbers not
