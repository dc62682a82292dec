"""ONNX export: the whole PaDiM path as one graph, with preprocessing and thresholds as metadata.

The graph takes a normalised image batch "image" (float32, [batch, 3, H, W], batch dynamic, H x W the
model's preprocessed size) and returns "anomaly_map" ([batch, H, W]) and "score" ([batch]): features up
to the deepest tap, the Rd channels, Mahalanobis distance (centring on the float32 hi + lo halves of the
float64 mean, as in PyTorch), bicubic upsampling and the Gaussian filter (one matrix per axis) and the maximum. Nothing that may change without refitting lives in the
graph: the thresholds, the calibration source and the preprocessing are JSON in the model's
`metadata_props["padim"]` and in `<path>.json` beside it, so recalibrating never changes the graph.

onnx and onnxruntime are optional: `pip install 'torch-padim[export]'`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from padim.calibration import normalize
from padim.data import Preprocess, as_items, iter_batches
from padim.errors import ModelFileError, PadimEnvironmentError, PadimError
from padim.frame import BLANK_CONTRAST_FRACTION, frame_contrast
from padim.model import PaDiM
from padim.prediction import Prediction, Scored, add_verdicts, collect
from padim.utils.atomic import atomic_write
from padim.utils.constraints import THRESHOLD, check_value

EXPORT_HINT = "onnx export needs: pip install 'torch-padim[export]'"
METADATA_KEY = "padim"
FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
MIN_OPSET = 11  # bicubic Resize
DEFAULT_OPSET = 17
# Protocol buffers cannot hold more than 2 GiB: bigger models keep their tensors in `<path>.data`.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


def _optional(name: str) -> ModuleType:
    """Import an optional dependency, or fail with the install hint."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise PadimEnvironmentError(EXPORT_HINT) from None


def _max_opset() -> int:
    """The highest opset the TorchScript-based exporter of this torch supports."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON file written beside an exported model: `<path>.json`."""
    return Path(f"{path}.json")


def external_data_path(path: str | os.PathLike) -> Path:
    """Where the tensors of a model too large for one protobuf go: `<path>.data`."""
    return Path(f"{path}.data")


def export_metadata(model: PaDiM, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """What travels with the graph: the model's metadata, the graph's interface and the calibration."""
    meta = model.metadata()
    h, w = model.preprocessing.output_size
    meta["onnx"] = {
        "format_version": FORMAT_VERSION,
        "opset": int(opset),
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, h, w],
                  "meaning": "RGB in [0, 1], resized and cropped as 'preprocessing' says, "
                             "then (x - mean) / std per channel"},
        "outputs": {OUTPUT_NAMES[0]: {"dtype": "float32", "shape": ["batch", h, w]},
                    OUTPUT_NAMES[1]: {"dtype": "float32", "shape": ["batch"], "meaning": "maximum of the map"}},
        "external_data": None,  # file name of the tensors when they are kept beside the graph
    }
    calibration = getattr(model, "calibration_", None)
    if calibration is None:
        meta["calibration"] = None
    else:
        # The sorted image scores of the good calibration images give the normalised-score scale.
        meta["calibration"] = {**calibration.to_meta(),
                               "image_scores": [float(s) for s in calibration.image_scores]}
    return meta


def _cpu_net(model: PaDiM) -> torch.nn.Module:
    """The fitted network on the CPU in eval mode, without moving the model's own network."""
    net = model.net_
    on_cpu = all(t.device.type == "cpu" for t in (*net.parameters(), *net.buffers()))
    if not on_cpu:
        import copy

        net = copy.deepcopy(net).cpu()
    return net.eval()


def _trace(model: PaDiM, path: Path, opset: int) -> None:
    """TorchScript-based export of the network to a file (large tensors may land in files beside it).

    The backbone's stop-after-the-last-tap exception is plain Python, so tracing records exactly the
    operations up to the deepest tap. A batch of 2 keeps the batch dimension from being specialised.
    """
    h, w = model.preprocessing.output_size
    dummy = torch.zeros(2, 3, h, w)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape-derived constants, legacy-exporter notice
        try:
            torch.onnx.export(
                _cpu_net(model), (dummy,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                dynamic_axes={INPUT_NAME: batch, OUTPUT_NAMES[0]: batch, OUTPUT_NAMES[1]: batch},
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one line for the user
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PadimError(f"ONNX export at opset {opset} failed: {message}") from None


def _finish(proto: Any, meta: dict[str, Any], size: tuple[int, int]) -> None:
    """Declare the interface's shapes, name the producer and attach the metadata."""
    from onnx import TensorProto, helper

    from padim._version import __version__

    h, w = size
    del proto.graph.output[:]
    proto.graph.output.extend([
        helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.FLOAT, ["batch", h, w]),
        helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, ["batch"]),
    ])
    del proto.graph.value_info[:]  # intermediate shapes inferred by the tracer: optional, sometimes misnamed
    proto.graph.name = "padim"
    proto.producer_name = "torch-padim"
    proto.producer_version = __version__
    proto.doc_string = (f"PaDiM anomaly detector: normalised image [batch, 3, {h}, {w}] -> anomaly_map "
                        f"[batch, {h}, {w}], score [batch]. Preprocessing and thresholds: metadata_props['padim'].")
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})


