"""Engines: run the tapped backbone and the patch embedding on a device, with the fastest exact runtime.

An engine maps a normalised image batch (B, 3, H, W) to positions-first patch embeddings (h*w, B, d)
(the Rd channels of every tap on the first tap's grid: padim.embedding.embed_positions). Engines are
interchangeable: each is checked against torch eager when it is built and a model file never records
which one fitted it.

- ``torch``: PyTorch eager, the reference.
- ``torch-fast``: PyTorch with batch norm folded into the convolutions, the dynamic "same" padding of
  the tf_ EfficientNets made static for the fixed input size (padim.torch_fast), and channels_last memory.
- ``onnxruntime``: the torch-fast network exported to ONNX, run by ONNX Runtime on the CPU.
- ``openvino``: the same ONNX graph compiled by OpenVINO for the CPU, in float32 (OpenVINO would
  otherwise run bfloat16 on CPUs with AMX/AVX512-BF16, which is not exact).
- ``auto`` (default): on a CUDA device, torch-fast; on the CPU, the first of openvino, onnxruntime,
  torch-fast that is installed and passes the exactness check (2-core Xeon, Lite0 taps, batch 32: OpenVINO
  6-8x eager, ONNX Runtime 2.4-3.2x, torch-fast 1.2-1.8x; ResNet18 1.9x and 2.1x: one rule serves). An
  engine that cannot load, or disagrees with eager, gives a one-line PadimWarning and the next one is used.
"""

from __future__ import annotations

import importlib
import io
import math
import warnings
from typing import Callable

import torch

from padim.engine.base import Engine, TapEmbedding, _as_numpy
from padim.engine.openvino import OpenVinoEngine
from padim.errors import InputError, PadimEnvironmentError, PadimWarning
from padim.torch_fast import optimised
from padim.utils.cpus import available_cpus, configure_torch_threads, torch_threads
from padim.utils.devices import parse_device

AUTO = "auto"
ENGINES = ("torch", "torch-fast", "onnxruntime", "openvino")
CPU_ORDER = ("openvino", "onnxruntime", "torch-fast", "torch")
# Engines must reproduce eager's embeddings to this relative error (of the largest magnitude).
EXACTNESS = 1e-4
ONNX_OPSET = 17


class TorchEngine(Engine):
    """PyTorch eager, or (fast=True) with folded batch norm, static padding and channels_last.

    Parameters
    ----------
    module : TapEmbedding
        The network to run.
    size : (int, int)
        Input (height, width), fixed for the torch-fast rewrites.
    device : torch.device
        Where it runs.
    threads : int
        torch's CPU threads (set here on the CPU).
    fast : bool
        Apply padim.torch_fast's rewrites and channels_last memory.

    Attributes
    ----------
    module : nn.Module
        The network run (the rewritten copy when fast).
    fast : bool
        As given.
    """

    def __init__(self, module: TapEmbedding, size: tuple[int, int], device: torch.device, threads: int, *,
                 fast: bool) -> None:
        super().__init__(device, threads)
        self.name = "torch-fast" if fast else "torch"
        self.fast = fast
        self.module = optimised(module, size).to(device, memory_format=torch.channels_last) if fast else module.to(device)
        if device.type == "cpu":
            configure_torch_threads(threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # not inference_mode: scoring centres the embeddings in place
            return self.module(x)


class OnnxRuntimeEngine(Engine):
    """The exported network under ONNX Runtime's CPU provider, without spinning threads.

    Parameters
    ----------
    graph : bytes
        The ONNX graph (export_graph).
    threads : int
        Intra-op threads.

    Attributes
    ----------
    session : onnxruntime.InferenceSession
        The loaded graph.
    """

    name = "onnxruntime"

    def __init__(self, graph: bytes, threads: int) -> None:
        super().__init__(torch.device("cpu"), threads)
        ort = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning worker threads burn the CPU another job (a refit beside the service) needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._version = ort.__version__

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {"image": _as_numpy(x)})
        return torch.from_numpy(out)

    def version(self) -> str:
        return self._version


