"""Paper benchmarks and evaluation, end to end on miniature MVTec-layout and STC-layout sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from padim import PaDiM
from padim.evaluation.paper_tables import CONFIGS, Options, _models, paper_row, run_category
from padim.cli import main
from padim.evaluation.datasets import mvtec, mvtec_category
from padim.evaluation.synthetic import make_inspection_set

from test_datasets import build_stc

FAST = ["--weights", "random", "--batch-size", "16", "-q"]


@pytest.fixture(scope="module")
def mini_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories in the official layout: a texture (carpet) and an object (bottle)."""
    root = tmp_path_factory.mktemp("mvtec")
    stage = tmp_path_factory.mktemp("stage")
    for texture, category in (("brick", "carpet"), ("gravel", "bottle")):
        shutil.copytree(make_inspection_set(stage, texture, n_train=6, n_test_good=3, n_test_defect=4, size=64, seed=2), root / category)
    return root


def test_paper_values_are_looked_up_by_table_and_row() -> None:
    table, row = paper_row(CONFIGS["r18-rd100"])
    assert table == "table_III" and row["carpet"] == [98.9, 96.0] and row["all"] == [96.7, 90.1]
    table, row = paper_row(CONFIGS["r18-rd100"], "table_II")
    assert row["all"] == [96.7, 90.5]
    assert paper_row(CONFIGS["layer-sum"])[1]["object"] == [96.3, 88.1]
    assert paper_row(CONFIGS["wr50-rd550"])[1]["all"] == [97.5, 92.1]