def _tensor_bytes(proto: Any) -> int:
    """Bytes of the model's initializers and constant tensors."""
    from onnx import helper

    def size(t: Any) -> int:
        return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

    total = sum(size(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        total += sum(size(a.t) for a in node.attribute if a.HasField("t"))
    return total


def export_onnx(model: PaDiM, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                external_data: bool | None = None) -> None:
    """Write the fitted model as an ONNX graph at path, atomically, with its metadata (also in `<path>.json`).

    external_data=None stores the tensors inside the file unless they exceed protobuf's 2 GiB, in which
    case they go to `<path>.data` (True forces that, False refuses it).
    """
    onnx = _optional("onnx")
    model._require_fitted()
    top = _max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise PadimError(f"ONNX opset must be an integer from {MIN_OPSET} (bicubic Resize) to {top} "
                         f"(the highest torch's TorchScript exporter supports), got {opset!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise PadimError(f"{path}: cannot write, folder {folder} does not exist")
    meta = export_metadata(model, opset)
    try:
        work = tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise PadimError(f"{path}: cannot write ({exc.strerror})") from None
    with work as tmp:
        raw = Path(tmp) / "traced.onnx"
        _trace(model, raw, opset)
        proto = onnx.load(str(raw), load_external_data=True)
        large = _tensor_bytes(proto) > _PROTOBUF_LIMIT
        if large and external_data is False:
            raise PadimError(f"{path}: the model's tensors exceed 2 GiB: export with external_data=True")
        data = external_data_path(path)
        meta["onnx"]["external_data"] = data.name if external_data or large else None
        _finish(proto, meta, model.preprocessing.output_size)
        if external_data or large:
            staged = Path(tmp) / "staged"
            staged.mkdir()
            onnx.save_model(proto, str(staged / path.name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
            try:
                os.replace(staged / data.name, data)  # the graph that names it is renamed in after
            except OSError as exc:
                raise PadimError(f"{data}: cannot write ({exc.strerror})") from None
            atomic_write(path, lambda t: shutil.copyfile(staged / path.name, t))
        else:
            blob = proto.SerializeToString()
            atomic_write(path, lambda t: Path(t).write_bytes(blob))
    atomic_write(sidecar_path(path), lambda t: Path(t).write_text(json.dumps(meta, indent=2) + "\n"))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The "padim" metadata of an exported model (from the ONNX file, else from `<path>.json`)."""
    onnx = _optional("onnx")
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a protobuf decode error, whatever its type
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    return _parse_metadata(path, props.get(METADATA_KEY))


def _parse_metadata(path: Path, text: str | None) -> dict[str, Any]:
    """Decode the metadata JSON, falling back on the sidecar file."""
    if text is None:
        side = sidecar_path(path)
        if not side.is_file():
            raise ModelFileError(f"{path}: no '{METADATA_KEY}' metadata and no {side.name} beside it: "
                                 "not a torch-padim export")
        text = side.read_text()
    try:
        meta = json.loads(text)
        Preprocess.from_dict(meta["preprocessing"])
        cal = meta.get("calibration")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: '{METADATA_KEY}' metadata malformed ({type(exc).__name__}: {exc})") from None
    if cal is not None:  # a NaN threshold would pass every part
        if not isinstance(cal, dict):
            raise ModelFileError(f"{path}: '{METADATA_KEY}' calibration must be an object, got {cal!r}")
        for key in ("image_threshold", "pixel_threshold"):
            try:
                check_value(key, cal.get(key), [THRESHOLD], str(path))
            except PadimError as exc:
                raise ModelFileError(str(exc)) from None
        if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in cal.get("image_scores") or []):
            raise ModelFileError(f"{path}: calibration image scores contain NaN or inf")
    return meta


def verify_onnx(model: PaDiM, path: str | os.PathLike, batch_size: int = 2, seed: int = 0) -> dict[str, float]:
    """Run the exported graph and the model's network on a random normalised batch; return the differences."""
    predictor = OnnxPredictor(path)
    pre = model.preprocessing
    h, w = pre.output_size
    rgb = torch.rand(batch_size, 3, h, w, generator=torch.Generator().manual_seed(seed))
    x = (rgb - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(pre.std).view(3, 1, 1)
    with torch.no_grad():
        ref_maps, ref_scores = model.net_(x.to(model.device))
    maps, scores = predictor.run(x.numpy())
    ref_maps, ref_scores = ref_maps.cpu().numpy(), ref_scores.cpu().numpy()
    map_range = float(ref_maps.max() - ref_maps.min())
    map_diff = float(np.abs(maps - ref_maps).max())
    return {"batch_size": batch_size, "map_max_abs_diff": map_diff,
            "score_max_abs_diff": float(np.abs(scores - ref_scores).max()), "map_range": map_range,
            "map_relative_diff": map_diff / map_range if map_range > 0 else map_diff}


class OnnxPredictor:
    """Score images with an exported model in onnxruntime, without torch models or the backbone weights.

    Preprocessing comes from the model's metadata; thresholds too, unless given to predict().
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, batch_size: int = 32,
                 workers: int | None = None, threads: int | None = None) -> None:
        ort = _optional("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such ONNX file")
        if batch_size < 1:
            raise PadimError(f"batch size must be >= 1, got {batch_size}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelFileError(f"{self.path}: cannot load ONNX model ({type(exc).__name__}: {first[:200]})") from None
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if names != ([INPUT_NAME], list(OUTPUT_NAMES)):
            raise ModelFileError(f"{self.path}: graph has inputs {names[0]} and outputs {names[1]}, expected "
                             f"[{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}: not a torch-padim export")
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = _parse_metadata(self.path, props.get(METADATA_KEY))
        self.preprocess = Preprocess.from_dict(self.metadata["preprocessing"])
        self.calibration: dict[str, Any] | None = self.metadata.get("calibration")
        self.batch_size = batch_size
        self.workers = workers

    @property
    def image_threshold(self) -> float | None:
        """The calibrated image threshold stored with the model, if any."""
        return None if self.calibration is None else float(self.calibration["image_threshold"])

    @property
    def pixel_threshold(self) -> float | None:
        """The calibrated pixel threshold stored with the model, if any."""
        return None if self.calibration is None else float(self.calibration["pixel_threshold"])

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps (B, H, W) and scores (B,) of a normalised float32 batch (B, 3, H, W)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        expected = (3, *self.preprocess.output_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise PadimError(f"{self.path}: expected a (batch, {', '.join(map(str, expected))}) batch, "
                             f"got {tuple(pixels.shape)}")
        maps, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
        return maps, scores

    def normalize_scores(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray | None:
        """Scores in [0, 1] with the threshold at 0.5, as PaDiM.predict gives; None without a calibration."""
        cal = self.calibration
        if cal is None or not cal.get("image_scores"):
            return None
        t = float(cal["image_threshold"]) if threshold is None else float(threshold)
        return normalize(scores, t, np.sort(np.asarray(cal["image_scores"], dtype=np.float32)))

    def predict(self, images: Any, image_threshold: float | None = None, pixel_threshold: float | None = None,
                original_size: bool = False) -> Prediction:
        """Scores and maps like PaDiM.predict; verdicts and masks with stored or given thresholds."""
        pred = collect(self._scored(as_items(images)), self.preprocess if original_size else None)
        # The graph computes maps and scores only: of the frame check, the contrast floor travels (as
        # metadata) and applies here; the pooled-feature Gaussian is not exported.
        frame = self.metadata.get("frame")
        if isinstance(frame, dict) and isinstance(frame.get("contrast_min"), (int, float)):
            pred.blank = pred.contrast < BLANK_CONTRAST_FRACTION * float(frame["contrast_min"])
        return add_verdicts(pred, self if self.calibration is not None else None, image_threshold, pixel_threshold)

    def _scored(self, items: list) -> Iterator[Scored]:
        """(batch, maps, scores, frame contrasts) of every batch; NaN/inf scores are refused, naming the image."""
        for batch in iter_batches(items, self.preprocess, self.batch_size, workers=self.workers):
            contrast = frame_contrast(batch.pixels, self.preprocess.std).numpy()
            batch_maps, batch_scores = self.run(batch.pixels.numpy())
            bad = ~np.isfinite(batch_scores)
            if bad.any():
                raise PadimError(f"{batch.names[int(np.argmax(bad))]}: the model produced NaN/inf scores")
            yield batch, batch_maps, batch_scores, {"contrast": contrast}

    def __repr__(self) -> str:
        h, w = self.preprocess.output_size
        return (f"OnnxPredictor({str(self.path)!r}, backbone={self.metadata.get('backbone', {}).get('name')!r}, "
                f"input {h}x{w}, thresholds={'yes' if self.calibration else 'no'})")