# ------------------------------------------------------------------------------ ONNX and selection
def export_graph(module: TapEmbedding, size: tuple[int, int]) -> bytes:
    """The optimised network as an ONNX graph in memory, dynamic in the batch."""
    fast = optimised(module, size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(fast, (torch.zeros(2, 3, *size),), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["embedding"], do_constant_folding=True,
                          dynamic_axes={"image": {0: "batch"}, "embedding": {1: "batch"}})
    return buf.getvalue()


def installed(name: str) -> bool:
    """Whether an engine's runtime can be imported here."""
    if name in ("torch", "torch-fast"):
        return True
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken install is as good as none
        return False
    return True


def resolve(name: str, device: str | torch.device) -> list[str]:
    """The engines to try, in order, for a requested name ('auto' or one of ENGINES) on a device."""
    dev = parse_device(device)
    if name == AUTO:
        return ["torch-fast", "torch"] if dev.type != "cpu" else list(CPU_ORDER)
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}: use {AUTO!r} or one of {', '.join(ENGINES)}")
    if name in ("onnxruntime", "openvino") and dev.type != "cpu":
        raise InputError(f"engine {name!r} runs on the CPU only, not on {dev}: use engine='auto' or 'torch'")
    return [name]


def build_engine(module: TapEmbedding, size: tuple[int, int], *, name: str = AUTO,
                 device: str | torch.device = "cpu", threads: int | None = None) -> Engine:
    """The first engine of `resolve(name)` that loads and matches torch eager on a probe batch."""
    dev = torch.device(device)
    threads = threads or available_cpus()
    module = module.eval()
    candidates = resolve(name, dev)
    probe = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch_threads(1):  # a batch of 2: see padim.utils.cpus.torch_threads
        reference = module.to(dev)(probe.to(dev)).cpu()
    graph: bytes | None = None
    for i, candidate in enumerate(candidates):
        try:
            if candidate in ("onnxruntime", "openvino"):
                if not installed(candidate):
                    raise PadimEnvironmentError(f"{candidate} is not installed (pip install {candidate})")
                with torch_threads(1):
                    graph = graph or export_graph(module, size)
            engine = _make(candidate, module, size, dev, threads, graph)
            error = _relative_error(engine(probe).cpu(), reference)
            if not error <= EXACTNESS:
                raise PadimEnvironmentError(f"its embeddings differ from torch eager by {error:.1e} (relative)")
            if hasattr(engine, "trim"):
                engine.trim()
            return engine
        except Exception as exc:  # noqa: BLE001 - any failure of an optional runtime means: try the next
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if len(candidates) == 1:
                raise PadimEnvironmentError(f"engine {candidate!r} cannot run here: {reason[:200]}") from None
            nxt = candidates[i + 1] if i + 1 < len(candidates) else None
            if nxt is not None and name == AUTO and candidate in ("openvino", "onnxruntime") and not installed(candidate):
                continue  # not installed: auto quietly tries the next one
            warnings.warn(f"engine {candidate} unavailable ({reason[:160]}): using {nxt}", PadimWarning, stacklevel=2)
    raise PadimEnvironmentError("no engine could run the backbone")  # unreachable: torch is always last


def _make(name: str, module: TapEmbedding, size: tuple[int, int], device: torch.device, threads: int,
          graph: bytes | None) -> Engine:
    """Construct one engine."""
    makers: dict[str, Callable[[], Engine]] = {
        "torch": lambda: TorchEngine(module, size, device, threads, fast=False),
        "torch-fast": lambda: TorchEngine(module, size, device, threads, fast=True),
        "onnxruntime": lambda: OnnxRuntimeEngine(graph, threads),  # type: ignore[arg-type]
        "openvino": lambda: OpenVinoEngine(graph, threads),  # type: ignore[arg-type]
    }
    return makers[name]()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference."""
    if got.shape != want.shape:
        return math.inf
    scale = float(want.abs().max()) or 1.0
    return float((got.float() - want.float()).abs().max()) / scale


def default_engine(device: str | torch.device = "cpu") -> str:
    """The engine 'auto' picks on this machine for a device, judged by what is installed (no build)."""
    return next(n for n in resolve(AUTO, device) if installed(n))