def test_benchmark_command_prints_the_paper_column(mini_mvtec: Path, tmp_path: Path, capsys) -> None:
    assert main(["benchmark", "mvtec", "--root", str(mini_mvtec), "--config", "r18-rd100", "-o", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    carpet = next(line for line in out.splitlines() if line.startswith("| carpet |"))
    cells = [c.strip() for c in carpet.strip("|").split("|")]
    assert cells[3] == "98.9" and cells[6] == "96.0"  # the paper's Table III carpet values
    assert float(cells[4]) == pytest.approx(float(cells[2]) - 98.9, abs=0.051)
    for group in ("**texture**", "**object**", "**all**"):
        assert f"| {group} |" in out
    assert "RANDOM backbone weights" in out
    saved = json.loads((tmp_path / "mvtec-r18-rd100.json").read_text())
    assert [c["category"] for c in saved["categories"]] == ["carpet", "bottle"]
    assert {"image_auroc", "pixel_auroc", "au_pro"} <= set(saved["categories"][0]["metrics"])
    assert saved["categories"][0]["peak_fit_mb"] > 0 and saved["categories"][0]["fit_seconds"] > 0
    assert (tmp_path / "mvtec-r18-rd100.md").read_text().count("| carpet |") == 1


def test_layer_sum_adds_the_maps_of_three_single_layer_models(mini_mvtec: Path) -> None:
    models = _models(CONFIGS["layer-sum"], Options(weights="random"), seed=0)
    assert [m.layers for m in models] == [("layer1",), ("layer2",), ("layer3",)]
    split = mvtec_category(mini_mvtec, "carpet")
    options = Options(weights="random", image_size=64, crop_size=None, batch_size=16)
    summed = run_category(CONFIGS["layer-sum"], split, options).metrics
    maps = 0
    for layers in (("layer1",), ("layer2",), ("layer3",)):
        model = PaDiM(backbone="resnet18", layers=layers, n_features="all", weights="random", image_size=64, crop_size=None)
        maps = maps + model.fit(split.train).predict(split.test_images).maps
    from padim.evaluation.metrics import au_pro

    masks = np.stack([s.load_mask((64, 64)) for s in split.test])
    assert summed["au_pro"] == pytest.approx(au_pro(masks, maps), abs=1e-9)


def test_seeds_give_a_standard_error_and_non_aligned_is_seeded(mini_mvtec: Path) -> None:
    split = mvtec_category(mini_mvtec, "bottle")
    options = Options(weights="random", batch_size=16, seeds=2, non_aligned=True)
    first = run_category(CONFIGS["r18-rd100"], split, options)
    again = run_category(CONFIGS["r18-rd100"], split, options)
    assert first.seeds == 2 and set(first.sem) >= {"pixel_auroc", "au_pro"}
    assert first.metrics == again.metrics
    aligned = run_category(CONFIGS["r18-rd100"], split, Options(weights="random", batch_size=16, seeds=2))
    assert aligned.metrics["pixel_auroc"] != first.metrics["pixel_auroc"]


def test_pca_config_runs(mini_mvtec: Path, tmp_path: Path, capsys) -> None:
    assert main(["benchmark", "mvtec", "--root", str(mini_mvtec), "--categories", "carpet", "--config", "r18-pca100",
                 "-o", str(tmp_path), *FAST]) == 0
    assert "paper table II" in capsys.readouterr().out


def test_stc_benchmark_uses_resize_only(tmp_path: Path, capsys) -> None:
    build_stc(tmp_path / "stc")
    assert main(["benchmark", "stc", "--root", str(tmp_path / "stc"), "-o", str(tmp_path / "out"), *FAST]) == 0
    saved = json.loads((tmp_path / "out" / "stc-r18-rd100.json").read_text())
    assert saved["options"]["crop_size"] is None and saved["options"]["image_size"] == 256
    assert "pixel_auroc" in saved["categories"][0]["metrics"]
    out = capsys.readouterr().out
    assert "paper table IV" in out and "91.2" in out and "98.9" not in out  # Table IV, not MVTec values
    assert saved["paper"]["table"] == "table_IV"


def test_evaluate_command_matches_the_library(mini_mvtec: Path, tmp_path: Path, capsys) -> None:
    model_path = tmp_path / "m.safetensors"
    assert main(["fit", str(mini_mvtec / "carpet" / "train" / "good"), "-o", str(model_path), "--backbone", "resnet18",
                 "--image-size", "64", "--crop-size", "none", "--n-features", "32", *FAST]) == 0
    assert main(["evaluate", str(model_path), str(mini_mvtec / "carpet"), "-o", str(tmp_path / "ev"), *FAST]) == 0
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["results"][0]
    from padim.evaluation.paper_tables import evaluate

    expected = evaluate(PaDiM.load(model_path, batch_size=16), mvtec_category(mini_mvtec, "carpet"))
    assert saved["au_pro"] == pytest.approx(expected["au_pro"], abs=1e-12)
    assert "| " + str(mini_mvtec / "carpet") in (tmp_path / "ev" / "evaluation.md").read_text()


def test_unknown_config_and_wrong_root_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["benchmark", "mvtec", "--root", str(tmp_path), "--config", "nope", *FAST]) == 2
    assert main(["benchmark", "mvtec", "--root", str(tmp_path / "missing"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown config" in err[0] and "missing" in err[1]


def test_mvtec_loader_orders_official_categories(mini_mvtec: Path) -> None:
    assert [s.name for s in mvtec(mini_mvtec)] == ["carpet", "bottle"]


def test_baselines_run_beside_padim_with_a_combined_table(mini_mvtec: Path, tmp_path: Path, capsys) -> None:
    # SPADE on random WR50 weights and a 1-epoch VAE: the point is the plumbing, not the numbers.
    assert main(["benchmark", "mvtec", "--root", str(mini_mvtec), "--method", "padim,spade,vae", "--vae-epochs", "1",
                 "--vae-images", "8", "--checkpoints", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out"), *FAST]) == 0
    out = capsys.readouterr().out
    combined = out[out.index("Methods side by side"):]
    carpet = next(line for line in combined.splitlines() if line.startswith("| carpet |"))
    cells = [c.strip() for c in carpet.strip("|").split("|")]
    # category, then per method: ours, paper (pixel AUROC), ours, paper (AU-PRO): Table III carpet values
    assert cells[2] == "98.9" and cells[4] == "96.0"  # PaDiM-R18-Rd100
    assert cells[6] == "97.5" and cells[8] == "94.7"  # SPADE
    assert cells[10] == "59.7" and cells[12] == "61.9"  # VAE
    assert all(0.0 <= float(cells[i]) <= 100.0 for i in (1, 3, 5, 7, 9, 11))
    saved = json.loads((tmp_path / "out" / "mvtec-combined.json").read_text())
    assert [m["config"]["method"] for m in saved["methods"]] == ["padim", "spade", "vae"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["vae-bottle-seed0.safetensors",
                                                                     "vae-carpet-seed0.safetensors"]
    spade = json.loads((tmp_path / "out" / "mvtec-spade.json").read_text())
    assert spade["paper"]["table"] == "table_III" and spade["config"]["backbone"] == "wide_resnet50_2"
    # Table III with all of the paper's columns: the methods not run here are quoted, marked as such
    table3 = out[out.index("Anomaly localization on MVTec AD"):]
    head = next(line for line in table3.splitlines() if line.startswith("| category |"))
    assert [c.strip() for c in head.strip("|").split("|")][1:] == [
        "AE-SSIM (quoted)", "AE-L2 (quoted)", "VAE", "Student (quoted)", "Patch SVDD (quoted)", "SPADE",
        "PaDiM-R18-Rd100", "PaDiM-WR50-Rd550 (quoted)"]
    carpet3 = [c.strip() for c in next(line for line in table3.splitlines()
                                       if line.startswith("| carpet |")).strip("|").split("|")]
    assert carpet3[1] == "(87.0, 64.7)" and carpet3[4] == "(-, 69.5)" and carpet3[5] == "(92.6, -)"
    assert carpet3[8] == "(99.1, 96.2)"
    assert carpet3[7].endswith("/ (98.9, 96.0)") and carpet3[7] != "(98.9, 96.0) / (98.9, 96.0)"
    assert any(line.startswith("| **all** |") for line in table3.splitlines())
    assert (tmp_path / "out" / "mvtec-table-iii.md").read_text() == table3[: len((tmp_path / "out" / "mvtec-table-iii.md").read_text())]


def test_spade_image_score_is_its_knn_distance_not_the_map_maximum(mini_mvtec: Path) -> None:
    split = mvtec_category(mini_mvtec, "carpet")
    options = Options(weights="random", image_size=64, crop_size=None, batch_size=16)
    result = run_category(CONFIGS["spade"], split, options)
    [model] = _models(CONFIGS["spade"], options, seed=0)
    pred = model.fit(split.train).predict(split.test_images)
    assert not np.allclose(pred.scores, pred.maps.reshape(len(pred.maps), -1).max(axis=1))
    from padim.evaluation.metrics import image_auroc

    labels = [s.label for s in split.test]
    assert result.metrics["image_auroc"] == pytest.approx(image_auroc(labels, pred.scores), abs=1e-12)


def test_vae_refuses_the_non_aligned_protocol(mini_mvtec: Path) -> None:
    from padim.errors import PadimError

    with pytest.raises(PadimError, match="non-aligned"):
        run_category(CONFIGS["vae"], mvtec_category(mini_mvtec, "carpet"), Options(weights="random", non_aligned=True))
