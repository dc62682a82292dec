"""The OpenVINO engine: the exported graph compiled for the CPU in float32, and its lanes (padim.lanes)."""

from __future__ import annotations

import copy
import importlib
from collections import OrderedDict
from typing import Any

import torch

from padim.engine.base import Engine, _as_numpy

_MAX_COMPILED = 6  # OpenVINO: batch sizes compiled statically at once (others share a dynamic one)
# OpenVINO runs larger batches as sub-batches: on several threads of 8 (as fast as 16 or 32, a quarter of the
# activations' memory); on one thread (a lane, padim.lanes) of 1, one image's activations staying in the caches
# (two lanes, Lite0: 266 img/s against 200 at 8, beside a 2-thread job 138 against 96: benchmarks/README.md).
OPENVINO_SUB_BATCH = 8
LANE_SUB_BATCH = 1
# OpenVINO lanes (padim.lanes) compile models of their own: above this graph size (WR50's: 82 MB) they
# cost memory for no speed (WR50 predict peak +78 MB, speed 0.97x the whole engine's in one run).
LANE_MAX_GRAPH_BYTES = 64 << 20


class OpenVinoEngine(Engine):
    """The exported network compiled by OpenVINO for the CPU, in float32, one compiled model per batch size.

    Parameters
    ----------
    graph : bytes
        The ONNX graph (export_graph).
    threads : int
        Inference threads.

    Attributes
    ----------
    model : openvino.Model
        The graph as read, dynamic in the batch.
    compiled : OrderedDict
        Infer requests of the models compiled for one batch size each, least recently used first.
    dynamic : Any
        The infer request shared by other batch sizes once _MAX_COMPILED are compiled (None until then).
    """

    name = "openvino"

    def __init__(self, graph: bytes, threads: int) -> None:
        super().__init__(torch.device("cpu"), threads)
        ov = importlib.import_module("openvino")
        self._version = ov.get_version()
        self.core = ov.Core()
        self.model = self.core.read_model(graph, b"")
        self.graph_bytes = len(graph)
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
        self.compiled: OrderedDict[int, Any] = OrderedDict()
        self.dynamic: Any = None
        self._gathered: torch.Tensor | None = None
        self._rows: tuple[torch.Tensor, list[Any]] | None = None
        self._lanes: list[Engine] = []

    def _request(self, batch: int) -> Any:
        """The infer request for this batch size: static shapes run faster than a dynamic batch."""
        if batch in self.compiled:
            self.compiled.move_to_end(batch)
            return self.compiled[batch]
        if len(self.compiled) >= _MAX_COMPILED:
            if self.dynamic is None:
                self.dynamic = self._compile(self.model)
            return self.dynamic
        model = self.model.clone()
        model.reshape({model.inputs[0]: [batch, *model.inputs[0].get_partial_shape()[1:]]})
        self.compiled[batch] = self._compile(model)
        return self.compiled[batch]

    def _compile(self, model: Any) -> Any:
        """One infer request of a compiled model (each request holds its own output: WR50 220 MB at batch 32)."""
        return self.core.compile_model(model, "CPU", self.config).create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings in the engine's own memory (a request's output, or one buffer per batch size for batches
        run in sub-batches of sub_batch images): valid until the next call."""
        batch, step = int(x.shape[0]), self.sub_batch
        if batch <= step:
            return self._infer(x)
        if step == 1:
            return self._image_by_image(x)
        out = None
        for start in range(0, batch, step):
            part = self._infer(x[start : start + step])
            if out is None:
                out = self._output(batch, part)
            out[:, start : start + part.shape[1]].copy_(part)
        return out

    @property
    def sub_batch(self) -> int:
        """Images per inference of a larger batch: LANE_SUB_BATCH on one thread, else OPENVINO_SUB_BATCH."""
        return LANE_SUB_BATCH if self.threads == 1 else OPENVINO_SUB_BATCH

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """One inference in the request's own output memory (no copy)."""
        request = self._request(int(x.shape[0]))
        request.infer({0: _as_numpy(x)}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data)

    def _image_by_image(self, x: torch.Tensor) -> torch.Tensor:
        """Each image inferred straight into its row of a batch-first buffer, returned as a (P, B, d) view.

        One image's (P, 1, d) output is a contiguous row of a (B, P, d) buffer, so OpenVINO can write it in
        place: no gathering copy (two Lite0 lanes 303 against 283 img/s with the copy).
        """
        request = self._request(1)
        rows, tensors = self._row_buffer(len(x), request)
        for i in range(len(x)):
            request.set_output_tensor(0, tensors[i])
            request.infer({0: _as_numpy(x[i : i + 1])}, share_inputs=True)
        return rows[: len(x)].transpose(0, 1)

    def _row_buffer(self, batch: int, request: Any) -> tuple[torch.Tensor, list[Any]]:
        """The reused (B, P, d) buffer of _image_by_image (grown to the largest batch) and an OpenVINO tensor per row."""
        if self._rows is None or len(self._rows[1]) < batch:
            ov = importlib.import_module("openvino")
            positions, _, dim = request.get_output_tensor(0).shape
            rows = torch.empty(batch, positions, dim)
            self._rows = rows, [ov.Tensor(r.numpy()[:, None], shared_memory=True) for r in rows]
        return self._rows

    def _output(self, batch: int, part: torch.Tensor) -> torch.Tensor:
        """The reused (P, batch, d) buffer the sub-batches of a batch are gathered in (the last size only)."""
        shape = (part.shape[0], batch, *part.shape[2:])
        if self._gathered is None or tuple(self._gathered.shape) != shape:
            self._gathered = torch.empty(shape, dtype=part.dtype)
        return self._gathered

    def version(self) -> str:
        return self._version.split("-")[0]

    def trim(self) -> None:
        """Drop the compiled models (the probe's batch of 2 would otherwise stay compiled: WR50 ~0.2 GB each)."""
        self.compiled = OrderedDict()
        self.dynamic = None
        self._gathered = None
        self._rows = None
        self._lanes = []

    def lanes(self) -> list[Engine]:
        """Two engines of half the threads each, sharing this one's core and graph (built on first use)."""
        if self.threads >= 2 and self.graph_bytes <= LANE_MAX_GRAPH_BYTES and not self._lanes:
            self._lanes = [self._twin(self.threads // 2) for _ in range(2)]
        return self._lanes

    def _twin(self, threads: int) -> "OpenVinoEngine":
        """This engine on fewer threads, with compiled models of its own."""
        twin = copy.copy(self)
        twin.threads, twin.model = threads, self.model.clone()  # lanes compile side by side: no shared model
        twin.config = {**self.config, "INFERENCE_NUM_THREADS": threads}
        twin.trim()
        return twin
