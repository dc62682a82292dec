"""What a model file holds, in words: every line `padim info` prints, from the metadata alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from conftest import TINY
from padim import PaDiM
from padim.modelfile import read_model
from padim.reporting.model_info import coverage_text, model_file_info

LABELS = ["model file", "backbone", "weights", "features", "positions", "preprocessing", "inspected", "eps, sigma",
          "training images", "statistics", "frame check", "thresholds", "created", "engine here"]


@pytest.fixture(scope="module")
def model_file(texture_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few hold-out images for the FPR: expected here
        model = PaDiM(**TINY, holdout=0.25).fit(texture_set / "train" / "good")
    path = tmp_path_factory.mktemp("info") / "m.safetensors"
    model.save(path)
    return path


def test_one_line_per_label_in_order(model_file: Path) -> None:
    lines = model_file_info(model_file).splitlines()
    assert [line[:16].strip() for line in lines] == LABELS
    assert str(model_file) in lines[0] and "RANDOM WEIGHTS" in lines[2]
    assert "the whole image (no crop)" in lines[6] and "at FPR" in lines[11]


def test_as_json_is_the_metadata(model_file: Path) -> None:
    assert json.loads(model_file_info(model_file, as_json=True)) == read_model(model_file)[1]


def test_a_centre_crop_is_said_to_leave_a_band_not_inspected() -> None:
    pre = {"image_size": [256, 256], "crop_size": [224, 224], "mean": [0.5] * 3, "std": [0.25] * 3}
    assert coverage_text(pre).startswith("centre 87.5% x 87.5% of every image (76.6% of its area)")
