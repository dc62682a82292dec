"""ONNX export: onnxruntime on real images matches PyTorch, thresholds travel as metadata, not in the graph."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from padim import ModelFileError, NotFittedError, PaDiM, PadimEnvironmentError, PadimError  # noqa: E402
from padim.calibration import Calibration  # noqa: E402
from padim.cli import main  # noqa: E402
from padim.data import as_items, iter_batches  # noqa: E402
from padim.deployment.export import OnnxPredictor, export_onnx, read_metadata  # noqa: E402

from conftest import TINY  # noqa: E402

TOLERANCE = 1e-4  # of the anomaly map's range (max - min)
pytestmark = pytest.mark.filterwarnings("ignore::padim.calibration.PadimWarning")  # 3 calibration images


def train_images(texture_set: Path) -> list[Path]:
    return sorted((texture_set / "train" / "good").glob("*.png"))


def eval_images(texture_set: Path) -> list[Path]:
    return sorted((texture_set / "test").glob("*/*.png"))




@pytest.fixture(scope="module")
def tiny(texture_set: Path) -> PaDiM:
    return PaDiM(**TINY).fit(train_images(texture_set))


@pytest.fixture(scope="module")
def calibrated(texture_set: Path) -> PaDiM:
    model = PaDiM(**TINY, holdout=0.25).fit(train_images(texture_set))
    assert model.calibration_ is not None
    return model


@pytest.fixture(scope="module")
def tiny_onnx(tiny: PaDiM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny, path)
    return path


@pytest.fixture(scope="module")
def calibrated_onnx(calibrated: PaDiM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "calibrated.onnx"
    export_onnx(calibrated, path)
    return path


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_close(maps: np.ndarray, scores: np.ndarray, ref_maps: np.ndarray, ref_scores: np.ndarray) -> float:
    """Maps and scores agree within TOLERANCE of the reference map's range; returns the relative difference."""
    assert maps.shape == ref_maps.shape and scores.shape == ref_scores.shape
    scale = float(ref_maps.max() - ref_maps.min())
    assert scale > 0
    diff = max(float(np.abs(maps - ref_maps).max()), float(np.abs(scores - ref_scores).max())) / scale
    assert diff < TOLERANCE, diff
    return diff


