"""The CPU engine running the bundle's backbone graph: OpenVINO (float32), else ONNX Runtime."""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from padim_runtime.bundle import BundleError


def _threads() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Engine:
    """Normalised (B, 3, H, W) float32 images -> positions-first embeddings (P, B, d), a fresh array."""

    def __init__(self, graph: bytes, name: str = "auto") -> None:
        errors = []
        for candidate in (["openvino", "onnxruntime"] if name == "auto" else [name]):
            try:
                self._run = getattr(self, f"_{candidate}")(graph)
                self.name = candidate
                return
            except ImportError as exc:
                errors.append(f"{candidate}: {exc}")
        raise BundleError("no CPU engine: pip install openvino (or onnxruntime); " + "; ".join(errors))

    def _openvino(self, graph: bytes) -> Any:
        ov = importlib.import_module("openvino")
        core = ov.Core()
        model = core.read_model(graph, b"")
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": _threads(), "ENABLE_CPU_PINNING": False}
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            request.infer({0: x}, share_inputs=True)
            return np.array(request.get_output_tensor(0).data)  # a copy: the request reuses its buffer

        return run

    def _onnxruntime(self, graph: bytes) -> Any:
        ort = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"image": x})[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(np.ascontiguousarray(x, dtype=np.float32))
