"""Inference bundles: the torch-free runtime gives the full package's answers, and refuses what it cannot check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from padim import PaDiM
from padim.deployment.bundle import bundle_size, export_bundle
from padim.cli import main
from padim.data import as_items, resize
from padim.evaluation.synthetic import load_split

import padim_runtime
from padim_runtime.bundle import BundleError
from padim_runtime.cli import main as run_main
from padim_runtime.resize import resize as np_resize

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


@pytest.fixture(scope="module")
def lite0(texture_set: Path) -> PaDiM:
    """The default backbone with its real ImageNet weights, fitted on real brick photos, calibrated."""
    train, _, _ = load_split(texture_set)
    return PaDiM(image_size=128, crop_size=112, holdout=0.25, batch_size=8).fit(train)


@pytest.fixture(scope="module")
def bundle(lite0: PaDiM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(lite0, tmp_path_factory.mktemp("b") / "bundle")


@pytest.mark.parametrize("shape,size", [((192, 192), (256, 256)), ((300, 400), (256, 256)), ((256, 256), (224, 224)),
                                        ((1080, 1920), (192, 352)), ((7, 5), (64, 64)), ((96, 160), (224, 224))])
def test_numpy_resize_equals_torchs_bicubic(shape: tuple[int, int], size: tuple[int, int]) -> None:
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    want = resize(torch.from_numpy(x)[None], size)[0].numpy()
    assert np.abs(np_resize(x, size) - want).max() < 1e-4


@pytest.mark.parametrize("gather", [4_000_000, 5_000])  # the second applies each band in many chunks
def test_numpy_resize_spreads_nan_like_torch(gather: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import padim_runtime.resize
    monkeypatch.setattr(padim_runtime.resize, "GATHER_ELEMENTS", gather)
    for shape, size in [((256, 256), (400, 300)), ((500, 380), (224, 224))]:
        x = np.random.default_rng(1).random((1, *shape), dtype=np.float32)
        x[:, :17], x[:, :, -9:] = np.nan, np.nan  # a crop's unseen border, as to_original makes it
        want = resize(torch.from_numpy(x)[None], size)[0].numpy()
        got = np_resize(x, size)
        assert (np.isnan(got) == np.isnan(want)).all() and np.isnan(want).any()
        assert np.nanmax(np.abs(got - want)) < 1e-4


def test_runtime_scores_equal_the_full_package_on_real_photos(lite0: PaDiM, bundle: Path, texture_set: Path) -> None:
    _, test, _ = load_split(texture_set)
    gray = np.full((96, 96, 3), 128, np.uint8)  # a blank frame: the frame check must reject it here too
    inputs = [*map(str, test), gray]
    full = lite0.predict([*test, gray], original_size=True)
    got = padim_runtime.load(bundle).predict(inputs)
    scores = np.array([r.score for r in got])
    assert np.abs(scores - full.scores).max() <= 1e-4 * np.abs(full.scores).max()
    assert [r.defective for r in got] == full.decisions.tolist()
    assert [r.reason for r in got] == list(full.reasons) and got[-1].defective and "blank" in got[-1].reason
    assert np.allclose([r.frame_score for r in got], full.frame_scores, rtol=1e-4)
    assert np.allclose([r.normalized_score for r in got], full.normalized_scores, atol=1e-4)
    for want, r in zip(full.maps, got):
        assert r.anomaly_map.shape == want.shape
        assert (np.isnan(r.anomaly_map) == np.isnan(want)).all()  # the same pixels not inspected
        finite = np.isfinite(want)
        assert np.abs(r.anomaly_map[finite] - want[finite]).max() <= 1e-4 * (np.ptp(want[finite]) + 1e-12)


def test_the_factor_is_stored_compacted_and_float16_halves_it(lite0: PaDiM, bundle: Path, tmp_path: Path) -> None:
    p, d = lite0.mean_.shape
    dense = 4 * p * d * d  # what a graph with the full factor holds
    assert (bundle / "factor.bin").stat().st_size < 0.47 * dense  # packed (0.5) and compressed
    half = export_bundle(lite0, tmp_path / "half", half=True)
    assert (half / "factor.bin").stat().st_size < 0.6 * (bundle / "factor.bin").stat().st_size
    assert bundle_size(half) < bundle_size(bundle)


def test_a_tampered_or_foreign_bundle_is_refused_in_one_line(bundle: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "mean.npy").read_bytes())
    data[-1] ^= 1
    (bad / "mean.npy").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"mean\.npy: checksum mismatch"):
        padim_runtime.load(bad)
    manifest = json.loads((bundle / "bundle.json").read_text())
    (bad / "bundle.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="v99 is not one this runtime reads"):
        padim_runtime.load(bad)
    with pytest.raises(BundleError, match="not a bundle"):
        padim_runtime.load(tmp_path)


def test_export_and_padim_run_from_the_command_line(lite0: PaDiM, texture_set: Path, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    lite0.save(tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "bundle")]) == 0
    assert "padim-run predict" in capsys.readouterr().out
    good = texture_set / "test" / "good"
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "=cmd.png").write_bytes(next(good.iterdir()).read_bytes())
    monkeypatch.chdir(odd)
    assert run_main(["predict", str(tmp_path / "bundle"), str(good), "=cmd.png", "-o", str(tmp_path / "out"),
                     "--heatmaps"]) == 0
    rows = json.loads((tmp_path / "out" / "scores.json").read_text())["images"]
    assert len(rows) == len(list(good.iterdir())) + 1 and {"score", "normalized_score", "defective", "reason"} <= set(rows[0])
    assert "\"'=cmd.png\"" in (tmp_path / "out" / "scores.csv").read_text()  # cannot run as a formula
    assert len(list((tmp_path / "out" / "heatmaps").iterdir())) == len(rows)
    (odd / "broken.png").write_bytes(b"not an image")
    assert run_main(["predict", str(tmp_path / "bundle"), str(odd / "broken.png"), "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0]


def test_the_runtime_runs_with_torch_unimportable(bundle: Path, texture_set: Path) -> None:
    _, test, _ = load_split(texture_set)
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]); import padim_runtime; "
            "r = padim_runtime.load(sys.argv[2]).predict(sys.argv[3]); print(r[0].score); "
            "assert 'timm' not in sys.modules and 'scipy' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, str(RUNTIME), str(bundle), str(test[0])],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) > 0


def test_bundle_heat_maps_share_the_full_packages_colour_scale(lite0: PaDiM, bundle: Path) -> None:
    from padim.reporting.overlay import colour_scale
    from padim_runtime.overlay import calibrated_scale

    calibration = json.loads((bundle / "bundle.json").read_text())["calibration"]
    want = colour_scale([], basis="calibration", calibration=lite0.calibration_)
    assert None not in want and calibrated_scale(calibration) == pytest.approx(want, rel=1e-6)
    assert calibrated_scale(None) == (None, None)


def test_the_runtime_reads_each_tap_at_its_own_resolution_with_the_same_descriptors(lite0: PaDiM, bundle: Path,
                                                                                  texture_set: Path) -> None:
    from padim_runtime.predictor import descriptors

    blocks = json.loads((bundle / "bundle.json").read_text())["frame"]["blocks"]
    assert blocks == [list(b) for b in lite0.net_.descriptor_blocks] and blocks[-1][2:] == [4, 4]
    _, test, _ = load_split(texture_set)
    batch, emb = next(lite0._embeddings(as_items(test[:4]), "frame"))
    emb = emb.numpy().copy()
    whole = descriptors(emb, lite0.net_.grid, None)
    assert np.abs(descriptors(emb, lite0.net_.grid, blocks) - whole).max() <= 2e-6 * np.abs(whole).max()


@pytest.mark.parametrize("blocks, problem", [([[0, 24, 1, 1], [24, 64, 3, 3], [64, 176, 4, 4]], "do not fit"),
                                             ([[0, 24, 1, 1], [30, 176, 2, 2]], "do not fit"),
                                             ([[0, 24, 1, 1], [24, 64, 2, 2]], "cover 64 of d=176"),
                                             ("all", "do not fit")])
def test_bad_descriptor_blocks_are_refused(bundle: Path, tmp_path: Path, blocks, problem: str) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["frame"]["blocks"] = blocks
    (bad / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=problem):
        padim_runtime.load(bad)