def stripped(path: Path) -> bytes:
    """The serialized model without its metadata (graph, weights, opsets, producer)."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------- the graph
def test_onnxruntime_matches_pytorch_on_real_images_with_dynamic_batch(tiny, tiny_onnx, texture_set):
    images = eval_images(texture_set)
    sess = session(tiny_onnx)
    (inp,), outs = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(float)", ["batch", 3, 64, 64])
    assert [(o.name, o.shape) for o in outs] == [("anomaly_map", ["batch", 64, 64]), ("score", ["batch"])]
    for chunk in (images[:1], images[1:6]):  # batch of 1, then of 5: one graph
        ref = tiny.predict(chunk)
        batch = next(iter_batches(as_items(chunk), tiny.preprocessing, len(chunk), workers=1))
        maps, scores = sess.run(None, {"image": batch.pixels.numpy()})
        assert maps.shape == (len(chunk), 64, 64) and maps.dtype == np.float32
        assert_close(maps, scores, ref.maps, ref.scores)
        np.testing.assert_allclose(scores, maps.reshape(len(chunk), -1).max(axis=1))


def test_predictor_matches_pytorch_and_uncalibrated_has_no_verdicts(tiny, tiny_onnx, texture_set):
    images = eval_images(texture_set)
    ref = tiny.predict(images)
    pred = OnnxPredictor(tiny_onnx, batch_size=5).predict(images)  # batches of 5, 5, 2
    assert pred.names == ref.names
    assert_close(pred.maps, pred.scores, ref.maps, ref.scores)
    assert pred.decisions is None and pred.masks is None and pred.normalized_scores is None
    original = OnnxPredictor(tiny_onnx).predict(images[:2], original_size=True)
    ref_original = tiny.predict(images[:2], original_size=True)
    for a, b in zip(original.maps, ref_original.maps):
        assert a.shape == b.shape == (96, 96)
        assert float(np.abs(a - b).max()) < TOLERANCE * float(b.max() - b.min())


def test_pca_model_exports(texture_set, tmp_path):
    model = PaDiM(**{**TINY, "n_features": 16}, reduction="pca").fit(train_images(texture_set))
    export_onnx(model, tmp_path / "pca.onnx")
    images = eval_images(texture_set)[:3]
    ref, pred = model.predict(images), OnnxPredictor(tmp_path / "pca.onnx").predict(images)
    assert_close(pred.maps, pred.scores, ref.maps, ref.scores)


def test_external_data_file(tiny, texture_set, tmp_path):
    path = tmp_path / "ext.onnx"
    export_onnx(tiny, path, external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > path.stat().st_size
    assert read_metadata(path)["onnx"]["external_data"] == "ext.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data", "ext.onnx.json"]
    images = eval_images(texture_set)[:2]
    ref, pred = tiny.predict(images), OnnxPredictor(path).predict(images)
    assert_close(pred.maps, pred.scores, ref.maps, ref.scores)


# ------------------------------------------------------------------------------------- metadata
def test_metadata_in_model_and_sidecar(calibrated, calibrated_onnx):
    proto = onnx.load(str(calibrated_onnx))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["padim"])
    assert json.loads((calibrated_onnx.parent / "calibrated.onnx.json").read_text()) == meta
    assert read_metadata(calibrated_onnx) == meta
    assert meta["backbone"]["name"] == "resnet18"
    assert meta["backbone"]["weights"]["sha256"] == calibrated.backbone_.source.sha256
    assert meta["preprocessing"] == calibrated.preprocessing.to_dict()
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["onnx"]["input"]["shape"] == ["batch", 3, 64, 64]
    cal = meta["calibration"]
    assert cal["image_threshold"] == calibrated.calibration_.image_threshold
    assert cal["pixel_threshold"] == calibrated.calibration_.pixel_threshold
    assert cal["fpr"] == calibrated.fpr and cal["source"] == calibrated.calibration_.source
    assert proto.producer_name == "torch-padim"


def test_predictor_verdicts_equal_pytorch(calibrated, calibrated_onnx, texture_set):
    images = eval_images(texture_set)
    ref = calibrated.predict(images)
    predictor = OnnxPredictor(calibrated_onnx)
    assert predictor.image_threshold == ref.image_threshold and predictor.pixel_threshold == ref.pixel_threshold
    pred = predictor.predict(images)
    assert_close(pred.maps, pred.scores, ref.maps, ref.scores)
    np.testing.assert_array_equal(pred.decisions, ref.decisions)
    assert (pred.image_threshold, pred.pixel_threshold) == (ref.image_threshold, ref.pixel_threshold)
    # Masks: equal except where a pixel lies within float noise of the threshold.
    near = np.abs(ref.maps - ref.pixel_threshold) < TOLERANCE * float(ref.maps.max() - ref.maps.min())
    np.testing.assert_array_equal(pred.masks[~near], ref.masks[~near])
    np.testing.assert_allclose(pred.normalized_scores, ref.normalized_scores, atol=1e-5)


def test_thresholds_overridden_at_predict_time(calibrated, calibrated_onnx, tiny_onnx, texture_set):
    images = eval_images(texture_set)
    predictor = OnnxPredictor(calibrated_onnx)
    scores = predictor.predict(images).scores
    t_image = float(np.median(scores))
    maps = predictor.predict(images).maps
    t_pixel = float(np.quantile(maps, 0.9))
    pred = predictor.predict(images, image_threshold=t_image, pixel_threshold=t_pixel)
    ref = calibrated.predict(images, image_threshold=t_image, pixel_threshold=t_pixel)
    np.testing.assert_array_equal(pred.decisions, pred.scores > t_image)
    assert 0 < pred.decisions.sum() < len(images)
    np.testing.assert_array_equal(pred.decisions, ref.decisions)
    assert pred.image_threshold == t_image and pred.pixel_threshold == t_pixel
    np.testing.assert_array_equal(pred.masks, pred.maps > t_pixel)
    np.testing.assert_allclose(pred.normalized_scores, ref.normalized_scores, atol=1e-5)
    # An uncalibrated export takes thresholds at predict time only.
    plain = OnnxPredictor(tiny_onnx).predict(images, image_threshold=t_image)
    assert plain.decisions is not None and plain.masks is None and plain.normalized_scores is None


def test_no_threshold_in_the_graph(calibrated, calibrated_onnx, texture_set, tmp_path):
    original = calibrated.calibration_
    try:
        calibrated.calibration_ = Calibration(original.image_scores * 3 + 1, original.pixel_sample * 3 + 1, 0.05, "other")
        export_onnx(calibrated, tmp_path / "recalibrated.onnx")
        calibrated.calibration_ = None
        export_onnx(calibrated, tmp_path / "uncalibrated.onnx")
    finally:
        calibrated.calibration_ = original
    other = read_metadata(tmp_path / "recalibrated.onnx")["calibration"]
    assert other["image_threshold"] != original.image_threshold and other["source"] == "other"
    assert read_metadata(tmp_path / "uncalibrated.onnx")["calibration"] is None
    assert stripped(tmp_path / "recalibrated.onnx") == stripped(calibrated_onnx)
    assert stripped(tmp_path / "uncalibrated.onnx") == stripped(calibrated_onnx)


# ------------------------------------------------------------------------------------- CLI and errors
def test_cli_export(calibrated, tmp_path, capsys, texture_set):
    model_file, out = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    calibrated.save(model_file)
    assert main(["export", str(model_file), "-o", str(out), "--opset", "17"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "MB" in printed and "max |diff|" in printed
    relative = float(re.search(r"relative to the map's range ([0-9.e+-]+)", printed).group(1))
    assert relative < TOLERANCE
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["calibration"]["image_threshold"] == calibrated.calibration_.image_threshold
    images = eval_images(texture_set)[:4]
    ref, pred = calibrated.predict(images), OnnxPredictor(out).predict(images)
    np.testing.assert_array_equal(pred.decisions, ref.decisions)
    assert main(["export", str(model_file), "-o", str(tmp_path / "missing" / "m.onnx")]) == 2
    assert main(["export", str(model_file), "-o", str(out), "--opset", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("padim: error: ") for line in err)


def test_missing_onnx_packages(tiny, tiny_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(PadimEnvironmentError, match=re.escape("pip install 'torch-padim[export]'")):
        export_onnx(tiny, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PadimError, match=re.escape("pip install 'torch-padim[export]'")):
        OnnxPredictor(tiny_onnx)
    tiny.save(tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err == "padim: error: onnx export needs: pip install 'torch-padim[export]'\n"


def test_bad_inputs(tiny, tiny_onnx, tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        export_onnx(PaDiM(**TINY), tmp_path / "x.onnx")
    for opset in (9, 99):  # bicubic Resize needs 11; the TorchScript exporter stops at 20
        with pytest.raises(PadimError, match="opset"):
            export_onnx(tiny, tmp_path / "x.onnx", opset=opset)
    with pytest.raises(PadimError, match="does not exist"):
        export_onnx(tiny, tmp_path / "nope" / "x.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        OnnxPredictor(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="junk.onnx"):
        OnnxPredictor(tmp_path / "junk.onnx")
    foreign = onnx.load(str(tiny_onnx))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelFileError, match="not a torch-padim export"):
        OnnxPredictor(tmp_path / "foreign.onnx")
    with pytest.raises(PadimError, match="expected a"):
        OnnxPredictor(tiny_onnx).run(np.zeros((1, 3, 32, 32), np.float32))


# ------------------------------------------------------------------------------------- the default backbone
def test_default_lite0_backbone_exports(texture_set, tmp_path):
    # Real ImageNet weights, resize 256 -> crop 224, 56x56 positions; Rd 64 of the 176 channels keeps the
    # per-position Cholesky (and the file) small: the graph is the same as with all channels, only narrower.
    model = PaDiM(n_features=64, batch_size=4, workers=1).fit(train_images(texture_set)[:4])
    path = tmp_path / "lite0.onnx"
    export_onnx(model, path)
    images = eval_images(texture_set)[:2]
    ref, pred = model.predict(images), OnnxPredictor(path).predict(images)
    assert pred.maps.shape == (2, 224, 224)
    assert_close(pred.maps, pred.scores, ref.maps, ref.scores)
    assert read_metadata(path)["backbone"]["weights"]["kind"] == "package"


def test_exported_graph_is_exact_at_every_batch_size_in_both_runtimes(texture_set, tmp_path):
    # The traced graph once computed its chunk of positions from the batch it was traced with (2):
    # from a batch of 16 at 56x56 positions, the last positions scored 0. Real Lite0 weights, 224 px.
    import openvino as ov

    model = PaDiM(n_features=64, batch_size=8).fit(train_images(texture_set)[:6])
    path = tmp_path / "lite0.onnx"
    export_onnx(model, path)
    pixels = next(iter_batches(as_items(eval_images(texture_set)), model.preprocessing, 64, workers=0)).pixels
    rng = torch.Generator().manual_seed(0)
    pixels = torch.cat([pixels] * (64 // len(pixels) + 1))[:64] + 0.05 * torch.randn(64, 3, 224, 224, generator=rng)
    with torch.no_grad():
        ref_maps, ref_scores = model.net_(pixels.clone())
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    sess = session(path)
    for b in (1, 16, 33, 64):
        x = pixels[:b].numpy()
        want = ref_maps[:b].numpy(), ref_scores[:b].numpy()
        assert_close(*sess.run(None, {"image": x}), *want)
        result = compiled({0: x})
        assert_close(result[compiled.outputs[0]], result[compiled.outputs[1]], *want)
